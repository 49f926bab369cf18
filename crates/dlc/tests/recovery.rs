//! Recovery end to end: automatic restarts after a killed worker (exact, and elastic
//! with fewer workers), resuming on a different number of workers and with the other
//! strategy (ring ↔ parameter servers), stopping on SIGTERM with a checkpoint (ring
//! and ps), and falling back from a damaged checkpoint.
//!
//! Workers are killed with a real SIGKILL at a chosen step through the fault-injection
//! variable `DLC_FAULT_KILL_AT_STEP=RANK:STEP` (first attempt only), so every kill
//! point is exact and the test cannot miss it.

mod common;
use common::*;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// 6000 samples, global batch 60, drop_last: 100 steps in one epoch; a checkpoint
/// every 20 steps.
fn job_text(limit: usize) -> String {
    format!(
        "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\nlimit = {limit}\n\
         test_limit = 500\n[train]\nepochs = 1\nbatch_size = 60\noptimizer = \"adam\"\n\
         learning_rate = 0.002\nlog_every = 5\nseed = 11\ndrop_last = true\n\
         checkpoint_every = \"20 steps\"\n"
    )
}

/// Runs `dlc train` with a worker killed at `kill` (`RANK:STEP`) and returns the
/// summary.
fn train_killed(job: &Path, out: &Path, kill: &str, extra: &[&str]) -> serde_json::Value {
    let args = train_args(job, out, extra);
    let o = dlc()
        .args(&args)
        .env("DLC_FAULT_KILL_AT_STEP", kill)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dlc {args:?} with {kill} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    summary(&String::from_utf8_lossy(&o.stdout))
}

/// Five kill points drawn from the clock (printed, so a failure can be replayed).
fn kill_points() -> Vec<usize> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut points = Vec::new();
    while points.len() < 5 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = 30 + (x % 61) as usize;
        if !points.contains(&p) {
            points.push(p);
        }
    }
    points
}

#[test]
fn a_killed_worker_is_restarted_and_training_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(6000));
    let whole = dir.path().join("whole");
    let s = train_to(&job, &whole, &["--workers", "2"]);
    assert_eq!(s["global_step"], 100);
    let reference = weights(&whole.join("model.safetensors"));
    let points = kill_points();
    eprintln!("kill points: {points:?}");
    for (i, step) in points.into_iter().enumerate() {
        let rank = i % 2;
        let out = dir.path().join(format!("killed-{step}"));
        let s = train_killed(
            &job,
            &out,
            &format!("{rank}:{step}"),
            &["--workers", "2", "--max-restarts", "1"],
        );
        assert_eq!(s["global_step"], 100, "kill at {step}");
        let restart = &metrics_lines(&out, "restart")[..];
        assert_eq!(restart.len(), 1, "kill at {step}: {restart:?}");
        let r = &restart[0];
        // A checkpoint every 20 steps. The killed rank dies right after its step: a
        // killed rank 0 before that step's checkpoint (and one it was still writing
        // is lost with it), while a surviving rank 0 may still checkpoint the step.
        let resumed = r["step"].as_u64().unwrap() as usize;
        let newest = (step - 1) / 20 * 20;
        assert!(
            resumed.is_multiple_of(20) && resumed <= step && resumed + 20 >= newest,
            "kill at {step}: {r}"
        );
        assert_eq!(
            (&r["workers_before"], &r["workers_after"]),
            (&2.into(), &2.into())
        );
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("rank {rank}")),
            "{r}"
        );
        // Steps lost count from the last step line (every 5 steps).
        let lost = r["steps_lost"].as_u64().unwrap() as usize;
        assert!(
            lost <= step - resumed && lost + resumed + 5 >= step,
            "kill at {step}: {r}"
        );
        let got = weights(&out.join("model.safetensors"));
        assert_eq!(
            got, reference,
            "kill of rank {rank} at step {step}: weights differ from the uninterrupted run"
        );
    }
}

