//! `dlc launch --manager ray` against a real Ray head started by the test (`ray start
//! --head` from the Python of `DLC_PYTHON`, which needs `ray`; the driver comes from
//! `python/` in this repository). Skips without Ray, unless `DLC_REQUIRE_LAUNCHERS=1`
//! (CI), where it fails.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A Ray head on this machine for one test; `ray stop` when dropped.
struct RayHead {
    ray: PathBuf,
    address: String,
}

impl RayHead {
    fn start() -> Option<RayHead> {
        if !have(&python(), &["-c", "import ray"], "Ray (pip install ray)") {
            return None;
        }
        // The `ray` command next to the interpreter (a venv's), else on PATH.
        let next = Path::new(&python()).with_file_name("ray");
        let ray = if next.exists() {
            next
        } else {
            PathBuf::from("ray")
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new(&ray)
            .args(["start", "--head", "--port", &port.to_string()])
            .args(["--node-ip-address", "127.0.0.1", "--num-cpus", "4"])
            .args(["--object-store-memory", "100000000"])
            .args(["--include-dashboard=false", "--disable-usage-stats"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ray start --head failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(RayHead {
            ray,
            address: format!("127.0.0.1:{port}"),
        })
    }

    /// `dlc launch --manager ray --address … ARGS`, with this repository's driver.
    fn launch(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        launch_on("ray", &self.address, args, env)
    }
}

impl Drop for RayHead {
    fn drop(&mut self) {
        let _ = Command::new(&self.ray).args(["stop", "--force"]).output();
    }
}

/// The pid of the Ray actor process whose child is `dlc worker` rank `rank` of the
/// run in `run` (found by its environment and command line in /proc).
fn actor_of_rank(rank: usize, run: &Path) -> Option<u32> {
    let want_rank = format!("DLC_RANK={rank}");
    let run = run.to_str()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !(cmdline.contains("\0worker\0") && cmdline.contains(run)) {
            continue;
        }
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if !environ
            .split(|&b| b == 0)
            .any(|v| v == want_rank.as_bytes())
        {
            continue;
        }
        // Field 4 of /proc/PID/stat (after the parenthesised name) is the parent.
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        return after.split_whitespace().nth(1)?.parse().ok();
    }
    None
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ray_trains_like_one_worker_names_a_killed_rank_and_restarts_from_a_checkpoint() {
    let Some(head) = RayHead::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Two workers as two actors of a placement group; a killed rank; a restart of
    // every process from the checkpoint.
    let text = engine_trains_names_and_restarts("ray", &head.address, dir.path());

    // Rank 1's Ray actor killed mid-run (as when Ray loses it): the job fails, naming
    // rank 1, and rank 0 stops.
    let long = job(
        dir.path(),
        "long.toml",
        &text.replace("limit = 1800", "limit = 60000"),
    );
    let lost = dir.path().join("lost");
    let mut c = dlc();
    c.env("PYTHONPATH", repo().join("python"))
        .args(["launch", "--manager", "ray", "--address", &head.address])
        .args([long.to_str().unwrap(), "--workers", "2", "--out"])
        .arg(&lost)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    wait_for_step_lines(&lost, 2, Duration::from_secs(60));
    let actor = actor_of_rank(1, &lost).expect("rank 1's process and its actor");
    let killed = Command::new("kill")
        .args(["-9", &actor.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("rank 1 failed (its Ray actor died (killed, or its node was lost))"),
        "{err}"
    );
    assert!(
        metrics_lines(&lost, "step").len() < 100,
        "the job ran on after its actor died"
    );

    // More than the cluster holds: a clear error within the join timeout, not a hang.
    let short = job(
        dir.path(),
        "short.toml",
        &format!("{text}[distributed]\njoin_timeout_s = 5\n"),
    );
    let started = Instant::now();
    let o = head.launch(
        &[
            short.to_str().unwrap(),
            "--workers",
            "3",
            "--cpus-per-worker",
            "2",
        ],
        &[],
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("could not reserve 3 bundle(s) of {'CPU': 2.0}") && err.contains("CPU"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(40), "{err}");

    // Your own PyTorch script, two processes as Ray actors (DDP over gloo).
    if have(&python(), &["-c", "import torch"], "PyTorch (DLC_PYTHON)") {
        torch_ddp_on("ray", &head.address, &dir.path().join("torch"));
    }
}
