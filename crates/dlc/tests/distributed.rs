//! Distributed training end to end through `dlc train --workers N`.

mod common;
use common::*;

/// 1800 samples, global batch 60, drop_last: 30 steps in one epoch.
fn equivalence_job(model: &str, optimizer: &str) -> String {
    format!(
        "[model]\n{model}\n[data]\ndataset = \"fashion-mnist\"\nlimit = 1800\ntest_limit = 500\n\
         [train]\nepochs = 1\nbatch_size = 60\noptimizer = \"{optimizer}\"\nlearning_rate = 0.002\n\
         log_every = 10\nseed = 11\ndrop_last = true\n"
    )
}

#[test]
fn n_workers_match_one_worker_with_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    // Residual blocks (one keeping the shape, one projecting it) without batch norm,
    // whose per-rank batch statistics make N workers differ from one by design.
    let residual = "layers = [\n\
        { type = \"conv2d\", filters = 4, kernel = 3, stride = 2, padding = \"same\" },\n\
        { type = \"residual\", layers = [{ type = \"conv2d\", filters = 4, kernel = 3, \
          padding = \"same\" }, { type = \"relu\" }] },\n\
        { type = \"residual\", layers = [{ type = \"conv2d\", filters = 8, kernel = 3, \
          stride = 2, padding = \"same\" }] },\n\
        { type = \"relu\" },\n{ type = \"global_avgpool\" },\n{ type = \"dense\", units = 10 },\n]";
    for (name, model, optimizer) in [
        ("mlp", "preset = \"mlp\"", "adam"),
        ("lenet", "preset = \"lenet\"", "sgd"),
        ("residual", residual, "adam"),
    ] {
        let job = job(
            dir.path(),
            &format!("{name}.toml"),
            &equivalence_job(model, optimizer),
        );
        // 1 KiB gradient buckets: about one per parameter, summed during backward.
        let bucketed = common::job(
            dir.path(),
            &format!("{name}-buckets.toml"),
            &format!(
                "{}[distributed]\nbucket_mib = 0.001\n",
                equivalence_job(model, optimizer)
            ),
        );
        let one = dir.path().join(format!("{name}-1"));
        let s = train_to(&job, &one, &["--threads", "1"]);
        assert_eq!(s["global_step"], 30);
        let reference = weights(&one.join("model.safetensors"));
        let alone: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(one.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        for (label, extra) in [
            ("ring x2", vec!["--workers", "2"]),
            ("ring x3", vec!["--workers", "3"]),
            ("ring x2, buckets", vec!["--workers", "2"]),
            ("ring x3, buckets", vec!["--workers", "3"]),
            ("ps sync x2", vec!["--workers", "2", "--strategy", "ps"]),
            (
                "ps sync x2, 2 servers",
                vec!["--workers", "2", "--strategy", "ps", "--ps-servers", "2"],
            ),
        ] {
            if name == "residual" && !matches!(label, "ring x3" | "ring x3, buckets" | "ps sync x2")
            {
                continue;
            }
            let out = dir
                .path()
                .join(format!("{name}-{}", label.replace([' ', ','], "_")));
            let buckets = label.ends_with("buckets");
            let s = train_to(if buckets { &bucketed } else { &job }, &out, &extra);
            assert_eq!(s["global_step"], 30, "{name} {label}");
            let diff = max_abs_diff(&reference, &weights(&out.join("model.safetensors")));
            assert!(diff < 1e-4, "{name} {label}: max abs difference {diff}");
            // A distributed run's metrics (its world line included) plot like any.
            assert!(
                out.join("curves.png").exists(),
                "{name} {label}: no curves plot"
            );
            // metrics.jsonl reports compute, communication and data-wait time per step.
            let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
            let step: serde_json::Value = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["kind"] == "step")
                .unwrap();
            // Time in communication is measured, not assumed: one worker has none.
            assert!(step["comm_s"].as_f64().unwrap() > 0.0, "{label}: {step}");
            assert!(step["compute_s"].as_f64().unwrap() > 0.0, "{label}: {step}");
            // Summing that ran during backward is reported apart; only buckets have it.
            let hidden = step["comm_hidden_s"].as_f64().unwrap();
            assert!(
                hidden >= 0.0 && (buckets || hidden == 0.0),
                "{label}: {step}"
            );
            assert_eq!(alone["comm_s"].as_f64(), Some(0.0), "1 worker: {alone}");
            let data_s = step["data_s"].as_f64().unwrap();
            assert!((0.0..60.0).contains(&data_s), "{label}: {step}");
            // Workers on one host talk through shared memory (the world line says
            // what carries rank 0's link to each rank).
            let world = metrics_lines(&out, "world");
            let links = &world.last().expect("a world line")["links"];
            assert!(links[0].is_null(), "{label}: {links}");
            assert_eq!(links[1], "shm", "{label}: {links}");
        }
    }
}

