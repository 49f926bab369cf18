//! Fault injection against running jobs. Each test starts a real 3-worker job,
//! injects one fault while it trains, and checks that the job ends the documented
//! way — success, or a clear error naming the right rank within its bound — with no
//! process left behind. Each prints one row of the table in DESIGN.md
//! ("fault | outcome | detection"); run with `--nocapture` to see them.
//!
//! The tests run one at a time (they share two cores and measure time).

mod common;
use common::*;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dlc_comm::rendezvous::SILENCE;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A long MLP job: it runs until the fault ends it.
fn long_job(distributed: &str) -> String {
    format!(
        "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\n[train]\nepochs = 50\n\
         batch_size = 64\nlog_every = 10\n[distributed]\n{distributed}\n"
    )
}

/// A job started with `dlc train --workers 3`, running.
struct Running {
    _dir: tempfile::TempDir,
    launcher: Child,
    workers: Vec<u32>,
}

impl Running {
    /// Starts `text` on 3 local workers and waits until it trains.
    fn start(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path(), "job.toml", text);
        let out = dir.path().join("o");
        let launcher = dlc()
            .args(["train", job.to_str().unwrap(), "--workers", "3"])
            .args(["--out", out.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_step_lines(&out, 1, Duration::from_secs(90));
        let workers = children(launcher.id());
        assert_eq!(workers.len(), 3, "one process per worker: {workers:?}");
        Self {
            _dir: dir,
            launcher,
            workers,
        }
    }

    /// The process of `rank`.
    fn rank(&self, rank: usize) -> u32 {
        *self
            .workers
            .iter()
            .find(|&&p| rank_of(p) == Some(rank))
            .unwrap_or_else(|| panic!("no process has rank {rank}"))
    }

    /// Waits (at most `limit`) for the launcher to exit; returns its status, how long
    /// it took from `since`, and its stderr. Asserts that no worker outlived it.
    fn end(mut self, since: Instant, limit: Duration) -> (ExitStatus, Duration, String) {
        let status = loop {
            if let Some(s) = self.launcher.try_wait().unwrap() {
                break s;
            }
            if since.elapsed() > limit {
                let _ = self.launcher.kill();
                panic!("the job did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = since.elapsed();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut self.launcher.stderr.take().unwrap(), &mut err).unwrap();
        for p in &self.workers {
            assert!(!alive(*p), "worker process {p} outlived the job");
        }
        (status, took, err)
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn env_of(pid: u32, var: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(&format!("{var}=")).map(str::to_string))
}

fn rank_of(pid: u32) -> Option<usize> {
    env_of(pid, "DLC_RANK")?.parse().ok()
}

/// Whether `pid` is still a process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// TCP sockets of `pid`: (local, remote) for established ones, local for listeners.
fn sockets(pid: u32, listening: bool) -> Vec<(String, String)> {
    let state = if listening { "-l" } else { "state established" };
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("ss -tnpH {state}")])
        .output()
        .expect("`ss` (iproute2) runs");
    assert!(out.status.success(), "ss failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // [state] recv-q send-q local remote users
            let i = f.iter().position(|x| x.contains(':'))?;
            Some((f[i].to_string(), f.get(i + 1)?.to_string()))
        })
        .collect()
}

fn row(fault: &str, outcome: &str, took: Duration) {
    eprintln!("| {fault} | {outcome} | {:.1} s |", took.as_secs_f64());
}

/// The `[distributed]` settings of the fault tests: gradients summed after backward,
/// and in 50 KiB buckets by a communication thread while backward runs.
const SYNCS: [(&str, &str); 2] = [
    ("", "timeout_s = 20"),
    (" (buckets)", "timeout_s = 20\nbucket_mib = 0.05"),
];

#[test]
fn a_killed_worker_fails_the_job_fast_naming_it() {
    let _one = serial();
    for (label, distributed) in SYNCS {
        let job = Running::start(&long_job(distributed));
        let hit = Instant::now();
        signal("-9", job.rank(1));
        let (status, took, err) = job.end(hit, Duration::from_secs(30));
        row(
            &format!("SIGKILL of rank 1{label}"),
            "error naming rank 1",
            took,
        );
        assert!(!status.success());
        assert!(took < Duration::from_secs(5), "{label} took {took:?}");
        assert!(
            err.contains("rank 1 failed") && err.contains("signal 9"),
            "{label}: {err}"
        );
    }
}

#[test]
fn a_stopped_worker_fails_the_job_within_the_silence_bound_naming_it() {
    // SIGSTOP closes nothing: only the missing heartbeats tell. The collective
    // deadline (20 s) is longer than the bound checked here.
    let _one = serial();
    for (label, distributed) in SYNCS {
        let job = Running::start(&long_job(distributed));
        let hit = Instant::now();
        signal("-STOP", job.rank(1));
        let (status, took, err) = job.end(hit, Duration::from_secs(40));
        row(
            &format!("SIGSTOP of rank 1{label}"),
            "error naming rank 1",
            took,
        );
        assert!(!status.success());
        assert!(
            took < SILENCE + Duration::from_secs(4),
            "{label} took {took:?}"
        );
        assert!(
            err.contains("rank 1 failed") && err.contains("heartbeat"),
            "{label}: {err}"
        );
    }
}

#[test]
fn a_dropped_connection_fails_the_job_at_once_naming_both_ends() {
    // The link between ranks 1 and 2 is destroyed by the kernel (`ss -K`), as a
    // firewall or a NIC reset would: both ends see it and the job stops within a
    // second, naming the link.
    let _one = serial();
    let job = Running::start(&long_job("timeout_s = 20"));
    let (one, two) = (job.rank(1), job.rank(2));
    let twos: Vec<String> = sockets(two, false).into_iter().map(|s| s.0).collect();
    let (local, remote) = sockets(one, false)
        .into_iter()
        .find(|(_, remote)| twos.contains(remote))
        .expect("a link between ranks 1 and 2");
    let port = |a: &str| a.rsplit(':').next().unwrap().to_string();
    let hit = Instant::now();
    let killed = std::process::Command::new("ss")
        .args(["-K", "-tn", "sport", "=", &format!(":{}", port(&local))])
        .args(["dport", "=", &format!(":{}", port(&remote))])
        .output()
        .unwrap();
    assert!(
        killed.status.success(),
        "ss -K (needs root): {}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let (status, took, err) = job.end(hit, Duration::from_secs(30));
    row(
        "TCP link 1↔2 destroyed",
        "error naming the link (rank 1 and rank 2)",
        took,
    );
    assert!(!status.success());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let first = err
        .lines()
        .find(|l| l.contains("failed"))
        .unwrap_or_default();
    assert!(
        first.contains("rank 1") && first.contains("rank 2") && first.contains("lost connection"),
        "{err}"
    );
}

#[test]
fn strangers_dribbling_bytes_neither_stall_nor_delay_the_job() {
    // While a short job trains, strangers connect to the coordinator and to rank 1's
    // peer port and send a byte every 200 ms until the job is over. The job must
    // finish normally and exit without waiting for them.
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "short.toml", &quick_mlp(3000, 2, 60));
    let baseline = Instant::now();
    train_to(&job, &dir.path().join("quiet"), &["--workers", "3"]);
    let quiet = baseline.elapsed();

    let out = dir.path().join("o");
    let mut launcher = dlc()
        .args(["train", job.to_str().unwrap(), "--workers", "3", "-q"])
        .args(["--out", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    wait_for_step_lines(&out, 1, Duration::from_secs(90));
    let rank1 = *children(launcher.id())
        .iter()
        .find(|&&p| rank_of(p) == Some(1))
        .unwrap();
    let mut targets: Vec<String> = sockets(launcher.id(), true)
        .into_iter()
        .chain(sockets(rank1, true))
        .map(|s| s.0)
        .collect();
    targets.sort();
    targets.dedup();
    assert!(
        targets.len() >= 2,
        "coordinator and peer ports: {targets:?}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let dribblers: Vec<_> = targets
        .iter()
        .map(|t| {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(&t) else {
                    return;
                };
                while !stop.load(Ordering::SeqCst) && s.write_all(&[0x42]).is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    let status = loop {
        if let Some(s) = launcher.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < quiet * 3 + Duration::from_secs(30),
            "the job stalled"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for d in dribblers {
        d.join().unwrap();
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut launcher.stderr.take().unwrap(), &mut err).unwrap();
    row(
        "strangers dribbling bytes to the coordinator and a peer port",
        &format!(
            "success ({:.1} s; {:.1} s without strangers)",
            took.as_secs_f64(),
            quiet.as_secs_f64()
        ),
        Duration::ZERO,
    );
    assert!(status.success(), "{err}");
    assert!(
        took < quiet * 2 + Duration::from_secs(10),
        "{took:?} with strangers, {quiet:?} without"
    );
}

#[test]
fn a_slow_epoch_end_on_rank_0_is_waited_for() {
    // Rank 0 evaluates LeNet on 10,000 test images at each epoch's end (≈ 6 s here),
    // several times the 2 s collective deadline; the other ranks wait for it in their next
    // collective because it announced the work, and the job succeeds.
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "cnn.toml",
        "[model]\npreset = \"lenet\"\n[data]\ndataset = \"fashion-mnist\"\nlimit = 360\n\
         [train]\nepochs = 2\nbatch_size = 60\nlog_every = 2\n\
         [distributed]\nop_timeout_s = 2\njoin_timeout_s = 60\n",
    );
    let out = dir.path().join("o");
    let started = Instant::now();
    let s = train_to(&job, &out, &["--workers", "3"]);
    let took = started.elapsed();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let epochs = metrics
        .lines()
        .filter(|l| l.contains("\"test_loss\""))
        .count();
    row(
        "rank 0's epoch end (evaluation) outlasting the 2 s collective deadline",
        &format!("success ({:.0} s)", took.as_secs_f64()),
        Duration::ZERO,
    );
    assert_eq!(epochs, 2, "{metrics}");
    assert!(s["test_accuracy"].as_f64().unwrap() > 0.3, "{s}");
}

#[test]
fn a_stopped_rank_0_that_runs_the_coordinator_is_named_by_the_others() {
    // Under torchrun, Slurm or MPI, rank 0's process runs the coordinator: stopping
    // it silences the coordinator too, so no one is left to tell the others. They
    // notice the silence themselves and name rank 0.
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "long.toml", &long_job("timeout_s = 30"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out: PathBuf = dir.path().join("o");
    let mut ranks: Vec<Child> = (0..3)
        .map(|rank| {
            dlc()
                .args(["worker", job.to_str().unwrap(), "--threads", "1"])
                .args(["--out", out.to_str().unwrap()])
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "3")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("TORCHELASTIC_RUN_ID", "faults")
                .env("DLC_JOB_TOKEN", "faults-token")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_for_step_lines(&out, 1, Duration::from_secs(90));
    let hit = Instant::now();
    signal("-STOP", ranks[0].id());
    let bound = SILENCE + Duration::from_secs(4);
    for (r, child) in ranks.iter_mut().enumerate().skip(1) {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if hit.elapsed() > bound + Duration::from_secs(30) {
                let _ = child.kill();
                panic!("rank {r} did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = hit.elapsed();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        row(
            &format!("SIGSTOP of rank 0, which runs the coordinator (seen by rank {r})"),
            "error naming rank 0",
            took,
        );
        assert!(!status.success());
        assert!(took < bound, "rank {r} took {took:?}");
        assert!(
            err.contains("rank 0") && err.contains("coordinator"),
            "rank {r}: {err}"
        );
    }
    signal("-KILL", ranks[0].id());
    let _ = ranks[0].wait();
}
