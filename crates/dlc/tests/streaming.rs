//! Parquet and CSV tables streamed while training (`[data] stream = true`): bounded memory on a
//! file several times larger than the limit, every row once per epoch whatever the
//! number of workers, and `dlc eval` re-creating the streamed run's test split.

mod common;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch};
use common::*;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// A cheap deterministic stream of numbers in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// `n` rows of `features` random features (by column) and a class (the largest of the
/// first three: learnable).
fn generate(rng: &mut Lcg, n: usize, features: usize) -> (Vec<Vec<f32>>, Vec<i64>) {
    let cols: Vec<Vec<f32>> = (0..features)
        .map(|_| (0..n).map(|_| rng.next()).collect())
        .collect();
    let y = (0..n)
        .map(|i| {
            let x = [cols[0][i], cols[1][i], cols[2][i]];
            (0..3).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap() as i64
        })
        .collect();
    (cols, y)
}

/// [`write_table`]'s rows as a CSV file with a header.
fn write_csv(path: &Path, rows: usize, features: usize, seed: u64) {
    let (cols, y) = generate(&mut Lcg(seed), rows, features);
    let mut text: String = (0..features).map(|j| format!("f{j},")).collect();
    text += "y\n";
    for (i, y) in y.iter().enumerate() {
        for c in &cols {
            text += &format!("{},", c[i]);
        }
        text += &format!("{y}\n");
    }
    std::fs::write(path, text).unwrap();
}

/// Writes `rows` rows of `features` random features `f0…` and a class `y` (the
/// largest of f0, f1, f2: learnable), in row groups of `group` rows, uncompressed.
fn write_table(path: &Path, rows: usize, features: usize, group: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .build();
    let mut writer: Option<ArrowWriter<File>> = None;
    for start in (0..rows).step_by(group) {
        let (cols, y) = generate(&mut rng, group.min(rows - start), features);
        let mut columns: Vec<(String, ArrayRef)> = cols
            .into_iter()
            .enumerate()
            .map(|(j, c)| (format!("f{j}"), Arc::new(Float32Array::from(c)) as ArrayRef))
            .collect();
        columns.push(("y".into(), Arc::new(Int64Array::from(y))));
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let w = writer.get_or_insert_with(|| {
            ArrowWriter::try_new(
                File::create(path).unwrap(),
                batch.schema(),
                Some(props.clone()),
            )
            .unwrap()
        });
        w.write(&batch).unwrap();
    }
    writer.unwrap().close().unwrap();
}

#[test]
fn a_table_four_times_the_memory_limit_trains_in_bounded_memory() {
    // The limit this test sets for a worker's peak resident memory, and a training
    // file 4× larger (uncompressed f32: its bytes in memory would be the same).
    const LIMIT_MIB: f64 = 160.0;
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (
        dir.path().join("big.parquet"),
        dir.path().join("test.parquet"),
    );
    let (features, group) = (256, 8192);
    let rows = (4.0 * LIMIT_MIB * 1024.0 * 1024.0 / (features as f64 * 4.0)) as usize + group;
    write_table(&train, rows, features, group, 1);
    write_table(&test, 2000, features, 1000, 2);
    let size_mib = std::fs::metadata(&train).unwrap().len() as f64 / 1048576.0;
    assert!(size_mib > 4.0 * LIMIT_MIB, "{size_mib} MiB");
    let job = job(
        dir.path(),
        "big.toml",
        "[model]\nlayers = [{ type = \"dense\", units = 3 }]\n[data]\npath = \"big.parquet\"\n\
         test_path = \"test.parquet\"\nlabel = \"y\"\nstream = true\nshuffle_buffer = 20000\n\
         [train]\nepochs = 1\nbatch_size = 512\noptimizer = \"adam\"\nlearning_rate = 0.01\n\
         log_every = 100\n",
    );
    let run = dir.path().join("run");
    let out = ok(&[
        "train",
        job.to_str().unwrap(),
        "--json",
        "-q",
        "--threads",
        "1",
        "--out",
        run.to_str().unwrap(),
    ]);
    let s = summary(&out);
    let peak = s["peak_rss_mib"].as_f64().unwrap();
    eprintln!("streamed {size_mib:.0} MiB of Parquet ({rows} rows) with a peak RSS of {peak:.0} MiB (limit {LIMIT_MIB} MiB)");
    assert!(peak < LIMIT_MIB, "peak RSS {peak} MiB ≥ {LIMIT_MIB} MiB");
    // One whole epoch: every row trained on.
    assert_eq!(
        s["global_step"].as_u64().unwrap() as usize,
        rows.div_ceil(512)
    );
    // A linear model finds the largest of three features well.
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.8, "test accuracy {acc}");
}

