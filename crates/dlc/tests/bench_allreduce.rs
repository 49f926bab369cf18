//! `dlc bench allreduce` end to end: worker processes, checked sums, ceilings.

mod common;
use common::*;

#[test]
fn bench_allreduce_runs_processes_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("comm-profile.json");
    let out = ok(&[
        "bench",
        "allreduce",
        "--ranks",
        "3",
        "--sizes",
        "4KiB,1MiB",
        "--iters",
        "2",
        "--json",
        "--save",
        saved.to_str().unwrap(),
    ]);
    let rows = json_lines(&out);
    // The saved profile is the ring model through the measured medians: one host,
    // 3 ranks, and its time for each size is the measured one.
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(
        (p["ranks"].as_u64(), p["hosts"].as_u64()),
        (Some(3), Some(1)),
        "{p}"
    );
    let (bw, lat) = (
        p["bandwidth_gbps"].as_f64().unwrap(),
        p["latency_s"].as_f64().unwrap(),
    );
    assert!(bw > 0.0 && lat >= 0.0, "{p}");
    for row in &rows {
        let bytes = row["bytes"].as_f64().unwrap();
        let model = 4.0 / 3.0 * bytes / (bw * 1e9) + 4.0 * lat;
        let t = row["median_s"].as_f64().unwrap();
        // Two sizes fix both parameters, unless the latency came out negative and
        // was clamped to 0 (then only the large size is on the line).
        assert!(
            (model - t).abs() / t < 1e-6 || (lat == 0.0 && bytes < 1e5 && model < t),
            "model {model} s vs measured {t} s for {bytes} B: {p}"
        );
    }
    let err = fails(&["bench", "allreduce", "--link", "1gbit"]);
    assert!(err.contains("--save"), "{err}");
    let err = fails(&["bench", "allreduce", "--link", "fast", "--save", "x.json"]);
    assert!(err.contains("e.g. 10gbit"), "{err}");
    assert_eq!(rows.len(), 2);
    for (row, bytes) in rows.iter().zip([4096, 1 << 20]) {
        assert_eq!(row["ranks"], 3);
        assert_eq!(row["bytes"], bytes);
        for k in [
            "median_s",
            "algbw_gbps",
            "busbw_gbps",
            "memcpy_gbps",
            "tcp_gbps",
        ] {
            let v = row[k].as_f64().unwrap_or(-1.0);
            assert!(v > 0.0 && v.is_finite(), "{k} = {v}");
        }
        // The figures agree in their units: algbw is the bytes over the median time
        // in GB/s (not GiB/s, not per millisecond).
        let algbw = row["algbw_gbps"].as_f64().unwrap();
        let from_time = bytes as f64 / row["median_s"].as_f64().unwrap() / 1e9;
        assert!(
            (algbw - from_time).abs() <= 1e-6 * from_time,
            "algbw {algbw} GB/s, but {bytes} B in {} s is {from_time} GB/s",
            row["median_s"]
        );
    }
    let table = ok(&[
        "bench",
        "allreduce",
        "--ranks",
        "2",
        "--sizes",
        "64KiB",
        "--iters",
        "2",
    ]);
    assert!(
        table.contains("busbw") && table.contains("64KiB"),
        "{table}"
    );
    // Several TCP streams per pair: the sums still check out, and the rows say so.
    let striped = json_lines(&ok(&[
        "bench",
        "allreduce",
        "--ranks",
        "2",
        "--transport",
        "tcp",
        "--streams",
        "3",
        "--sizes",
        "1MiB",
        "--iters",
        "2",
        "--json",
    ]));
    assert_eq!(striped[0]["transport"], "tcp*3", "{:?}", striped[0]);
    let err = fails(&["bench", "allreduce", "--streams", "0"]);
    assert!(err.contains("--streams must be 1 to 16"), "{err}");
    let err = fails(&["bench", "allreduce", "--sizes", "3B"]);
    assert!(err.contains("multiples of 4"), "{err}");
    let err = fails(&["bench", "allreduce", "--sizes", "4XB"]);
    assert!(err.contains("unknown unit"), "{err}");
}
