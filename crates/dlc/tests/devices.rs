//! Device choice and the matmul benchmark. CI has no GPU: these tests check the CPU
//! fallback and the clear failure of `cuda`; on a machine with a usable GPU they
//! train on it instead.

mod common;
use common::*;

fn gpu_usable() -> bool {
    let v: serde_json::Value = serde_json::from_str(ok(&["devices", "--json"]).trim()).unwrap();
    assert!(v["cpu"]["cores"].as_u64().unwrap() >= 1, "{v}");
    !v["cuda"].is_null()
}

#[test]
fn devices_reports_cpu_and_gpu_state() {
    let v: serde_json::Value = serde_json::from_str(ok(&["devices", "--json"]).trim()).unwrap();
    assert!(
        v["cpu"]["model"].is_string() && v["cpu"]["simd"].is_string(),
        "{v}"
    );
    if v["cuda"].is_null() {
        let why = v["cuda_unusable"].as_str().unwrap();
        assert!(!why.is_empty());
    } else {
        assert!(!v["cuda"]["gpus"].as_array().unwrap().is_empty(), "{v}");
    }
    // The table says what the JSON says.
    let text = ok(&["devices"]);
    let cpu = &v["cpu"];
    for part in [
        cpu["model"].as_str().unwrap().to_string(),
        format!("{} cores", cpu["cores"]),
        cpu["simd"].as_str().unwrap().to_string(),
    ] {
        assert!(text.contains(&part), "no `{part}` in:\n{text}");
    }
    match v["cuda_unusable"].as_str() {
        Some(why) => assert!(text.contains(why), "no `{why}` in:\n{text}"),
        None => assert!(text.contains(v["cuda"]["gpus"][0]["name"].as_str().unwrap_or("?"))),
    }
}