#[test]
fn streamed_workers_learn_and_eval_recreates_the_test_split() {
    let dir = tempfile::tempdir().unwrap();
    write_table(&dir.path().join("t.parquet"), 6000, 8, 500, 3);
    write_csv(&dir.path().join("t.csv"), 6000, 8, 3);
    for (file, workers) in [("t.parquet", "1"), ("t.parquet", "3"), ("t.csv", "2")] {
        let job = job(
            dir.path(),
            "t.toml",
            &format!(
                "[model]\npreset = \"tabular-mlp\"\n[data]\npath = \"{file}\"\nlabel = \"y\"\n\
                 stream = true\nshuffle_buffer = 1000\ntest_fraction = 0.2\n[train]\n\
                 epochs = 3\nbatch_size = 64\noptimizer = \"adam\"\nlearning_rate = 0.01\n\
                 log_every = 20\n"
            ),
        );
        let run = dir.path().join(format!("{file}-w{workers}"));
        let out = ok(&[
            "train",
            job.to_str().unwrap(),
            "--workers",
            workers,
            "--json",
            "-q",
            "--out",
            run.to_str().unwrap(),
        ]);
        let s = summary(&out);
        let acc = s["test_accuracy"].as_f64().unwrap();
        assert!(acc > 0.85, "{workers} worker(s): test accuracy {acc}");
        // Every step of every epoch ran (3 epochs of ⌈~4800/64⌉ steps).
        let steps = s["global_step"].as_u64().unwrap();
        assert!(
            steps.is_multiple_of(3) && (3 * 70..=3 * 80).contains(&steps),
            "{steps} steps"
        );
        let ev = ok(&[
            "eval",
            job.to_str().unwrap(),
            "--model",
            run.join("model.safetensors").to_str().unwrap(),
            "--json",
        ]);
        let e: serde_json::Value = serde_json::from_str(ev.trim()).unwrap();
        assert!(
            (e["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9,
            "{e} vs {s}"
        );
        assert!(
            (1000..1400).contains(&e["samples"].as_u64().unwrap()),
            "{e}"
        );
    }
}

#[test]
fn streaming_refuses_what_it_cannot_do_and_names_a_damaged_file() {
    let dir = tempfile::tempdir().unwrap();
    let idx = job(
        dir.path(),
        "idx.toml",
        "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\nstream = true\n",
    );
    let e = fails(&["train", idx.to_str().unwrap()]);
    assert!(e.contains("data.stream") && e.contains("IDX"), "{e}");
    std::fs::write(dir.path().join("x.csv.gz"), b"\x1f\x8b\x08\x00 not really").unwrap();
    let gz = job(
        dir.path(),
        "gz.toml",
        "[model]\npreset = \"tabular-mlp\"\n[data]\npath = \"x.csv.gz\"\nlabel = \"y\"\nstream = true\n",
    );
    let e = fails(&["train", gz.to_str().unwrap()]);
    assert!(e.contains("x.csv.gz") && e.contains("gunzip"), "{e}");
    let p = dir.path().join("t.parquet");
    write_table(&p, 3000, 4, 1000, 4);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let broken = job(
        dir.path(),
        "t.toml",
        "[model]\npreset = \"tabular-mlp\"\n[data]\npath = \"t.parquet\"\nlabel = \"y\"\nstream = true\n",
    );
    let e = fails(&["train", broken.to_str().unwrap()]);
    assert!(e.contains("t.parquet") && e.contains("Parquet"), "{e}");
    let buffer = job(
        dir.path(),
        "b.toml",
        "[model]\npreset = \"tabular-mlp\"\n[data]\npath = \"t.parquet\"\nlabel = \"y\"\nshuffle_buffer = 5\n",
    );
    let e = fails(&["train", buffer.to_str().unwrap()]);
    assert!(
        e.contains("data.shuffle_buffer") && e.contains("stream"),
        "{e}"
    );
}
