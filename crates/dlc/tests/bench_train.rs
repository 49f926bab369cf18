//! `dlc bench train` end to end: real training processes per thread count, in
//! interleaved rounds, reported in the fields PyTorch throughput is reported in.

mod common;
use common::*;

#[test]
fn bench_train_measures_every_thread_count_in_interleaved_rounds() {
    let dir = tempfile::tempdir().unwrap();
    // 600 samples, batch 60: 10 steps per epoch, so the 9 steps span epochs.
    let job = job(dir.path(), "j.toml", &quick_mlp(600, 1, 60));
    let j = job.to_str().unwrap();
    let out = ok(&[
        "bench",
        "train",
        j,
        "--threads",
        "1,2",
        "--steps",
        "12",
        "--skip-steps",
        "3",
        "--rounds",
        "2",
        "--json",
    ]);
    let rows = json_lines(&out);
    let order: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["round"].as_u64().unwrap(),
                r["threads_per_proc"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(order, [(0, 1), (0, 2), (1, 1), (1, 2)]);
    for r in &rows {
        assert_eq!(r["framework"], "dlc");
        assert_eq!(r["model"], "mlp");
        assert_eq!(r["batch"], 60);
        assert_eq!(r["optimizer"], "adam");
        // Every step after the skipped ones, across the epoch boundary.
        assert_eq!(r["measured_steps"], 12, "{r}");
        let sps = r["samples_per_sec"].as_f64().unwrap();
        assert!(sps > 0.0 && sps.is_finite(), "{r}");
    }
    // The table names the PyTorch reference to compare with.
    let table = ok(&[
        "bench",
        "train",
        j,
        "--threads",
        "1",
        "--steps",
        "3",
        "--rounds",
        "1",
    ]);
    assert!(
        table.contains("samples/s") && table.contains("compare with PyTorch"),
        "{table}"
    );
    let err = fails(&["bench", "train", j, "--threads", "0"]);
    assert!(err.contains("at least 1"), "{err}");
}
