//! Bring your own framework: `dlc launch -- COMMAND` and `dlc exec`, end to end with
//! real Python, real PyTorch (and TensorFlow), and a real Slurm.
//!
//! The interpreter is `DLC_PYTHON` (CI: a venv inside the clone with the pinned
//! frameworks), else `python3`. The `dlcluster` package comes from `python/` in this
//! repository (PYTHONPATH). A test that needs a framework or Slurm skips when it is
//! missing, unless `DLC_REQUIRE_LAUNCHERS=1` (CI), where it fails.

mod common;
use common::*;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn example(name: &str) -> String {
    repo()
        .join("examples/frameworks")
        .join(name)
        .display()
        .to_string()
}

/// `dlc` with the repository's Python package on the path.
fn dlc_py() -> Command {
    let mut c = dlc();
    c.env("PYTHONPATH", repo().join("python"));
    c
}

/// True when the interpreter can import `module` (else skip, or fail when required).
fn python_has(module: &str) -> bool {
    have(
        &python(),
        &["-c", &format!("import {module}")],
        &format!("Python with {module} (DLC_PYTHON)"),
    )
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Lines `[rank r] …` of `out`, grouped by rank, prefix removed.
fn by_rank(out: &str) -> HashMap<usize, Vec<String>> {
    let mut m: HashMap<usize, Vec<String>> = HashMap::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("[rank ") {
            if let Some((r, l)) = rest.split_once("] ") {
                if let Ok(r) = r.parse() {
                    m.entry(r).or_default().push(l.to_string());
                }
            }
        }
    }
    m
}

#[test]
fn every_process_gets_its_frameworks_environment_and_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let script = "import os, json, dlcluster\n\
        keys = ['RANK','WORLD_SIZE','LOCAL_RANK','LOCAL_WORLD_SIZE','MASTER_ADDR','MASTER_PORT',\n\
                'DLC_RANK','DLC_RUN_DIR','DLC_JOB_TOKEN','DLC_RESTART_COUNT','OMP_NUM_THREADS','TF_CONFIG']\n\
        env = {k: os.environ.get(k) for k in keys}\n\
        env['shard'] = dlcluster.shard(10, 4, epoch=1, seed=7)\n\
        env['alone'] = dlcluster.shard(10, 4, epoch=1, seed=7, rank_=0, world=1)\n\
        print(json.dumps(env))\n";
    let out = dir.path().join("run");
    let o = dlc_py()
        .args(["launch", "--workers", "2", "--framework", "torch", "--out"])
        .arg(&out)
        .args(["--", &python(), "-c", script])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let lines = by_rank(&stdout);
    let env: Vec<serde_json::Value> = (0..2)
        .map(|r| serde_json::from_str(&lines[&r][0]).unwrap())
        .collect();
    for (r, e) in env.iter().enumerate() {
        assert_eq!(e["RANK"], r.to_string());
        assert_eq!(e["DLC_RANK"], r.to_string());
        assert_eq!(e["LOCAL_RANK"], r.to_string());
        assert_eq!(e["WORLD_SIZE"], "2");
        assert_eq!(e["LOCAL_WORLD_SIZE"], "2");
        assert_eq!(e["MASTER_ADDR"], "127.0.0.1");
        assert_eq!(e["DLC_RESTART_COUNT"], "0");
        assert_eq!(e["OMP_NUM_THREADS"], "1");
        assert_eq!(
            e["DLC_RUN_DIR"],
            out.canonicalize().unwrap().display().to_string()
        );
        assert!(e["DLC_JOB_TOKEN"].is_null(), "the job token leaked: {e}");
        assert!(e["TF_CONFIG"].is_null(), "torch gets no TF_CONFIG: {e}");
    }
    let port: u16 = env[0]["MASTER_PORT"].as_str().unwrap().parse().unwrap();
    assert!(port > 0);
    assert_eq!(env[0]["MASTER_PORT"], env[1]["MASTER_PORT"]);
    // The shards: each global batch split into contiguous slices, together exactly
    // one process's batches.
    let alone: Vec<Vec<u64>> = serde_json::from_value(env[0]["alone"].clone()).unwrap();
    let s0: Vec<Vec<u64>> = serde_json::from_value(env[0]["shard"].clone()).unwrap();
    let s1: Vec<Vec<u64>> = serde_json::from_value(env[1]["shard"].clone()).unwrap();
    assert_eq!(alone.len(), 3);
    for (step, batch) in alone.iter().enumerate() {
        let joined: Vec<u64> = s0[step].iter().chain(&s1[step]).copied().collect();
        assert_eq!(&joined, batch, "step {step}");
    }
    let mut all: Vec<u64> = alone.concat();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<u64>>());
}