#[test]
fn parameter_servers_average_batch_norm_statistics_as_the_ring_does() {
    // Batch norm's running statistics are buffers, not trainable parameters: servers
    // never see them. Each worker's differ (its own batches); both strategies make
    // every worker's the mean over workers, so the saved models agree.
    let dir = tempfile::tempdir().unwrap();
    let bn = "layers = [\n\
        { type = \"conv2d\", filters = 4, kernel = 3, stride = 2, padding = \"same\" },\n\
        { type = \"batchnorm\" },\n{ type = \"relu\" },\n{ type = \"global_avgpool\" },\n\
        { type = \"dense\", units = 10 },\n]";
    let job = job(dir.path(), "bn.toml", &equivalence_job(bn, "adam"));
    let ring = dir.path().join("ring");
    let ps = dir.path().join("ps");
    train_to(&job, &ring, &["--workers", "2"]);
    train_to(&job, &ps, &["--workers", "2", "--strategy", "ps"]);
    let (ring, ps) = (
        weights(&ring.join("model.safetensors")),
        weights(&ps.join("model.safetensors")),
    );
    assert!(
        ring.iter().any(|(name, _)| name.contains("running_mean")),
        "{:?}",
        ring.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let d = max_abs_diff(&ring, &ps);
    assert!(d < 1e-4, "ring vs ps with batch norm: max |Δ| = {d}");
}

#[test]
fn ring_resume_matches_uninterrupted_ring_run() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "r.toml",
        &equivalence_job("preset = \"mlp\"", "adam"),
    );
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    train_to(&job, &a, &["--workers", "2"]);
    let s = train_to(&job, &b, &["--workers", "2", "--steps", "12"]);
    assert_eq!(s["global_step"], 12);
    let j = job.to_str().unwrap();
    let out = ok(&[
        "train",
        j,
        "--workers",
        "2",
        "--resume",
        b.to_str().unwrap(),
        "-q",
        "--json",
    ]);
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["global_step"], 30);
    let diff = max_abs_diff(
        &weights(&a.join("model.safetensors")),
        &weights(&b.join("model.safetensors")),
    );
    assert!(diff < 1e-6, "resumed ring run differs by {diff}");
}

#[test]
fn async_parameter_server_trains_fashion_mnist() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "async.toml",
        "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\n[train]\nepochs = 3\nlr_schedule = \"cosine\"\n\
         batch_size = 128\noptimizer = \"adam\"\nlearning_rate = 0.001\nlog_every = 100\n\
         [distributed]\nworkers = 2\nstrategy = \"ps\"\nps_mode = \"async\"\nmax_staleness = 2\n",
    );
    let s = train_to(&job, &dir.path().join("o"), &[]);
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.85, "async PS test accuracy {acc}");
    eprintln!("async PS test accuracy {acc}");
}

