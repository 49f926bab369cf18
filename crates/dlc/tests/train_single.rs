//! End-to-end tests of single-worker training through the `dlc` binary.

mod common;
use common::*;

#[test]
fn trains_mlp_on_a_few_thousand_samples() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "quick.toml", &quick_mlp(4000, 2, 64));
    let out = dir.path().join("run");
    let summary = ok(&[
        "train",
        job.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--threads",
        "1",
        "--json",
    ]);
    let s: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.75, "test accuracy {acc}");
    assert_eq!(s["global_step"], 2 * 63);

    // metrics.jsonl: step lines then epoch lines, with the documented fields.
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<_> = lines.iter().filter(|l| l["kind"] == "step").collect();
    let epochs: Vec<_> = lines.iter().filter(|l| l["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    assert_eq!(steps.len(), 2 * 63 / 5);
    for k in ["epoch", "step", "loss", "samples_per_sec"] {
        assert!(steps[0][k].is_number(), "step line lacks {k}: {}", steps[0]);
    }
    for k in [
        "epoch",
        "train_loss",
        "test_loss",
        "test_accuracy",
        "seconds",
    ] {
        assert!(
            epochs[1][k].is_number(),
            "epoch line lacks {k}: {}",
            epochs[1]
        );
    }
    assert_eq!(epochs[1]["test_accuracy"].as_f64().unwrap(), acc);

    // The same curves in a TensorBoard event file.
    let events: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let events = dlc_train::tensorboard::read_events(&std::fs::read(&events[0]).unwrap()).unwrap();
    let scalar = |tag: &str| -> Vec<(i64, f32)> {
        events
            .iter()
            .filter_map(|e| match &e.what {
                Some(dlc_train::tensorboard::EventWhat::Summary(s)) => s
                    .value
                    .iter()
                    .find(|v| v.tag == tag)
                    .and_then(|v| v.simple_value.map(|x| (e.step, x))),
                _ => None,
            })
            .collect()
    };
    let losses = scalar("train/loss");
    assert_eq!(losses.len(), steps.len());
    assert_eq!(losses[0].0, steps[0]["step"].as_i64().unwrap());
    assert_eq!(losses[0].1, steps[0]["loss"].as_f64().unwrap() as f32);
    assert_eq!(
        scalar("epoch/test_accuracy"),
        [
            (1, epochs[0]["test_accuracy"].as_f64().unwrap() as f32),
            (2, acc as f32)
        ]
    );

    // `dlc train` leaves its curves plot; `dlc plot` overlays runs.
    assert!(std::fs::read(out.join("curves.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    let cmp = dir.path().join("cmp");
    let files = ok(&[
        "plot",
        out.to_str().unwrap(),
        out.to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
    ]);
    assert_eq!(files.lines().count(), 2, "{files}");
    let svg = std::fs::read_to_string(cmp.with_extension("svg")).unwrap();
    assert!(svg.contains("test accuracy"));
    let err = fails(&["plot", dir.path().join("nope").to_str().unwrap()]);
    assert!(
        err.contains("cannot read") && err.contains("metrics.jsonl"),
        "{err}"
    );

    // Stable, documented tensor names.
    let w = weights(&out.join("model.safetensors"));
    let names: Vec<&str> = w.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "layers.1.bias",
            "layers.1.weight",
            "layers.3.bias",
            "layers.3.weight",
            "layers.5.bias",
            "layers.5.weight"
        ]
    );

    // `dlc eval` reproduces the final test accuracy from the saved weights.
    let e = ok(&[
        "eval",
        job.to_str().unwrap(),
        "--model",
        out.join("model.safetensors").to_str().unwrap(),
        "--json",
    ]);
    let e: serde_json::Value = serde_json::from_str(e.trim()).unwrap();
    assert!((e["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9, "{e}");

    // A finished run directory is not overwritten.
    let err = fails(&[
        "train",
        job.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("already holds a run"), "{err}");
}

#[test]
fn same_seed_same_weights_and_resume_matches_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "r.toml", &quick_mlp(1000, 3, 100));
    let j = job.to_str().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let c = dir.path().join("c");
    ok(&[
        "train",
        j,
        "--out",
        a.to_str().unwrap(),
        "--threads",
        "1",
        "-q",
    ]);
    ok(&[
        "train",
        j,
        "--out",
        b.to_str().unwrap(),
        "--threads",
        "1",
        "-q",
    ]);
    let wa = weights(&a.join("model.safetensors"));
    assert_eq!(
        max_abs_diff(&wa, &weights(&b.join("model.safetensors"))),
        0.0
    );

    // Interrupt mid-epoch (step 14 of 30; epoch 2 of 3), then resume.
    ok(&[
        "train",
        j,
        "--out",
        c.to_str().unwrap(),
        "--threads",
        "1",
        "-q",
        "--steps",
        "14",
    ]);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["global_step"], 14);
    assert_eq!(state["epoch"], 1);
    assert_eq!(state["step_in_epoch"], 4);
    let partial = weights(&c.join("model.safetensors"));
    assert!(
        max_abs_diff(&wa, &partial) > 0.0,
        "a partial run must differ"
    );
    let out = ok(&[
        "train",
        j,
        "--resume",
        c.to_str().unwrap(),
        "--threads",
        "1",
        "-q",
        "--json",
    ]);
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["global_step"], 30);
    let diff = max_abs_diff(&wa, &weights(&c.join("model.safetensors")));
    assert_eq!(
        diff, 0.0,
        "resumed run must end with the uninterrupted run's weights"
    );

    // A different seed gives different weights.
    let d = dir.path().join("d");
    ok(&[
        "train",
        j,
        "--out",
        d.to_str().unwrap(),
        "--threads",
        "1",
        "-q",
        "--seed",
        "4",
    ]);
    assert!(max_abs_diff(&wa, &weights(&d.join("model.safetensors"))) > 1e-4);
}

#[test]
fn resume_without_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "r.toml", &quick_mlp(100, 1, 50));
    let err = fails(&[
        "train",
        job.to_str().unwrap(),
        "--resume",
        dir.path().to_str().unwrap(),
    ]);
    assert!(err.contains("no checkpoint"), "{err}");
}