/// Starts `dlc launch --workers 2 -- python -c SCRIPT` in the background, where the
/// script writes its pid to `DIR/pid-<rank>` and then sleeps; returns the child and
/// the pids of the two commands.
fn two_sleepers(dir: &Path, extra: &[&str]) -> (std::process::Child, Vec<i32>) {
    let script = "import os, time\n\
        r = os.environ['DLC_RANK']\n\
        p = os.path.join(os.environ['DLC_RUN_DIR'], 'pid-' + r)\n\
        open(p + '.tmp', 'w').write(str(os.getpid()))\n\
        os.replace(p + '.tmp', p)\n\
        print('sleeping', flush=True)\n\
        time.sleep(300)\n";
    let child = dlc_py()
        .args(["launch", "--workers", "2", "-q", "--out"])
        .arg(dir)
        .args(extra)
        .args(["--", &python(), "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pids = loop {
        let pids: Vec<Option<i32>> = (0..2)
            .map(|r| {
                std::fs::read_to_string(dir.join(format!("pid-{r}")))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })
            .collect();
        if pids.iter().all(Option::is_some) {
            break pids.into_iter().flatten().collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "the commands did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    (child, pids)
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes; /proc/<pid>/stat's third field says so.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|t| !t.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_killed_command_stops_the_job_within_seconds_naming_its_rank() {
    let dir = tempfile::tempdir().unwrap();
    let (child, pids) = two_sleepers(dir.path(), &[]);
    let t = Instant::now();
    // SAFETY: kill(2) on a process this test started (through dlc).
    unsafe {
        libc::kill(pids[1], libc::SIGKILL);
    }
    let o = child.wait_with_output().unwrap();
    let took = t.elapsed();
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}:\n{stderr}");
    assert!(
        stderr.contains("rank 1 failed") && stderr.contains("signal 9 (SIGKILL)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Rank 0's command was stopped, not orphaned.
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(pids[0]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pids[0]), "rank 0's command outlived the job");
}

#[test]
fn sigterm_to_dlc_launch_stops_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let (child, pids) = two_sleepers(dir.path(), &[]);
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !pids.iter().any(|&p| alive(p)),
        "a command outlived `dlc launch`"
    );
}

#[test]
fn max_restarts_restarts_every_process_with_a_restart_count() {
    let dir = tempfile::tempdir().unwrap();
    let script = "import os, sys\n\
        r, n = os.environ['DLC_RANK'], os.environ['DLC_RESTART_COUNT']\n\
        print(f'attempt {n}', flush=True)\n\
        sys.exit(3 if (r == '1' and n == '0') else 0)\n";
    // Without restarts the failure ends the job, naming the rank and its exit code.
    let o = dlc_py()
        .args(["launch", "--workers", "2", "--out"])
        .arg(dir.path().join("a"))
        .args(["--", &python(), "-c", script])
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("rank 1") && stderr.contains("exited with code 3"),
        "{stderr}"
    );
    // With one restart the second attempt succeeds; both ranks ran twice.
    let o = dlc_py()
        .args(["launch", "--workers", "2", "--max-restarts", "1", "--out"])
        .arg(dir.path().join("b"))
        .args(["--", &python(), "-c", script])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("restart 1 of 1"), "{stderr}");
    let lines = by_rank(&stdout);
    for r in 0..2 {
        assert!(lines[&r].contains(&"attempt 0".to_string()), "{stdout}");
        assert!(lines[&r].contains(&"attempt 1".to_string()), "{stdout}");
    }
}

#[test]
fn gang_start_fails_at_the_join_timeout_naming_the_missing_ranks() {
    // Rank 0 of 3 alone, under a torchrun-style environment: it hosts the rendezvous
    // and waits for ranks 1 and 2, which never come.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let o = dlc()
        .args(["exec", "--join-timeout", "2", "--", "true"])
        .env("RANK", "0")
        .env("WORLD_SIZE", "3")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("DLC_JOB_TOKEN", "secret")
        .output()
        .unwrap();
    let took = t.elapsed();
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("rank(s) [1, 2] to join"),
        "the missing ranks must be named:\n{stderr}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn launch_explains_what_it_needs() {
    let err = fails(&["launch", "--workers", "2"]);
    assert!(err.contains("nothing to launch"), "{err}");
    let err = fails(&[
        "launch",
        "--workers",
        "2",
        "--strategy",
        "ps",
        "--framework",
        "torch",
        "--",
        "true",
    ]);
    assert!(err.contains("ParameterServerStrategy"), "{err}");
    let err = fails(&["launch", "--workers", "2", "--", "/no/such/program"]);
    assert!(
        err.contains("cannot start `/no/such/program`") && err.contains("rank"),
        "{err}"
    );
}

