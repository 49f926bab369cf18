//! Bad input through the `dlc` binary: clear errors, no panics.

mod common;
use common::*;

use dlc_data::IdxArray;

#[test]
fn malformed_job_files_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(
        dir.path(),
        "bad.toml",
        "[model]\npreset = \"mlp\"\nlayerz = 3\n[data]\ndataset = \"fashion-mnist\"\n",
    );
    let err = fails(&["train", j.to_str().unwrap()]);
    assert!(
        err.contains("bad.toml") && err.contains("layerz") && err.contains("line 3"),
        "{err}"
    );
    let j = job(
        dir.path(),
        "bad2.toml",
        "[model]\npreset = \"resnet\"\n[data]\ndataset = \"fashion-mnist\"\n",
    );
    let err = fails(&["train", j.to_str().unwrap()]);
    assert!(err.contains("resnet") && err.contains("lenet"), "{err}");
    let err = fails(&["train", dir.path().join("none.toml").to_str().unwrap()]);
    assert!(err.contains("none.toml"), "{err}");
}

#[test]
fn model_that_does_not_fit_the_data_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(
        dir.path(),
        "m.toml",
        "[model]\nlayers = [{ type = \"flatten\" }, { type = \"dense\", units = 7 }]\n\
         [data]\ndataset = \"fashion-mnist\"\nlimit = 10\n",
    );
    let err = fails(&[
        "train",
        j.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(
        err.contains("needs 10 output(s)") && err.contains("units = 10"),
        "{err}"
    );
}

fn write_idx(dir: &std::path::Path, name: &str, dims: Vec<usize>, data: Vec<u8>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, IdxArray { dims, data }.to_bytes()).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn corrupt_or_mismatched_datasets_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let ti = write_idx(
        dir.path(),
        "ti",
        vec![20, 4, 4],
        (0..320).map(|i| i as u8).collect(),
    );
    let tl = write_idx(
        dir.path(),
        "tl",
        vec![20],
        (0..20).map(|i| (i % 3) as u8).collect(),
    );
    let short = write_idx(dir.path(), "short", vec![19], vec![0; 19]);
    let mk = |labels: &str| {
        format!(
            "[model]\nlayers = [{{ type = \"flatten\" }}, {{ type = \"dense\", units = 3 }}]\n\
             [data]\ntrain_images = \"{ti}\"\ntrain_labels = \"{labels}\"\n\
             test_images = \"{ti}\"\ntest_labels = \"{tl}\"\n[train]\nbatch_size = 5\n"
        )
    };
    // A synthetic dataset in the right format trains.
    let good = job(dir.path(), "good.toml", &mk(&tl));
    ok(&[
        "train",
        good.to_str().unwrap(),
        "--out",
        dir.path().join("g").to_str().unwrap(),
        "-q",
    ]);

    let j = job(dir.path(), "mismatch.toml", &mk(&short));
    let err = fails(&[
        "train",
        j.to_str().unwrap(),
        "--out",
        dir.path().join("o1").to_str().unwrap(),
    ]);
    assert!(
        err.contains("20 images") && err.contains("19 labels"),
        "{err}"
    );

    let bytes = std::fs::read(&tl).unwrap();
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let j = job(dir.path(), "cut.toml", &mk(cut.to_str().unwrap()));
    let err = fails(&[
        "train",
        j.to_str().unwrap(),
        "--out",
        dir.path().join("o2").to_str().unwrap(),
    ]);
    assert!(err.contains("truncated") && err.contains("cut"), "{err}");

    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"\x1f\x8bthis is not gzip at all").unwrap();
    let j = job(dir.path(), "garbage.toml", &mk(garbage.to_str().unwrap()));
    let err = fails(&[
        "train",
        j.to_str().unwrap(),
        "--out",
        dir.path().join("o3").to_str().unwrap(),
    ]);
    assert!(err.contains("garbage"), "{err}");
}

#[test]
fn missing_named_dataset_says_how_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(
        dir.path(),
        "x.toml",
        "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\ndir = \"/nonexistent\"\n",
    );
    let err = fails(&[
        "train",
        j.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(
        err.contains("apt-get install dataset-fashion-mnist"),
        "{err}"
    );
}

#[test]
fn eval_with_wrong_weights_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(dir.path(), "e.toml", &quick_mlp(100, 1, 50));
    let err = fails(&[
        "eval",
        j.to_str().unwrap(),
        "--model",
        dir.path().join("nope.safetensors").to_str().unwrap(),
    ]);
    assert!(err.contains("nope.safetensors"), "{err}");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not safetensors").unwrap();
    let err = fails(&[
        "eval",
        j.to_str().unwrap(),
        "--model",
        junk.to_str().unwrap(),
    ]);
    assert!(err.contains("junk.safetensors"), "{err}");
}