#[test]
fn average_pooling_and_layer_norm_train_and_save_their_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "pool.toml",
        "[model]\nlayers = [\n\
           { type = \"conv2d\", filters = 8, kernel = 3, padding = \"same\" },\n\
           { type = \"relu\" },\n\
           { type = \"avgpool2d\", size = 2 },\n\
           { type = \"conv2d\", filters = 16, kernel = 3, padding = \"same\" },\n\
           { type = \"relu\" },\n\
           { type = \"global_avgpool\" },\n\
           { type = \"layernorm\" },\n\
           { type = \"dense\", units = 10 },\n]\n\
         [data]\ndataset = \"fashion-mnist\"\nlimit = 2000\ntest_limit = 1000\n\
         [train]\nepochs = 2\nbatch_size = 32\nlearning_rate = 0.01\n",
    );
    let out = dir.path().join("run");
    let s: serde_json::Value = serde_json::from_str(
        ok(&[
            "train",
            job.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
            "-q",
        ])
        .trim(),
    )
    .unwrap();
    // 16 channel means are a weak summary, but far above chance (10 %).
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.3, "test accuracy {acc}");
    let w = weights(&out.join("model.safetensors"));
    let names: Vec<&str> = w.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"layers.6.gamma") && names.contains(&"layers.6.beta"),
        "{names:?}"
    );
    // A layer in the wrong place is named with the shapes.
    let bad = job.with_file_name("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&job)
            .unwrap()
            .replace("{ type = \"global_avgpool\" },\n", ""),
    )
    .unwrap();
    let e = fails(&["train", bad.to_str().unwrap()]);
    assert!(e.contains("layernorm") && e.contains("[16, 14, 14]"), "{e}");
}

#[test]
fn resnet_small_trains_saves_its_blocks_and_evaluates_from_the_saved_weights() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "resnet.toml",
        "[model]\npreset = \"resnet-small\"\n\
         [data]\ndataset = \"fashion-mnist\"\nlimit = 384\ntest_limit = 200\n\
         [train]\nepochs = 1\nbatch_size = 64\noptimizer = \"adam\"\nlearning_rate = 0.002\n",
    );
    let out = dir.path().join("run");
    let s: serde_json::Value = serde_json::from_str(
        ok(&[
            "train",
            job.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
            "-q",
        ])
        .trim(),
    )
    .unwrap();
    assert_eq!(s["global_step"], 6, "{s}");
    let w = weights(&out.join("model.safetensors"));
    let names: Vec<&str> = w.iter().map(|(n, _)| n.as_str()).collect();
    // Block 5 (16 → 32 channels, stride 2): its layers, then the 1×1 projection.
    for name in [
        "layers.3.layers.0.weight",
        "layers.3.layers.1.running_var",
        "layers.5.layers.3.weight",
        "layers.5.projection.weight",
        "layers.10.weight",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("layers.3.projection")),
        "{names:?}"
    );
    let projection = &w
        .iter()
        .find(|(n, _)| n == "layers.5.projection.weight")
        .unwrap()
        .1;
    assert_eq!(projection.len(), 32 * 16);
    // Evaluation rebuilds the blocks, loads every tensor (batch-norm statistics
    // included) and scores exactly what training scored.
    let e = ok(&[
        "eval",
        job.to_str().unwrap(),
        "--model",
        out.join("model.safetensors").to_str().unwrap(),
        "--json",
    ]);
    let e: serde_json::Value = serde_json::from_str(e.trim()).unwrap();
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(
        (e["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9,
        "{e} vs {s}"
    );
    // Nested blocks are refused with the layer's place.
    let bad = job.with_file_name("nested.toml");
    std::fs::write(
        &bad,
        "[model]\nlayers = [\n\
           { type = \"residual\", layers = [{ type = \"residual\", layers = [{ type = \"relu\" }] }] },\n\
           { type = \"flatten\" },\n{ type = \"dense\", units = 10 },\n]\n\
         [data]\ndataset = \"fashion-mnist\"\nlimit = 64\n",
    )
    .unwrap();
    let e = fails(&["train", bad.to_str().unwrap()]);
    assert!(
        e.contains("layer 0 (residual)") && e.contains("do not nest"),
        "{e}"
    );
}

#[test]
fn resuming_with_another_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = job(dir.path(), "mlp.toml", &quick_mlp(100, 1, 50));
    let run_dir = dir.path().join("run");
    let run_dir = run_dir.to_str().unwrap();
    ok(&[
        "train",
        mlp.to_str().unwrap(),
        "--out",
        run_dir,
        "--steps",
        "1",
        "-q",
    ]);
    let lenet = job(
        dir.path(),
        "lenet.toml",
        &quick_mlp(100, 1, 50).replace("preset = \"mlp\"", "preset = \"lenet\""),
    );
    let out = run(&["train", lenet.to_str().unwrap(), "--resume", run_dir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does the job's model match the checkpoint"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