#[test]
fn auto_falls_back_to_cpu_and_cuda_fails_fast_without_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "d.toml", &quick_mlp(500, 1, 50));
    let j = job.to_str().unwrap();
    let out = dlc()
        .args([
            "train",
            j,
            "--device",
            "auto",
            "--json",
            "--out",
            dir.path().join("a").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if gpu_usable() {
        assert!(s["device"].as_str().unwrap().starts_with("cuda:"), "{s}");
        assert!(err.contains("using GPU"), "{err}");
        let s: serde_json::Value = serde_json::from_str(
            ok(&[
                "train",
                j,
                "--device",
                "cuda",
                "--json",
                "--out",
                dir.path().join("c").to_str().unwrap(),
            ])
            .trim(),
        )
        .unwrap();
        assert!(s["test_accuracy"].as_f64().unwrap() > 0.6, "{s}");
        let w = dir.path().join("c/model.safetensors");
        let v: serde_json::Value = serde_json::from_str(
            ok(&[
                "eval",
                j,
                "--model",
                w.to_str().unwrap(),
                "--device",
                "cuda",
                "--json",
            ])
            .trim(),
        )
        .unwrap();
        assert!(v["device"].as_str().unwrap().starts_with("cuda:"), "{v}");
        assert!(
            (v["accuracy"].as_f64().unwrap() - s["test_accuracy"].as_f64().unwrap()).abs() < 0.01,
            "{v} vs {s}"
        );
        return;
    }
    assert_eq!(s["device"], "cpu");
    let notices: Vec<&str> = err.lines().filter(|l| l.contains("device auto")).collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert!(
        notices[0].contains("no usable GPU") && notices[0].contains("training on CPU"),
        "{err}"
    );
    // Evaluation goes where it is told: the CPU, or a clear refusal of a missing GPU.
    let weights = dir.path().join("a/model.safetensors");
    let w = weights.to_str().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(ok(&["eval", j, "--model", w, "--device", "cpu", "--json"]).trim())
            .unwrap();
    assert_eq!(v["device"], "cpu", "{v}");
    assert_eq!(v["accuracy"], s["test_accuracy"], "{v} vs {s}");
    let err = fails(&["eval", j, "--model", w, "--device", "cuda"]);
    assert!(err.contains("device cuda requested but"), "{err}");

    // Two workers: every rank that falls back says so, not only rank 0.
    let out = dlc()
        .args([
            "train",
            j,
            "--device",
            "auto",
            "--workers",
            "2",
            "--out",
            dir.path().join("a2").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for rank in 0..2 {
        let said = format!("rank {rank}: device auto: no usable GPU");
        assert!(err.lines().any(|l| l.contains(&said)), "{said}:\n{err}");
    }

    let start = std::time::Instant::now();
    let err = fails(&[
        "train",
        j,
        "--device",
        "cuda",
        "--out",
        dir.path().join("b").to_str().unwrap(),
    ]);
    assert!(err.contains("device cuda requested but"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let err = fails(&["train", j, "--device", "tpu"]);
    assert!(err.contains("cuda:N"), "{err}");
    let err = fails(&[
        "train",
        j,
        "--device",
        "cuda",
        "--workers",
        "2",
        "--out",
        dir.path().join("w").to_str().unwrap(),
    ]);
    assert!(err.contains("device cuda requested but"), "{err}");
}

#[test]
fn bench_matmul_on_cpu_writes_tables_and_valid_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mm");
    let text = ok(&[
        "bench",
        "matmul",
        "--device",
        "cpu",
        "--dtype",
        "f32,bf16",
        "--sizes",
        "64,128,256",
        "--iters",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert_eq!(r["device"], "cpu");
        let (n, t, g) = (
            r["n"].as_f64().unwrap(),
            r["median_s"].as_f64().unwrap(),
            r["gflops"].as_f64().unwrap(),
        );
        assert!(
            t > 0.0 && ((2.0 * n * n * n / t / 1e9) - g).abs() < 1e-6 * g,
            "{r}"
        );
    }
    let json = std::fs::read_to_string(out.join("matmul.json")).unwrap();
    assert_eq!(json.lines().count(), 6);
    let csv = std::fs::read_to_string(out.join("matmul.csv")).unwrap();
    assert!(
        csv.starts_with("device,dtype,n,median_s,gflops\n") && csv.lines().count() == 7,
        "{csv}"
    );
    for name in ["matmul_time", "matmul_speedup"] {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5000,
            "{name}.png"
        );
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>") && svg.contains("cpu f32"),
            "{name}.svg"
        );
    }
    let err = fails(&[
        "bench",
        "matmul",
        "--device",
        "npu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("unknown device"), "{err}");
    let err = fails(&["bench", "matmul", "--dtype", "f8"]);
    assert!(err.contains("unknown dtype"), "{err}");
}

/// The GPU check's bundle fits what travels to a GPU machine, and the script inside
/// it runs every step (here small, on the CPU) and records each as a JSON line.
#[test]
fn the_gpu_check_bundle_fits_and_runs_every_step_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let script = repo().join("scripts/gpu-check.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--bundle")
        .arg(&bundle)
        .env("DLC_BIN", env!("CARGO_BIN_EXE_dlc"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let bytes: u64 = walk(&bundle);
    assert!(bytes < 60 << 20, "{bytes} bytes: {said}");
    assert!(bundle.join("dlc.xz").exists() && !bundle.join("dlc").exists());

    let results = dir.path().join("out");
    let out = std::process::Command::new(bundle.join("gpu-check.sh"))
        .args(["--device", "cpu", "--quick", "--out"])
        .arg(&results)
        .output()
        .unwrap();
    let jsonl = std::fs::read_to_string(results.join("gpu-check.jsonl")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{jsonl}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let step = |name: &str| {
        lines
            .iter()
            .find(|v| v["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in\n{jsonl}"))
    };
    for name in [
        "devices",
        "matmul",
        "train-mlp",
        "train-cnn",
        "two-workers-ring",
        "two-workers-ps",
        "resume-second-half",
        "profile",
        "plan",
    ] {
        assert_eq!(step(name)["rc"], 0, "{name}: {jsonl}");
    }
    assert_eq!(step("train-cnn")["result"]["device"], "cpu");
    assert_eq!(step("resume-compare")["identical"], true, "{jsonl}");
    assert_eq!(step("profile-json")["result"]["device"], "cpu");
    assert_eq!(step("summary")["failed"], 0);
}

fn walk(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}