#[test]
fn worker_without_a_launcher_explains_itself() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "w.toml", &quick_mlp(100, 1, 50));
    let out = dlc()
        .args(["worker", job.to_str().unwrap()])
        .env_remove("DLC_RANK")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no launcher environment found")
            && err.contains("--workers")
            && err.contains("DLC_RANK"),
        "{err}"
    );
    let e = fails(&["train", job.to_str().unwrap(), "--workers", "0"]);
    assert!(e.contains("distributed.workers"), "{e}");
    let e = fails(&["train", job.to_str().unwrap(), "--strategy", "allgather"]);
    assert!(e.contains("ring or ps"), "{e}");
}

#[test]
fn uneven_and_empty_local_batches_match_one_worker() {
    // 1801 samples in global batches of 50 over 3 workers: every step splits 17/17/16,
    // and the epoch's last batch holds one sample, so two workers have none. Each
    // worker's gradients are weighted by its share of the global batch, and an empty
    // share contributes nothing (no NaN from 0/0, no optimizer step skipped).
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "uneven.toml",
        "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\nlimit = 1801\n\
         test_limit = 500\n[train]\nepochs = 1\nbatch_size = 50\noptimizer = \"adam\"\n\
         learning_rate = 0.002\nlog_every = 10\nseed = 5\ndrop_last = false\n",
    );
    let one = dir.path().join("one");
    let s = train_to(&job, &one, &["--threads", "1"]);
    assert_eq!(s["global_step"], 37);
    let reference = weights(&one.join("model.safetensors"));
    // Empty shares with gradient buckets too: a worker without samples runs no
    // backward, and its buckets go out as zeros.
    let bucketed = common::job(
        dir.path(),
        "uneven-buckets.toml",
        &format!(
            "{}[distributed]\nbucket_mib = 0.001\n",
            std::fs::read_to_string(&job).unwrap()
        ),
    );
    for (label, extra) in [
        ("ring x3", vec!["--workers", "3"]),
        ("ring x3 buckets", vec!["--workers", "3"]),
        ("ps sync x3", vec!["--workers", "3", "--strategy", "ps"]),
    ] {
        let out = dir.path().join(label.replace(' ', "_"));
        let j = if label.ends_with("buckets") {
            &bucketed
        } else {
            &job
        };
        let s = train_to(j, &out, &extra);
        assert_eq!(s["global_step"], 37, "{label}");
        let diff = max_abs_diff(&reference, &weights(&out.join("model.safetensors")));
        assert!(diff < 1e-4, "{label}: max abs difference {diff}");
    }
}

#[test]
fn bf16_and_fp16_gradients_train_as_well_as_f32() {
    // The accuracy effect of compressed gradients: 2 workers, 200 Adam steps on
    // 10 000 samples, f32 vs bf16 vs fp16 on the wire.
    let dir = tempfile::tempdir().unwrap();
    let base = "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\nlimit = 10000\n\
                test_limit = 2000\n[train]\nepochs = 2\nbatch_size = 100\noptimizer = \"adam\"\n\
                learning_rate = 0.001\nlog_every = 50\nseed = 5\n[distributed]\nworkers = 2\n";
    let mut runs = Vec::new();
    for c in ["none", "bf16", "fp16"] {
        let job = job(
            dir.path(),
            &format!("{c}.toml"),
            &format!("{base}compression = \"{c}\"\n"),
        );
        let out = dir.path().join(c);
        let s = train_to(&job, &out, &[]);
        assert_eq!(s["global_step"], 200, "{c}");
        let acc = s["test_accuracy"].as_f64().unwrap();
        runs.push((c, out, acc));
    }
    let (_, f32_run, f32_acc) = &runs[0];
    for (c, out, acc) in &runs[1..] {
        let diff = model_diff(f32_run, out);
        eprintln!("{c}: test accuracy {acc:.4} (f32 {f32_acc:.4}), max |Δw| vs f32 {diff:.2e}");
        assert!(
            diff > 0.0,
            "{c}: the weights equal f32's: was anything compressed?"
        );
        assert!(
            (acc - f32_acc).abs() <= 0.02,
            "{c}: test accuracy {acc} vs {f32_acc} with f32 gradients"
        );
    }
}