#[test]
fn elastic_restart_continues_on_fewer_workers() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(6000));
    let whole = dir.path().join("whole");
    train_to(&job, &whole, &["--workers", "3"]);
    let out = dir.path().join("elastic");
    let s = train_killed(
        &job,
        &out,
        "2:50",
        &[
            "--workers",
            "3",
            "--max-restarts",
            "1",
            "--min-workers",
            "2",
        ],
    );
    assert_eq!(s["global_step"], 100);
    let r = &metrics_lines(&out, "restart")[0];
    assert_eq!(
        (&r["workers_before"], &r["workers_after"], &r["step"]),
        (&3.into(), &2.into(), &40.into()),
        "{r}"
    );
    // The global batch stayed 60: only the summation order differs.
    let d = max_abs_diff(
        &weights(&whole.join("model.safetensors")),
        &weights(&out.join("model.safetensors")),
    );
    assert!(d < 1e-4, "elastic run differs by {d}");
    // Below --min-workers a restart is refused: the job fails with every attempt.
    let out = dir.path().join("too-few");
    let o = dlc()
        .args([
            "train",
            job.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args([
            "-q",
            "--workers",
            "2",
            "--max-restarts",
            "3",
            "--min-workers",
            "2",
        ])
        .env("DLC_FAULT_KILL_AT_STEP", "1:30")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("1 worker(s) would remain, fewer than --min-workers 2"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_resumes_on_another_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(6000));
    let whole = dir.path().join("whole");
    train_to(&job, &whole, &["--workers", "2"]);
    let reference = weights(&whole.join("model.safetensors"));
    for (from, to) in [(2, 3), (3, 1), (1, 2)] {
        let out = dir.path().join(format!("{from}-{to}"));
        let s = train_to(
            &job,
            &out,
            &["--workers", &from.to_string(), "--steps", "45"],
        );
        assert_eq!(s["global_step"], 45);
        let label = format!("{from} → {to} workers");
        resume_and_compare(
            &job,
            &out,
            &["--workers", &to.to_string()],
            &reference,
            &label,
        );
    }
}

/// Resumes the 100-step job `job` from the checkpoint in `out` with the `args`
/// given, and checks that it ends at step 100 with the `reference` weights.
fn resume_and_compare(
    job: &Path,
    out: &Path,
    args: &[&str],
    reference: &[(String, Vec<f32>)],
    label: &str,
) {
    let (j, o) = (job.to_str().unwrap(), out.to_str().unwrap());
    let s = summary(&ok(&[
        &["train", j, "--resume", o, "-q", "--json"][..],
        args,
    ]
    .concat()));
    assert_eq!(s["global_step"], 100, "{label}");
    let d = max_abs_diff(reference, &weights(&out.join("model.safetensors")));
    assert!(
        d < 1e-4,
        "{label}: differs from the uninterrupted run by {d}"
    );
}

/// Starts `dlc train` (with `extra` arguments) on a 1000-step job, sends SIGTERM once
/// step 20 is logged, and returns the step it stopped at.
fn stop_with_sigterm(job: &Path, out: &Path, workers: &str, extra: &[&str]) -> u64 {
    let mut child = dlc()
        .args([
            "train",
            job.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["-q", "--workers", workers])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_step_lines(out, 4, Duration::from_secs(120));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let step = assert_stopped_at_checkpoint(
        out,
        "SIGTERM",
        &format!("{workers} worker(s); stderr:\n{err}"),
    );
    if workers == "1" {
        // Stopped, not finished: 128 + SIGTERM, after a clean stop.
        assert_eq!(status.code(), Some(143), "one worker: {err}");
        assert!(err.contains("stopped by SIGTERM at global step"), "{err}");
    } else {
        // The launcher reports that it was stopped; its workers stopped cleanly.
        assert!(err.contains("stopped by signal 15"), "{err}");
        assert!(!err.contains("failed ("), "{err}");
    }
    step
}

#[test]
fn sigterm_checkpoints_at_the_current_step_and_resume_continues_there() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(60_000));
    let j = job.to_str().unwrap();
    for workers in ["1", "2"] {
        let whole = dir.path().join(format!("whole-{workers}"));
        let reference = {
            train_to(&job, &whole, &["--workers", workers]);
            weights(&whole.join("model.safetensors"))
        };
        let out = dir.path().join(format!("stopped-{workers}"));
        let step = stop_with_sigterm(&job, &out, workers, &[]);
        let s = summary(&ok(&[
            "train",
            j,
            "--resume",
            out.to_str().unwrap(),
            "--workers",
            workers,
            "-q",
            "--json",
        ]));
        assert_eq!(s["global_step"], 1000);
        let got = weights(&out.join("model.safetensors"));
        assert_eq!(
            got, reference,
            "{workers} worker(s) stopped at {step} and resumed differ from the uninterrupted run"
        );
    }
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(6000));
    let j = job.to_str().unwrap();
    let whole = dir.path().join("whole");
    train_to(&job, &whole, &["--workers", "2"]);
    let out = dir.path().join("damaged");
    // Checkpoints at 20 and 40 (and at the stop, 50): the newest is 50, the previous 40.
    train_to(&job, &out, &["--workers", "2", "--steps", "50"]);
    let model = out.join("checkpoint/model.bin");
    let len = std::fs::metadata(&model).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let o = dlc()
        .args([
            "train",
            j,
            "--resume",
            out.to_str().unwrap(),
            "--workers",
            "2",
        ])
        .args(["--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("is damaged")
            && err.contains("resuming from the previous one (global step 40)"),
        "{err}"
    );
    assert!(err.contains("global step 40"), "{err}");
    let d = max_abs_diff(
        &weights(&whole.join("model.safetensors")),
        &weights(&out.join("model.safetensors")),
    );
    assert!(d < 1e-6, "resumed from the fallback differs by {d}");
    // Both damaged: a clear error, nothing trained.
    for d in ["checkpoint", "checkpoint.old"] {
        std::fs::write(out.join(d).join("optim.safetensors"), b"garbage").unwrap();
    }
    let err = fails(&[
        "train",
        j,
        "--resume",
        out.to_str().unwrap(),
        "--workers",
        "2",
    ]);
    assert!(err.contains("no intact checkpoint to resume from"), "{err}");
}