/// Max |Δw| between two weight files, each loaded by `load` (Python: a dict of arrays
/// or tensors from `sys.argv[1]`/`[2]`).
fn max_diff(load: &str, a: &Path, b: &Path) -> f64 {
    let script = format!(
        "import sys\n{load}\n\
         a, b = load(sys.argv[1]), load(sys.argv[2])\n\
         assert sorted(a) == sorted(b), (sorted(a), sorted(b))\n\
         print(max(float(abs(a[k] - b[k]).max()) for k in a))\n"
    );
    let o = Command::new(python())
        .args(["-c", &script])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    stdout.trim().parse().unwrap()
}

/// Max |Δw| between two torch state dicts.
fn torch_diff(a: &Path, b: &Path) -> f64 {
    max_diff("import torch\nload = torch.load", a, b)
}

/// Max |Δw| between two `np.savez` files.
fn npz_diff(a: &Path, b: &Path) -> f64 {
    max_diff(
        "import numpy as np\ndef load(p):\n    f = np.load(p)\n    return {k: f[k] for k in f.files}",
        a,
        b,
    )
}

/// `dlc launch LAUNCH… --out RUN -- python examples/frameworks/SCRIPT ARGS…`.
fn launch_example(run: &Path, launch: &[&str], script: &str, args: &[&str]) -> Output {
    dlc_py()
        .arg("launch")
        .args(launch)
        .arg("--out")
        .arg(run)
        .args(["--", &python(), &example(script)])
        .args(args)
        .output()
        .unwrap()
}

/// The arguments every example training script of these tests takes: a small,
/// seeded run that two processes and one process can both do.
const SCRIPT_ARGS: [&str; 8] = [
    "--limit",
    "2560",
    "--batch-size",
    "64",
    "--steps",
    "30",
    "--seed",
    "5",
];

#[test]
fn torch_ddp_on_two_processes_matches_one_process() {
    if !python_has("torch") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Alone: plain python, no dlc.
    let one = dir.path().join("one");
    let o = Command::new(python())
        .env("PYTHONPATH", repo().join("python"))
        .env("OMP_NUM_THREADS", "1")
        .arg(example("torch_ddp.py"))
        .args(SCRIPT_ARGS)
        .arg("--out")
        .arg(&one)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("on 1 process(es)"), "{stdout}");
    // Two processes under dlc (the framework detected from the script's imports).
    let two = dir.path().join("two");
    let o = launch_example(&two, &["--workers", "2"], "torch_ddp.py", &SCRIPT_ARGS);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[rank 0] done: 30 steps on 2 process(es)"),
        "{stdout}"
    );
    let ranks = torch_diff(&two.join("weights-rank0.pt"), &two.join("weights-rank1.pt"));
    assert_eq!(ranks, 0.0, "the two ranks' weights differ");
    let vs_one = torch_diff(&one.join("weights-rank0.pt"), &two.join("weights-rank0.pt"));
    assert!(vs_one < 1e-5, "2 processes vs 1: max |Δw| = {vs_one}");
}

