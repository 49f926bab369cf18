//! Resource managers and foreign launchers end to end: a real single-node Slurm
//! (`scripts/slurm-local.sh start`), Open MPI's `mpirun`, and the rendered Slurm
//! script and Kubernetes manifests.
//!
//! The Slurm, MPI and Kubernetes-schema checks skip when the tools are absent, unless
//! `DLC_REQUIRE_LAUNCHERS=1` (set by CI, which installs and starts them).

mod common;
use common::*;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Checks Kubernetes manifests against the API's JSON schemas with
/// `kubernetes-validate --strict` (unknown fields are errors). `DLC_KUBERNETES_VALIDATE`
/// names the program; CI installs it with pip. Skips when absent unless required.
fn kubernetes_schema_check(dir: &Path, name: &str, yaml: &str) {
    let tool = std::env::var("DLC_KUBERNETES_VALIDATE")
        .unwrap_or_else(|_| "kubernetes-validate".to_string());
    if !have(
        &tool,
        &["--version"],
        "kubernetes-validate (pip install kubernetes-validate)",
    ) {
        return;
    }
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(&tool)
        .arg("--strict")
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "{text}\n{yaml}"
    );
    assert_eq!(
        text.matches("passed for resource").count(),
        yaml.lines().filter(|l| l.starts_with("kind: ")).count(),
        "{text}"
    );
}

fn slurm_up() -> bool {
    have(
        "sinfo",
        &["-h", "-o", "%T"],
        "a running Slurm cluster (scripts/slurm-local.sh start)",
    )
}

fn last_epoch(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", run.join("metrics.jsonl").display()));
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "epoch")
        .expect("an epoch line")
}

#[test]
fn mpirun_two_workers_match_one_worker() {
    if !have("mpirun", &["--version"], "Open MPI (Debian openmpi-bin)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "m.toml", &equivalence_job());
    let one = one_worker_run(dir.path(), &job);
    let two = dir.path().join("two");
    let out = Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            "2",
            "-x",
            "DLC_JOB_TOKEN",
        ])
        .arg(env!("CARGO_BIN_EXE_dlc"))
        .args([
            "worker",
            job.to_str().unwrap(),
            "--threads",
            "1",
            "-q",
            "--out",
            two.to_str().unwrap(),
        ])
        .env("DLC_JOB_TOKEN", "mpi-test-token")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mpirun failed:\n{err}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_same_weights(&one, &two, "mpirun x2");
    assert_eq!(last_epoch(&two)["epoch"], 1);
}