#[test]
fn a_restart_never_takes_over_another_runs_directory() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(6000));
    let old = dir.path().join("old");
    train_to(&job, &old, &["--workers", "2", "--steps", "30"]);
    let before = std::fs::read(old.join("checkpoint/state.json")).unwrap();
    // The first attempt refuses the directory; the restart must refuse it too,
    // not resume the old run's checkpoint as if it were its own.
    let o = dlc()
        .args([
            "train",
            job.to_str().unwrap(),
            "--out",
            old.to_str().unwrap(),
        ])
        .args(["-q", "--workers", "2", "--max-restarts", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("already holds a run") && err.contains("2 attempt(s), all failed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(old.join("checkpoint/state.json")).unwrap(),
        before
    );
    assert!(metrics_lines(&old, "restart").is_empty());
}

/// The arguments of a synchronous parameter-server job with `servers` servers.
fn ps(servers: &'static str) -> [&'static str; 4] {
    ["--strategy", "ps", "--ps-servers", servers]
}

#[test]
fn a_checkpoint_resumes_with_the_other_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(6000));
    let whole = dir.path().join("whole");
    train_to(&job, &whole, &["--workers", "2"]);
    let reference = weights(&whole.join("model.safetensors"));
    // Ring on 2 workers → 3 workers and 2 servers; 2 workers and 1 server → ring on 1.
    let ring2: &[&str] = &["--workers", "2"];
    let ps3 = [&["--workers", "3"][..], &ps("2")].concat();
    let ps2 = [&["--workers", "2"][..], &ps("1")].concat();
    let ring1: &[&str] = &["--workers", "1"];
    for (name, from, to) in [
        ("ring → ps", ring2, &ps3[..]),
        ("ps → ring", &ps2[..], ring1),
    ] {
        let out = dir.path().join(name.replace(' ', ""));
        let s = train_to(&job, &out, &[from, &["--steps", "45"]].concat());
        assert_eq!(s["global_step"], 45, "{name}");
        resume_and_compare(&job, &out, to, &reference, name);
    }
}

#[test]
fn parameter_servers_restart_a_killed_worker_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(6000));
    let args = [&["--workers", "2"][..], &ps("2")].concat();
    let whole = dir.path().join("whole");
    train_to(&job, &whole, &args);
    let reference = weights(&whole.join("model.safetensors"));
    for kill in ["1:57", "0:33"] {
        let out = dir
            .path()
            .join(format!("killed-{}", kill.replace(':', "-")));
        let s = train_killed(
            &job,
            &out,
            kill,
            &[&args[..], &["--max-restarts", "1"]].concat(),
        );
        assert_eq!(s["global_step"], 100, "kill {kill}");
        let r = &metrics_lines(&out, "restart")[..];
        assert_eq!(r.len(), 1, "kill {kill}: {r:?}");
        assert_eq!(
            weights(&out.join("model.safetensors")),
            reference,
            "kill {kill}: the servers' restored optimizer state differs from the uninterrupted run's"
        );
    }
}

#[test]
fn sigterm_stops_parameter_servers_with_a_checkpoint_and_resume_continues_there() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(60_000));
    let j = job.to_str().unwrap();
    let whole = dir.path().join("whole");
    train_to(&job, &whole, &[&["--workers", "2"][..], &ps("2")].concat());
    let reference = weights(&whole.join("model.safetensors"));
    let out = dir.path().join("stopped");
    let step = stop_with_sigterm(&job, &out, "2", &ps("2"));
    let o = out.to_str().unwrap();
    let s = summary(&ok(&[
        &["train", j, "--resume", o, "--workers", "2", "-q", "--json"][..],
        &ps("2"),
    ]
    .concat()));
    assert_eq!(s["global_step"], 1000);
    assert_eq!(
        weights(&out.join("model.safetensors")),
        reference,
        "stopped at {step} and resumed: differs from the uninterrupted run"
    );
}

#[test]
fn asynchronous_parameter_servers_refuse_checkpoints_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "j.toml", &job_text(600));
    let out = dir.path().join("async");
    let err = fails(&train_args(
        &job,
        &out,
        &[&["--workers", "2"][..], &ps("1"), &["--ps-mode", "async"]].concat(),
    ));
    assert!(
        err.contains("not possible here") && err.contains("ps_mode = \"sync\""),
        "{err}"
    );
}