#[test]
fn torch_ddp_restarts_from_its_checkpoint_after_a_failure() {
    if !python_has("torch") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // 2560 samples / 128 = 20 steps per epoch; rank 1 fails in epoch 2 on the first
    // attempt; the restart resumes from the epoch-1 checkpoint.
    let o = launch_example(
        &run,
        &["--workers", "2", "--max-restarts", "1"],
        "torch_ddp.py",
        &["--limit", "2560", "--epochs", "2", "--fail-at-step", "25"],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("failing on purpose at step 25"), "{stdout}");
    assert!(
        stdout.contains("resumed from epoch 1 (restart 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("done: 40 steps on 2 process(es)"),
        "{stdout}"
    );
    assert!(stderr.contains("exited with code 3"), "{stderr}");
}

#[test]
fn torch_ddp_under_slurm_matches_the_local_run() {
    if !python_has("torch")
        || !have(
            "sinfo",
            &["-h", "-o", "%T"],
            "a running Slurm cluster (scripts/slurm-local.sh start)",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let o = launch_example(&local, &["--workers", "2"], "torch_ddp.py", &SCRIPT_ARGS);
    assert!(o.status.success(), "{:?}", text(&o));
    let slurm = dir.path().join("slurm");
    let o = launch_example(
        &slurm,
        &[
            "--manager",
            "slurm",
            "--workers",
            "2",
            "--wait",
            "--time",
            "10m",
        ],
        "torch_ddp.py",
        &SCRIPT_ARGS,
    );
    let (stdout, stderr) = text(&o);
    let log = std::fs::read_dir(&slurm)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("slurm-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .unwrap_or_default();
    assert!(o.status.success(), "{stdout}\n{stderr}\n{log}");
    assert!(
        log.contains("[rank 0] done: 30 steps on 2 process(es)"),
        "{log}"
    );
    let d = torch_diff(
        &local.join("weights-rank0.pt"),
        &slurm.join("weights-rank0.pt"),
    );
    assert!(d < 1e-6, "slurm vs local: {d}");
    let d = torch_diff(
        &slurm.join("weights-rank0.pt"),
        &slurm.join("weights-rank1.pt"),
    );
    assert_eq!(d, 0.0);
}

#[test]
fn tf_keras_multi_worker_mirrored_on_two_processes_keeps_them_identical() {
    if !python_has("tf_keras") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("mwms");
    let o = launch_example(
        &run,
        &["--workers", "2"],
        "tf_keras_train.py",
        &["--limit", "2048", "--batch-size", "64"],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("with MultiWorkerMirroredStrategy on 2 process(es)"),
        "{stdout}\n{stderr}"
    );
    let d = npz_diff(
        &run.join("weights-worker0.npz"),
        &run.join("weights-worker1.npz"),
    );
    assert_eq!(d, 0.0, "the two workers' weights differ");
}

#[test]
fn tf_keras_parameter_server_strategy_with_a_chief_a_ps_and_two_workers() {
    if !python_has("tf_keras") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("ps");
    let o = launch_example(
        &run,
        &["--workers", "2", "--strategy", "ps", "--ps-servers", "1"],
        "tf_keras_train.py",
        &["--limit", "2048", "--batch-size", "64"],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[rank 0] done: 1 epoch(s) with ParameterServerStrategy on 4 process(es)"),
        "{stdout}\n{stderr}"
    );
    // The chief trained (its weights live on the ps task); accuracy is far above chance.
    let acc: f64 = stdout
        .split("test accuracy ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    assert!(acc > 50.0, "{stdout}");
}

/// True when the interpreter has JAX and Keras 3 (checked without importing Keras,
/// whose default backend would import TensorFlow).
fn python_has_keras_jax() -> bool {
    have(
        &python(),
        &[
            "-c",
            "import jax, importlib.metadata as m\n\
             assert int(m.version('keras').split('.')[0]) >= 3",
        ],
        "Python with jax and Keras 3 (DLC_PYTHON)",
    )
}

#[test]
fn keras_jax_data_parallel_on_two_processes_matches_one_process() {
    if !python_has_keras_jax() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Alone: plain python, no dlc (the script picks KERAS_BACKEND=jax itself).
    let one = dir.path().join("one");
    let o = Command::new(python())
        .env("PYTHONPATH", repo().join("python"))
        .env_remove("KERAS_BACKEND")
        .arg(example("keras_jax_train.py"))
        .args(SCRIPT_ARGS)
        .arg("--out")
        .arg(&one)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("done: 30 steps on 1 process(es), DataParallel over 1 "),
        "{stdout}"
    );
    // Two processes under dlc (the framework detected from the script's imports):
    // one JAX system over Gloo, each process feeding half of every global batch.
    let two = dir.path().join("two");
    let o = launch_example(
        &two,
        &["--workers", "2"],
        "keras_jax_train.py",
        &SCRIPT_ARGS,
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[rank 0] done: 30 steps on 2 process(es), DataParallel over "),
        "{stdout}\n{stderr}"
    );
    let ranks = npz_diff(
        &two.join("weights-rank0.npz"),
        &two.join("weights-rank1.npz"),
    );
    assert_eq!(ranks, 0.0, "the two ranks' weights differ");
    // Same global batches, so the same steps up to the all-reduce's summation order.
    let vs_one = npz_diff(
        &one.join("weights-rank0.npz"),
        &two.join("weights-rank0.npz"),
    );
    assert!(vs_one < 1e-4, "2 processes vs 1: max |Δw| = {vs_one}");
}
