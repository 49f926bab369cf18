//! Helpers shared by the CLI tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the `dlc` under test remembers submitted jobs (one directory per test
/// binary, outside the user's home).
pub fn state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("dlc-test-state-{}", std::process::id()))
}

/// The `dlc` binary under test.
pub fn dlc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dlc"));
    c.env("DLC_STATE_DIR", state_dir());
    c
}

/// Runs `dlc` with `args`, returning its output.
pub fn run(args: &[&str]) -> Output {
    dlc().args(args).output().expect("dlc runs")
}

/// Runs `dlc` and asserts success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "dlc {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `dlc`, asserts failure without a panic, and returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "dlc {args:?} should fail");
    assert!(!err.contains("panicked"), "dlc {args:?} panicked:\n{err}");
    err
}

/// The summary a `--json` run prints last.
pub fn summary(out: &str) -> serde_json::Value {
    serde_json::from_str(out.lines().last().expect("dlc printed a summary")).unwrap()
}

/// `train JOB --out OUT -q --json EXTRA…`: a quiet training run that prints its
/// summary as JSON.
pub fn train_args<'a>(job: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        job.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

/// Trains `job` into `out` quietly (with `extra` arguments) and returns its summary.
pub fn train_to(job: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    summary(&ok(&train_args(job, out, extra)))
}

/// Writes a job file into `dir` and returns its path.
pub fn job(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A quick MLP job on the first `limit` Fashion-MNIST samples.
pub fn quick_mlp(limit: usize, epochs: usize, batch: usize) -> String {
    format!(
        "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\nlimit = {limit}\n\
         test_limit = 2000\n[train]\nepochs = {epochs}\nbatch_size = {batch}\n\
         optimizer = \"adam\"\nlearning_rate = 0.002\nlog_every = 5\nseed = 3\n"
    )
}

/// Reads every tensor of a safetensors file as f32 values, by name.
pub fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let vals = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, vals)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Largest absolute difference between two weight sets with the same names.
pub fn max_abs_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(
        a.iter().map(|t| &t.0).collect::<Vec<_>>(),
        b.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.1.len(), y.1.len(), "{}", x.0);
            x.1.iter().zip(&y.1).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// True when the tests must not skip for a missing tool (`DLC_REQUIRE_LAUNCHERS=1`,
/// set by CI, which installs them).
pub fn required() -> bool {
    std::env::var("DLC_REQUIRE_LAUNCHERS").is_ok_and(|v| v == "1")
}

/// True when `cmd args` runs successfully; otherwise skips (or fails when required).
pub fn have(cmd: &str, args: &[&str], what: &str) -> bool {
    let ok = std::process::Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !required(),
            "{what} is required (DLC_REQUIRE_LAUNCHERS=1) but `{cmd}` does not work"
        );
        eprintln!("skipping: {what} is not available");
    }
    ok
}

/// The lines of `run/metrics.jsonl` of one `kind` (`step`, `epoch`, `restart`, `stop`).
pub fn metrics_lines(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", run.join("metrics.jsonl").display()))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// Waits until `run/metrics.jsonl` holds at least `n` step lines: the job trains.
pub fn wait_for_step_lines(run: &Path, n: usize, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
        if text
            .lines()
            .filter(|l| l.contains("\"kind\":\"step\""))
            .count()
            >= n
        {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{}: training never reached {n} step line(s) in {limit:?}",
            run.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Asserts that a signal named `reason` stopped `run` (one stop line) before its
/// 1000th step, with the checkpoint at the stop step; returns that step. `context`
/// goes into the failure messages.
pub fn assert_stopped_at_checkpoint(run: &Path, reason: &str, context: &str) -> u64 {
    let stop = metrics_lines(run, "stop");
    assert_eq!(stop.len(), 1, "no single stop line: {stop:?}; {context}");
    assert_eq!(stop[0]["reason"], reason, "{context}");
    let step = stop[0]["step"].as_u64().unwrap();
    assert!(step < 1000, "the job ended before the signal: {context}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["global_step"], step,
        "checkpoint at the stop step; {context}"
    );
    step
}

/// Each line of `out` parsed as one JSON value (a `--json` command's output).
pub fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect()
}

/// 1800 samples, global batch 60, drop_last: 30 steps in one epoch.
pub fn equivalence_job() -> String {
    "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\nlimit = 1800\ntest_limit = 500\n\
     [train]\nepochs = 1\nbatch_size = 60\noptimizer = \"adam\"\nlearning_rate = 0.002\n\
     log_every = 10\nseed = 11\ndrop_last = true\n"
        .to_string()
}

/// Trains `job` with one single-threaded worker into `dir/one` (the reference run).
pub fn one_worker_run(dir: &Path, job: &Path) -> PathBuf {
    let one = dir.join("one");
    ok(&[
        "train",
        job.to_str().unwrap(),
        "--threads",
        "1",
        "--out",
        one.to_str().unwrap(),
        "-q",
    ]);
    one
}

/// The largest difference between the final weights of two runs.
pub fn model_diff(a: &Path, b: &Path) -> f32 {
    max_abs_diff(
        &weights(&a.join("model.safetensors")),
        &weights(&b.join("model.safetensors")),
    )
}

/// Asserts that two runs ended with the same weights (max |Δw| < 1e-4).
pub fn assert_same_weights(one: &Path, two: &Path, label: &str) {
    let diff = model_diff(one, two);
    assert!(
        diff < 1e-4,
        "{label} vs one worker: max abs difference {diff}"
    );
}

/// The repository's root (examples, the Python package).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python of the foreign-framework and engine tests: `DLC_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("DLC_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `dlc launch --manager MANAGER --address ADDRESS ARGS…` with this repository's
/// Python package (the Ray and Spark drivers) on the path and `env` added.
pub fn launch_on(manager: &str, address: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = dlc();
    c.env("PYTHONPATH", repo().join("python"))
        .args(["launch", "--manager", manager, "--address", address])
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("dlc runs")
}

/// Asserts that two torch state dicts (`torch.save`d) hold identical tensors.
pub fn assert_same_torch_weights(a: &Path, b: &Path) {
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, torch\na, b = (torch.load(p) for p in sys.argv[1:])\n\
             assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), 'ranks differ'",
        ])
        .arg(a)
        .arg(b)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{} vs {}: {}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs examples/frameworks/torch_ddp.py as 2 processes under `manager` at `address`
