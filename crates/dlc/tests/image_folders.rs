//! Image folders (`root/<class>/*.png`) end to end: `dlc data export` writes
//! Fashion-MNIST as PNGs and CSV, and jobs train on what it wrote.

mod common;
use common::*;

#[test]
fn exported_png_folder_csv_and_parquet_train_like_the_idx_data() {
    let dir = tempfile::tempdir().unwrap();
    let idx_job = job(dir.path(), "idx.toml", &quick_mlp(3000, 1, 64));
    let png = dir.path().join("png");
    let err = String::from_utf8_lossy(
        &dlc()
            .args([
                "data",
                "export",
                idx_job.to_str().unwrap(),
                "--to",
                "png",
                "--out",
            ])
            .arg(&png)
            .output()
            .unwrap()
            .stderr,
    )
    .into_owned();
    assert!(err.contains("train: 3000 images"), "{err}");
    // Ten class folders, 3000 training images in all.
    let classes: Vec<_> = std::fs::read_dir(png.join("train")).unwrap().collect();
    assert_eq!(classes.len(), 10);
    let count: usize = std::fs::read_dir(png.join("train"))
        .unwrap()
        .map(|c| std::fs::read_dir(c.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(count, 3000);

    // Train on the folder (its own test folder) and on a split of it.
    let folder_job = job(
        dir.path(),
        "png.toml",
        &format!(
            "[model]\npreset = \"mlp\"\n[data]\npath = \"{}\"\ntest_path = \"{}\"\n\
             test_limit = 1000\n[train]\nepochs = 2\nbatch_size = 64\nlearning_rate = 0.002\n",
            png.join("train").display(),
            png.join("test").display()
        ),
    );
    let out = ok(&[
        "train",
        folder_job.to_str().unwrap(),
        "--json",
        "-q",
        "--out",
    ]
    .iter()
    .copied()
    .chain([dir.path().join("run").to_str().unwrap()])
    .collect::<Vec<_>>());
    let s: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.7, "MLP on the PNG folder: test accuracy {acc}");

    // RGB, resized, split off the folder; a LeNet still fits the new shape.
    let rgb_job = job(
        dir.path(),
        "rgb.toml",
        &format!(
            "[model]\npreset = \"lenet\"\n[data]\npath = \"{}\"\nimage_size = [32, 32]\n\
             channels = 3\ntest_fraction = 0.1\nlimit = 256\n[train]\nepochs = 1\nbatch_size = 64\n",
            png.join("train").display()
        ),
    );
    let out = ok(
        &["train", rgb_job.to_str().unwrap(), "--json", "-q", "--out"]
            .iter()
            .copied()
            .chain([dir.path().join("rgb").to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert!(out.contains("test_accuracy"), "{out}");

    // CSV export: a header and one row per image, readable as a table.
    let csv = dir.path().join("csv");
    ok(&[
        "data",
        "export",
        idx_job.to_str().unwrap(),
        "--to",
        "csv",
        "--out",
        csv.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(csv.join("train.csv")).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("label,p0,p1,"));
    assert_eq!(lines.count(), 3000);
    let csv_job = job(
        dir.path(),
        "csv.toml",
        &format!(
            "[model]\npreset = \"mlp\"\n[data]\npath = \"{}\"\ntest_path = \"{}\"\n\
             label = \"label\"\ntest_limit = 1000\n[train]\nepochs = 2\nbatch_size = 64\n\
             learning_rate = 0.002\n",
            csv.join("train.csv").display(),
            csv.join("test.csv").display()
        ),
    );
    let out = ok(
        &["train", csv_job.to_str().unwrap(), "--json", "-q", "--out"]
            .iter()
            .copied()
            .chain([dir.path().join("csvrun").to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    let s: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.7, "MLP on the CSV export: test accuracy {acc}");

    // Parquet export: the same rows in the same (IDX) order as the CSV export, so
    // training on it ends with exactly the CSV run's weights.
    let pq = dir.path().join("pq");
    ok(&[
        "data",
        "export",
        idx_job.to_str().unwrap(),
        "--to",
        "parquet",
        "--out",
        pq.to_str().unwrap(),
    ]);
    let pq_job = job(
        dir.path(),
        "pq.toml",
        &std::fs::read_to_string(&csv_job)
            .unwrap()
            .replace(
                csv.join("train.csv").to_str().unwrap(),
                pq.join("train.parquet").to_str().unwrap(),
            )
            .replace(
                csv.join("test.csv").to_str().unwrap(),
                pq.join("test.parquet").to_str().unwrap(),
            ),
    );
    ok(&[
        "train",
        pq_job.to_str().unwrap(),
        "-q",
        "--out",
        dir.path().join("pqrun").to_str().unwrap(),
    ]);
    let d = max_abs_diff(
        &weights(&dir.path().join("csvrun/model.safetensors")),
        &weights(&dir.path().join("pqrun/model.safetensors")),
    );
    assert_eq!(d, 0.0, "Parquet vs CSV of the same rows: max |Δw| = {d}");
}

#[test]
fn broken_image_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imgs");
    std::fs::create_dir_all(root.join("cat")).unwrap();
    std::fs::write(root.join("cat/x.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let j = job(
        dir.path(),
        "j.toml",
        &format!(
            "[model]\npreset = \"mlp\"\n[data]\npath = \"{}\"\n",
            root.display()
        ),
    );
    let e = fails(&["train", j.to_str().unwrap()]);
    assert!(e.contains("x.png") && e.contains("cannot decode"), "{e}");
    let j = job(
        dir.path(),
        "k.toml",
        &format!(
            "[model]\npreset = \"mlp\"\n[data]\npath = \"{}\"\n",
            dir.path().join("nowhere").display()
        ),
    );
    let e = fails(&["train", j.to_str().unwrap()]);
    assert!(e.contains("is not a folder"), "{e}");
    let j = job(
        dir.path(),
        "c.toml",
        &format!(
            "[model]\npreset = \"mlp\"\n[data]\npath = \"{}\"\nchannels = 2\n",
            root.display()
        ),
    );
    let e = fails(&["train", j.to_str().unwrap()]);
    assert!(e.contains("data.channels"), "{e}");
}

#[test]
fn augmentation_is_the_same_on_any_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let base = quick_mlp(600, 1, 60);
    let aug = job(
        dir.path(),
        "aug.toml",
        &base.replace(
            "limit = 600\n",
            "limit = 600\nrandom_crop = 3\nrandom_flip = true\n",
        ),
    );
    let plain = job(dir.path(), "plain.toml", &base);
    let train = |j: &std::path::Path, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec!["train", j.to_str().unwrap(), "-q", "--out"];
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        ok(&args);
        weights(&out.join("model.safetensors"))
    };
    let one = train(&aug, "one", &[]);
    let two = train(&aug, "two", &["--workers", "2"]);
    let none = train(&plain, "none", &[]);
    let d = max_abs_diff(&one, &two);
    assert!(d < 1e-4, "augmented, 1 vs 2 workers: max |Δw| = {d}");
    // The augmentation is applied: training without it ends elsewhere.
    let d = max_abs_diff(&one, &none);
    assert!(d > 1e-3, "augmented vs plain: max |Δw| = {d}");
    // Tables have no pixels to crop.
    let table = job(
        dir.path(),
        "t.toml",
        "[model]\npreset = \"mlp\"\n[data]\npath = \"x.csv\"\nlabel = 0\nrandom_flip = true\n",
    );
    let e = fails(&["train", table.to_str().unwrap()]);
    assert!(e.contains("data.random_flip"), "{e}");
}

#[test]
fn bench_data_times_the_loader_without_training() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(
        dir.path(),
        "b.toml",
        &quick_mlp(600, 1, 60).replace("limit = 600\n", "limit = 600\nrandom_flip = true\n"),
    );
    let out = ok(&[
        "bench",
        "data",
        j.to_str().unwrap(),
        "--epochs",
        "2",
        "--workers",
        "3",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["samples"], 600 + 2000, "{r}");
    // 10 steps per epoch; rank 0 of 3 gets 20 of every 60 samples.
    assert_eq!(r["batches"], 20, "{r}");
    assert_eq!(r["loader_samples"], 2 * 10 * 20, "{r}");
    let set = r["train_set"].as_str().unwrap_or_default();
    assert!(set.contains("random flip"), "{r}");
    for k in ["load_samples_per_sec", "loader_samples_per_sec"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
    }
    let text = ok(&["bench", "data", j.to_str().unwrap(), "--epochs", "1"]);
    assert!(
        text.contains("loader:") && text.contains("samples/s"),
        "{text}"
    );
}

#[test]
fn a_parquet_table_of_png_bytes_trains_to_the_idx_weights() {
    let dir = tempfile::tempdir().unwrap();
    let idx_job = job(
        dir.path(),
        "idx.toml",
        &quick_mlp(1200, 1, 64).replace("test_limit = 2000", "test_limit = 300"),
    );
    let pq = dir.path().join("pq");
    let err = String::from_utf8_lossy(
        &dlc()
            .args([
                "data",
                "export",
                idx_job.to_str().unwrap(),
                "--to",
                "parquet-png",
                "--out",
            ])
            .arg(&pq)
            .output()
            .unwrap()
            .stderr,
    )
    .into_owned();
    assert!(err.contains("train: 1200 PNG images"), "{err}");
    // The table keeps IDX's order and PNG is lossless: the same batches, the same weights.
    let pq_job = job(
        dir.path(),
        "pq.toml",
        &format!(
            "[model]\npreset = \"mlp\"\n[data]\npath = \"{}\"\ntest_path = \"{}\"\n\
             image_column = \"image\"\nlabel = \"label\"\n[train]\nepochs = 1\nbatch_size = 64\n\
             optimizer = \"adam\"\nlearning_rate = 0.002\nlog_every = 5\nseed = 3\n",
            pq.join("train.parquet").display(),
            pq.join("test.parquet").display()
        ),
    );
    let mut runs = Vec::new();
    for (name, j) in [("idx", &idx_job), ("pq", &pq_job)] {
        let run = dir.path().join(name);
        let out = ok(&[
            "train",
            j.to_str().unwrap(),
            "--json",
            "-q",
            "--out",
            run.to_str().unwrap(),
        ]);
        let s: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        runs.push((
            s["test_accuracy"].as_f64().unwrap(),
            weights(&run.join("model.safetensors")),
        ));
    }
    let d = max_abs_diff(&runs[0].1, &runs[1].1);
    assert!(d < 1e-6, "IDX vs Parquet PNG: max |Δw| = {d}");
    assert_eq!(runs[0].0, runs[1].0);
    // Augmentation and resizing apply to a Parquet image column; numeric-table keys do not.
    let bad = job(
        dir.path(),
        "bad.toml",
        &format!(
            "[model]\npreset = \"mlp\"\n[data]\npath = \"{}\"\nimage_column = \"image\"\n\
             label = \"label\"\nstandardize = true\n",
            pq.join("train.parquet").display()
        ),
    );
    let e = fails(&["train", bad.to_str().unwrap()]);
    assert!(
        e.contains("data.standardize") && e.contains("image_column"),
        "{e}"
    );
}

#[test]
fn a_streamed_folder_trains_to_the_in_memory_weights_and_names_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let idx_job = job(dir.path(), "idx.toml", &quick_mlp(600, 1, 60));
    let png = dir.path().join("png");
    ok(&[
        "data",
        "export",
        idx_job.to_str().unwrap(),
        "--to",
        "png",
        "--out",
        png.to_str().unwrap(),
    ]);
    let folder_job = |name: &str, stream: bool| {
        job(
            dir.path(),
            name,
            &format!(
                "[model]\npreset = \"lenet\"\n[data]\npath = \"{}\"\ntest_path = \"{}\"\n\
                 test_limit = 300\nrandom_crop = 2\nrandom_flip = true\nstream = {stream}\n\
                 [train]\nepochs = 2\nbatch_size = 60\nlearning_rate = 0.002\nseed = 5\n",
                png.join("train").display(),
                png.join("test").display()
            ),
        )
    };
    let (memory, streamed) = (
        folder_job("mem.toml", false),
        folder_job("stream.toml", true),
    );
    let run = |j: &std::path::Path, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let s = train_to(j, &out, extra);
        (s, weights(&out.join("model.safetensors")))
    };
    let (mem_s, mem_w) = run(&memory, "mem", &[]);
    let (one_s, one_w) = run(&streamed, "one", &[]);
    // One thread per worker: the training thread is then the CPU pool's only
    // thread, and the loader decodes in a pool of its own (else a deadlock).
    let (_, two_w) = run(
        &streamed,
        "two",
        &["--workers", "2", "--threads-per-worker", "1"],
    );
    // The same samples in the same order, decoded later: the very same weights.
    assert_eq!(max_abs_diff(&mem_w, &one_w), 0.0);
    assert_eq!(mem_s["test_accuracy"], one_s["test_accuracy"], "{one_s}");
    let d = max_abs_diff(&one_w, &two_w);
    assert!(d < 1e-4, "streamed folder, 1 vs 2 workers: max |Δw| = {d}");

    // A file that breaks after the listing is named when a batch reaches it.
    let class = png.join("train/9");
    let mut files: Vec<_> = std::fs::read_dir(&class)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let victim = files.last().unwrap();
    std::fs::write(victim, b"\x89PNG\r\n\x1a\ntruncated").unwrap();
    let e = fails(&[
        "train",
        streamed.to_str().unwrap(),
        "-q",
        "--workers",
        "2",
        "--out",
        dir.path().join("broken").to_str().unwrap(),
    ]);
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(name) && e.contains("cannot decode"), "{e}");
    // Streamed folders keep the exact permutation: no shuffle buffer to size.
    let j = job(
        dir.path(),
        "sb.toml",
        &std::fs::read_to_string(&streamed)
            .unwrap()
            .replace("stream = true\n", "stream = true\nshuffle_buffer = 100\n"),
    );
    let e = fails(&["train", j.to_str().unwrap()]);
    assert!(e.contains("data.shuffle_buffer"), "{e}");
}