#[test]
fn mpirun_without_a_token_warns_and_still_trains() {
    if !have("mpirun", &["--version"], "Open MPI (Debian openmpi-bin)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "m.toml", &quick_mlp(600, 1, 60));
    let out_dir = dir.path().join("run");
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_dlc"))
        .args([
            "worker",
            job.to_str().unwrap(),
            "--threads",
            "1",
            "-q",
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .env_remove("DLC_JOB_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("DLC_JOB_TOKEN is not set"), "{err}");
    assert!(out_dir.join("model.safetensors").exists());
}

#[test]
fn slurm_two_task_job_trains_the_mlp_example() {
    if !slurm_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/fashion-mnist-mlp.toml"
    );
    let out = dlc()
        .args([
            "launch",
            "--manager",
            "slurm",
            example,
            "--workers",
            "2",
            "--wait",
            "--out",
        ])
        .arg(&run)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dlc launch failed:\n{err}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.parse::<u64>().is_ok(), "job id on stdout, got {id:?}");
    let e = last_epoch(&run);
    let acc = e["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.85, "MLP under Slurm reached only {acc}");
    // Ranks came from Slurm: its output has srun's task labels and rank 0's summary.
    let logs = ok(&["logs", &id]);
    assert!(logs.contains("0: done:"), "{logs}");
    let status = ok(&["status", &id, "--json"]);
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(st["state"], "COMPLETED", "{st}");
    assert_eq!(st["succeeded"], true);
    // dlc remembers the job's manager and run directory.
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state_dir().join(format!("{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["manager"], "slurm", "{rec}");
    assert_eq!(rec["run_dir"], run.to_str().unwrap(), "{rec}");
}

#[test]
fn slurm_cancel_stops_a_running_job() {
    if !slurm_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "long.toml", &quick_mlp(60000, 200, 64));
    let run = dir.path().join("run");
    let id = ok(&[
        "launch",
        "--manager",
        "slurm",
        job.to_str().unwrap(),
        "--workers",
        "2",
        "--out",
        run.to_str().unwrap(),
    ])
    .trim()
    .to_string();
    let state = |id: &str| -> String {
        let s: serde_json::Value = serde_json::from_str(&ok(&["status", id, "--json"])).unwrap();
        s["state"].as_str().unwrap().to_string()
    };
    let t = Instant::now();
    while state(&id) != "RUNNING" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "job {id} never started: {}",
            state(&id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(&["cancel", &id]);
    let t = Instant::now();
    loop {
        let s = state(&id);
        if s.starts_with("CANCELLED") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "job {id} still {s} after cancel"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its processes are gone too.
    let t = Instant::now();
    loop {
        let ps = Command::new("pgrep")
            .args(["-f", run.to_str().unwrap()])
            .output()
            .unwrap();
        if ps.stdout.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "workers of job {id} still running"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn status_logs_and_cancel_remember_the_manager_of_a_job() {
    // A Kubernetes job `dlc launch` submitted: no --manager or --namespace needed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("train-1a2b3.json"),
        r#"{"id":"train-1a2b3","manager":"kubernetes","namespace":"ml","name":"train","run_dir":"/dlc/runs/x","submitted":0}"#,
    )
    .unwrap();
    for cmd in ["status", "logs", "cancel"] {
        let out = dlc()
            .env("DLC_STATE_DIR", dir.path())
            .env("KUBECONFIG", dir.path().join("no-cluster"))
            .args([cmd, "train-1a2b3"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "no cluster here: {e}");
        // kubectl was asked (in the job's namespace), not Slurm.
        assert!(e.contains("kubectl"), "{cmd}: {e}");
        assert!(
            !e.contains("Slurm") && !e.contains("scontrol"),
            "{cmd}: {e}"
        );
        if !e.contains("not installed") {
            assert!(e.contains("-n ml"), "{cmd}: {e}");
        }
    }
}

#[test]
fn scheduler_commands_explain_bad_ids() {
    let e = fails(&["status", "12;rm", "--manager", "slurm"]);
    assert!(e.contains("not a Slurm job id"), "{e}");
    let e = fails(&["status", "12;rm"]);
    assert!(
        e.contains("no record of job") && e.contains("--manager"),
        "{e}"
    );
    let e = fails(&["logs", "never-launched"]);
    assert!(e.contains("no record of job"), "{e}");
    let e = fails(&["status", "x", "--manager", "local"]);
    assert!(e.contains("foreground"), "{e}");
    if slurm_up() {
        let e = fails(&["status", "999999"]);
        assert!(e.contains("does not know job"), "{e}");
    }
}

#[test]
fn dry_runs_print_the_script_and_the_manifests() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/fashion-mnist-mlp.toml"
    );
    let s = ok(&[
        "launch",
        "--manager",
        "slurm",
        example,
        "--nodes",
        "2",
        "--workers-per-node",
        "2",
        "--gpus-per-worker",
        "1",
        "--cpus-per-worker",
        "4",
        "--time",
        "90m",
        "--partition",
        "gpu",
        "--dry-run",
        "--out",
        "/shared/runs/x",
    ]);
    for want in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks=4",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --time=01:30:00",
        "#SBATCH --partition=gpu",
        " worker ",
        "--out /shared/runs/x",
    ] {
        assert!(s.contains(want), "missing {want:?}:\n{s}");
    }
    // Workers take the world size from srun, so a smaller restart needs no edit.
    assert!(!s.contains("--workers"), "{s}");
    let y = ok(&[
        "launch",
        "--manager",
        "kubernetes",
        example,
        "--workers",
        "3",
        "--strategy",
        "ps",
        "--ps-servers",
        "1",
        "--image",
        "dlc:test",
        "--namespace",
        "ml",
        "--dry-run",
    ]);
    let kinds: Vec<&str> = y.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
    assert_eq!(
        kinds,
        ["Secret", "ConfigMap", "Service", "Job", "Job"],
        "{y}"
    );
    assert!(
        y.contains("completionMode: Indexed") && y.contains("nvidia.com/gpu").eq(&false),
        "{y}"
    );
    let dir = tempfile::tempdir().unwrap();
    kubernetes_schema_check(dir.path(), "ps.yaml", &y);
    let gpu = ok(&[
        "launch",
        "--manager",
        "kubernetes",
        example,
        "--nodes",
        "2",
        "--workers-per-node",
        "2",
        "--gpus-per-worker",
        "1",
        "--cpus-per-worker",
        "4",
        "--time",
        "1h",
        "--image",
        "dlc:test",
        "--dry-run",
    ]);
    assert!(gpu.contains("nvidia.com/gpu"), "{gpu}");
    kubernetes_schema_check(dir.path(), "gpu.yaml", &gpu);
    let e = fails(&["launch", "--manager", "kubernetes", example, "--dry-run"]);
    assert!(e.contains("--image"), "{e}");
    let e = fails(&["launch", "--manager", "mesos", example, "--dry-run"]);
    assert!(e.contains("slurm") && e.contains("yarn"), "{e}");
    // YARN: a service spec to launch with `yarn app -launch`, which dlc does not run.
    let spec: serde_json::Value = serde_json::from_str(&ok(&[
        "launch",
        "--manager",
        "yarn",
        example,
        "--workers",
        "2",
        "--gpus-per-worker",
        "1",
        "--dry-run",
    ]))
    .unwrap();
    let worker = &spec["components"][0];
    assert_eq!(worker["number_of_containers"], 2, "{spec}");
    assert_eq!(worker["resource"]["additional"]["yarn.io/gpu"]["value"], 1);
    assert!(
        worker["launch_command"]
            .as_str()
            .unwrap()
            .contains(" worker "),
        "{spec}"
    );
    let e = fails(&["launch", "--manager", "yarn", example]);
    assert!(e.contains("yarn app -launch"), "{e}");
    let e = fails(&[
        "launch",
        "--manager",
        "yarn",
        example,
        "--max-restarts",
        "1",
        "--dry-run",
    ]);
    assert!(e.contains("not rendered for YARN"), "{e}");
    // A native worker trains on one GPU: more per worker would sit idle.
    let e = fails(&[
        "launch",
        "--manager",
        "slurm",
        example,
        "--workers-per-node",
        "2",
        "--gpus-per-worker",
        "4",
        "--dry-run",
    ]);
    assert!(
        e.contains("one GPU") && e.contains("--workers-per-node 8 --gpus-per-worker 1"),
        "{e}"
    );
    // Elastic restarts are the local manager's and Slurm's: refused, not ignored.
    let e = fails(&[
        "launch",
        "--manager",
        "kubernetes",
        "--image",
        "dlc:test",
        example,
        "--workers",
        "2",
        "--max-restarts",
        "1",
        "--min-workers",
        "1",
        "--dry-run",
    ]);
    assert!(e.contains("works with the local manager and Slurm"), "{e}");
}

#[test]
fn torchrun_environment_trains_like_one_worker() {
    // What torchrun hands each process, without torchrun itself.
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "t.toml", &equivalence_job());
    let one = one_worker_run(dir.path(), &job);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let two = dir.path().join("two");
    let children: Vec<_> = (0..2)
        .map(|rank| {
            dlc()
                .args([
                    "worker",
                    job.to_str().unwrap(),
                    "--threads",
                    "1",
                    "-q",
                    "--out",
                    two.to_str().unwrap(),
                ])
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("TORCHELASTIC_RUN_ID", "t1")
                .env("DLC_JOB_TOKEN", "torch-token")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {rank}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_same_weights(&one, &two, "torchrun x2");
}

#[test]
fn local_launch_runs_in_the_foreground() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "l.toml", &quick_mlp(600, 1, 60));
    let run = dir.path().join("run");
    ok(&[
        "launch",
        job.to_str().unwrap(),
        "--workers",
        "2",
        "-q",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(last_epoch(&run)["epoch"], 1);
    let plan = ok(&[
        "launch",
        job.to_str().unwrap(),
        "--workers",
        "2",
        "--dry-run",
    ]);
    assert_eq!(
        plan.lines().filter(|l| l.contains("DLC_RANK=")).count(),
        2,
        "{plan}"
    );
    let e = fails(&["launch", job.to_str().unwrap(), "--nodes", "2", "--dry-run"]);
    assert!(e.contains("this machine only"), "{e}");
}

#[test]
fn dry_runs_of_a_foreign_command_run_dlc_exec_on_every_manager() {
    // Slurm: one srun step of `dlc exec`, no --label (the agent prefixes `[rank r]`),
    // restarts as a loop around the step.
    let s = ok(&[
        "launch",
        "--manager",
        "slurm",
        "--nodes",
        "2",
        "--workers-per-node",
        "2",
        "--max-restarts",
        "2",
        "--dry-run",
        "--out",
        "/shared/runs/t",
        "--",
        "python",
        "train.py",
        "--lr",
        "0.1",
    ]);
    for want in [
        "#SBATCH --ntasks=4",
        "#SBATCH --job-name=dlc-train",
        " exec --framework auto --strategy ring",
        "--out /shared/runs/t -- python train.py --lr 0.1",
        "for attempt in $(seq 0 2)",
        "export DLC_RESTART_COUNT=$((requeued + attempt))",
    ] {
        assert!(s.contains(want), "missing {want:?}:\n{s}");
    }
    assert!(!s.contains("--label"), "{s}");
    // TensorFlow parameter servers: chief + 1 ps + 2 workers = 4 tasks.
    let s = ok(&[
        "launch",
        "--manager",
        "slurm",
        "--workers",
        "2",
        "--strategy",
        "ps",
        "--ps-servers",
        "1",
        "--framework",
        "tensorflow",
        "--dry-run",
        "--",
        "python",
        "train.py",
    ]);
    assert!(s.contains("#SBATCH --ntasks=4"), "{s}");
    assert!(s.contains("--strategy ps --ps-servers 1"), "{s}");
    // Kubernetes: the user's image runs `dlc exec -- COMMAND`; no job-file ConfigMap.
    let y = ok(&[
        "launch",
        "--manager",
        "kubernetes",
        "--workers",
        "2",
        "--gpus-per-worker",
        "1",
        "--image",
        "me/train:1",
        "--output-claim",
        "runs-pvc",
        "--out",
        "runs/first",
        "--dry-run",
        "--",
        "python",
        "/app/train.py",
    ]);
    let kinds: Vec<&str> = y.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
    assert_eq!(kinds, ["Secret", "Service", "Job"], "{y}");
    for want in [
        "- exec",
        "- /app/train.py",
        "image: me/train:1",
        "nvidia.com/gpu",
        "claimName: runs-pvc",
        "mountPath: /dlc/runs",
        "- /dlc/runs/first",
        "name: train-",
    ] {
        assert!(y.contains(want), "missing {want:?}:\n{y}");
    }
    let dir = tempfile::tempdir().unwrap();
    kubernetes_schema_check(dir.path(), "foreign.yaml", &y);
}

/// 60000 samples, global batch 60: 1000 quick MLP steps, a step line every 5.
fn long_equivalence_job() -> String {
    "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\nlimit = 60000\n\
     test_limit = 500\n[train]\nepochs = 1\nbatch_size = 60\noptimizer = \"adam\"\n\
     learning_rate = 0.002\nlog_every = 5\nseed = 11\ndrop_last = true\n"
        .to_string()
}

fn slurm_state(id: &str) -> String {
    let s: serde_json::Value = serde_json::from_str(&ok(&["status", id, "--json"])).unwrap();
    s["state"].as_str().unwrap_or("").to_string()
}

/// Submits `job` to Slurm with 2 workers (and `extra` arguments) into `run`, waits
/// until it trains, sends `signal` to its tasks (`scancel --signal`), and returns the
/// job id.
fn slurm_job_signalled(job: &Path, run: &Path, signal: &str, extra: &[&str]) -> String {
    let launch = [
        &[
            "launch",
            "--manager",
            "slurm",
            job.to_str().unwrap(),
            "--workers",
            "2",
            "--out",
            run.to_str().unwrap(),
        ][..],
        extra,
    ]
    .concat();
    let id = ok(&launch);
    let id = id.lines().next().unwrap().trim().to_string();
    wait_for_step_lines(run, 4, Duration::from_secs(120));
    let out = Command::new("scancel")
        .args([&format!("--signal={signal}"), &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    id
}

fn wait_slurm_end(id: &str, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        let s = slurm_state(id);
        if ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"]
            .iter()
            .any(|e| s.starts_with(e))
        {
            return s;
        }
        assert!(t.elapsed() < limit, "job {id} still {s}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn slurm_sigterm_checkpoints_and_launch_resume_continues() {
    if !slurm_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "long.toml", &long_equivalence_job());
    // Ring, and synchronous parameter servers (which stop with their workers).
    for (name, extra) in [
        ("ring", &[][..]),
        ("ps", &["--strategy", "ps", "--ps-servers", "1"][..]),
    ] {
        let whole = dir.path().join(format!("whole-{name}"));
        train_to(&job, &whole, &[&["--workers", "2"][..], extra].concat());
        let run = dir.path().join(format!("run-{name}"));
        let id = slurm_job_signalled(&job, &run, "TERM", extra);
        // Stopped, not finished: exit 143 after the checkpoint, no requeue.
        let end = wait_slurm_end(&id, Duration::from_secs(60));
        assert_eq!(end, "FAILED", "{name}: job {id}");
        let step = assert_stopped_at_checkpoint(&run, "SIGTERM", &format!("{name}: job {id}"));
        let logs = ok(&["logs", &id]);
        assert!(
            logs.contains("stopped by SIGTERM with a checkpoint"),
            "{name}: {logs}"
        );
        // `dlc launch --resume` continues under Slurm from that step.
        let out = dlc()
            .args(["launch", "--manager", "slurm", job.to_str().unwrap()])
            .args([
                "--workers",
                "2",
                "--wait",
                "--resume",
                run.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d = max_abs_diff(
            &weights(&whole.join("model.safetensors")),
            &weights(&run.join("model.safetensors")),
        );
        assert!(
            d < 1e-6,
            "{name}: stopped at {step} and resumed under Slurm: differs by {d}"
        );
    }
}

#[test]
fn slurm_elastic_restart_keeps_every_node_that_answers() {
    if !slurm_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 100 steps, a checkpoint every 20.
    let text = long_equivalence_job()
        .replace("limit = 60000", "limit = 6000")
        .replace(
            "drop_last = true",
            "drop_last = true\ncheckpoint_every = \"20 steps\"",
        );
    let job = job(dir.path(), "elastic.toml", &text);
    let whole = dir.path().join("whole");
    train_to(&job, &whole, &["--workers", "3"]);
    let run = dir.path().join("run");
    // Rank 2 dies at step 50; its node still answers, so the restart keeps 3 workers.
    let out = dlc()
        .args(["launch", "--manager", "slurm", job.to_str().unwrap()])
        .args([
            "--workers",
            "3",
            "--max-restarts",
            "1",
            "--min-workers",
            "2",
        ])
        .args(["--wait", "--out", run.to_str().unwrap()])
        .env("DLC_FAULT_KILL_AT_STEP", "2:50")
        .output()
        .unwrap();
    let logs = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("slurm-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        out.status.success(),
        "{}\n{logs}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains("restarting with 3 worker(s) on 1 node(s)")
            && !logs.contains("does not answer"),
        "{logs}"
    );
    let restart = metrics_lines(&run, "restart");
    assert_eq!(restart.len(), 1, "{restart:?}");
    assert_eq!(
        (
            &restart[0]["workers_before"],
            &restart[0]["workers_after"],
            &restart[0]["step"]
        ),
        (&3.into(), &3.into(), &40.into()),
        "{restart:?}"
    );
    let d = model_diff(&whole, &run);
    assert!(d < 1e-6, "restarted under Slurm: differs by {d}");
}

#[test]
fn slurm_sigusr1_before_the_time_limit_requeues_and_the_job_continues() {
    if !slurm_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "long.toml", &long_equivalence_job());
    let whole = dir.path().join("whole");
    train_to(&job, &whole, &["--workers", "2"]);
    let run = dir.path().join("run");
    // What `#SBATCH --signal=USR1@120` sends two minutes before the time limit.
    let id = slurm_job_signalled(&job, &run, "USR1", &[]);
    // Slurm holds a requeued job for about two minutes before it may start again.
    let end = wait_slurm_end(&id, Duration::from_secs(400));
    assert_eq!(end, "COMPLETED", "job {id}");
    let stop = metrics_lines(&run, "stop");
    assert_eq!(stop.len(), 1, "{stop:?}");
    assert_eq!(stop[0]["reason"], "SIGUSR1");
    let restart = metrics_lines(&run, "restart");
    assert_eq!(restart.len(), 1, "{restart:?}");
    assert_eq!(restart[0]["step"], stop[0]["step"], "{restart:?}");
    assert_eq!(restart[0]["reason"], "requeued by Slurm", "{restart:?}");
    assert_eq!(restart[0]["steps_lost"], 0, "{restart:?}");
    let d = max_abs_diff(
        &weights(&whole.join("model.safetensors")),
        &weights(&run.join("model.safetensors")),
    );
    assert!(d < 1e-6, "requeued run differs by {d}");
}