/// (10 steps) into `run`, and asserts that both ranks ended with the same weights.
pub fn torch_ddp_on(manager: &str, address: &str, run: &Path) {
    let script = repo().join("examples/frameworks/torch_ddp.py");
    let o = launch_on(
        manager,
        address,
        &[
            "--workers",
            "2",
            "--out",
            run.to_str().unwrap(),
            "--",
            &python(),
            script.to_str().unwrap(),
            "--limit",
            "1280",
            "--batch-size",
            "64",
            "--steps",
            "10",
            "--seed",
            "5",
        ],
        &[],
    );
    assert!(
        o.status.success(),
        "torch_ddp.py under {manager}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_torch_weights(&run.join("weights-rank0.pt"), &run.join("weights-rank1.pt"));
}

/// What every engine manager (Ray, Spark) must do, at `address`, in `dir`: 2 workers
/// end with one worker's weights; rank 1 SIGKILLed at step 15 fails the job naming
/// it; with `--max-restarts 1` the job starts again from the step-10 checkpoint and
/// ends with one worker's weights. Returns the job's text (30 steps, a checkpoint
/// every 10) for the engine's own checks.
pub fn engine_trains_names_and_restarts(manager: &str, address: &str, dir: &Path) -> String {
    let text = equivalence_job().replace(
        "drop_last = true",
        "drop_last = true\ncheckpoint_every = \"10 steps\"",
    );
    let job_file = job(dir, "m.toml", &text);
    let one = one_worker_run(dir, &job_file);
    let job_arg = job_file.to_str().unwrap();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let two = dir.join("two");
    let started = std::time::Instant::now();
    let o = launch_on(
        manager,
        address,
        &[job_arg, "--workers", "2", "--out", two.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("{manager}: 2 workers, 30 steps in {:?}", started.elapsed());
    assert_same_weights(&one, &two, &format!("{manager}, 2 workers"));
    let world = metrics_lines(&two, "world");
    assert_eq!(world.last().unwrap()["links"][1], "shm", "{world:?}");

    let kill = [("DLC_FAULT_KILL_AT_STEP", "1:15")];
    let failed = dir.join("failed");
    let o = launch_on(
        manager,
        address,
        &[job_arg, "--workers", "2", "--out", failed.to_str().unwrap()],
        &kill,
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "error: {manager} launch failed: rank 1 failed (killed by signal 9)"
        )),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let restarted = dir.join("restarted");
    let o = launch_on(
        manager,
        address,
        &[
            job_arg,
            "--workers",
            "2",
            "--max-restarts",
            "1",
            "--out",
            restarted.to_str().unwrap(),
        ],
        &kill,
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("rank 1 failed (killed by signal 9); "),
        "{err}"
    );
    let restart = metrics_lines(&restarted, "restart");
    assert_eq!(restart.len(), 1, "{restart:?}");
    assert_eq!(restart[0]["step"], 10, "{restart:?}");
    assert_eq!(
        restart[0]["reason"], "rank 1 failed (killed by signal 9)",
        "{restart:?}"
    );
    assert_same_weights(
        &one,
        &restarted,
        &format!("{manager}, restarted after a kill"),
    );
    text
}
