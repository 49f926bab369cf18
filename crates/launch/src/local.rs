//! The local resource manager: a coordinator in this process and one child process
//! per rank, with their log lines prefixed by rank and one progress bar for the job.
//! If any process fails, the others are stopped and the failure is reported with the
//! failing rank's last lines.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dlc_comm::auth::JobKey;
use dlc_comm::Coordinator;
use indicatif::{ProgressBar, ProgressStyle};

use crate::manager::{ManagerError, ResourceManager};
use crate::spec::LaunchSpec;

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What.
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The coordinator could not start.
    #[error(transparent)]
    Comm(#[from] dlc_comm::CommError),
    /// The launcher was told to stop (SIGINT/SIGTERM): every process was asked to
    /// stop (training writes a checkpoint first) and has stopped.
    #[error("stopped by signal {0}; every process has stopped (a job file's ring or one-worker training wrote a checkpoint first: continue it with --resume RUN_DIR)")]
    Interrupted(i32),
    /// Every attempt failed (`--max-restarts`): the last failure and the history.
    #[error("{last}\n{} attempt(s), all failed:\n{}", attempts.len(), attempts.join("\n"))]
    GaveUp {
        /// The last attempt's failure.
        last: Box<LaunchError>,
        /// One line per attempt: how it ended.
        attempts: Vec<String>,
    },
    /// A rank failed; the others were stopped.
    #[error("{role} failed ({status}){}", if tail.is_empty() { String::new() } else { format!(":\n{tail}") })]
    RankFailed {
        /// Rank that failed.
        rank: usize,
        /// `rank N` or `server N (rank M)`.
        role: String,
        /// Exit status.
        status: String,
        /// Its last stderr lines.
        tail: String,
    },
}

/// A job to start on this machine.
#[derive(Debug, Clone)]
pub struct LocalJob {
    /// The `dlc` binary.
    pub exe: PathBuf,
    /// Arguments after `dlc` for every process (`worker JOB …`).
    pub args: Vec<String>,
    /// Number of processes.
    pub world: usize,
    /// Ranks `0..workers` are workers; the rest are parameter servers.
    pub workers: usize,
    /// Job name, for the job id.
    pub name: String,
    /// Seconds a rank may wait on another.
    pub timeout: Duration,
    /// No progress output.
    pub quiet: bool,
    /// Restarts of the whole set of processes after a failure (0: a failure ends the
    /// job). Each attempt exports `DLC_RESTART_COUNT`, and after a failure
    /// `DLC_RESTART_REASON` and `DLC_RESTART_WORKERS_BEFORE`.
    pub max_restarts: usize,
    /// Elastic restarts: a failed worker is not replaced while at least this many
    /// workers remain (None: every restart has all `workers`).
    pub min_workers: Option<usize>,
    /// The processes run a foreign command (`dlc exec`): their stdout is the user's,
    /// not dlcluster's JSON progress events.
    pub foreign: bool,
    /// Directory the processes start in (None: this process's).
    pub workdir: Option<PathBuf>,
}

/// What rank 0 reported at the end.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Rank 0's final summary event, if it sent one.
    pub summary: Option<serde_json::Value>,
}

enum Event {
    Stderr(usize, String),
    Stdout(usize, String),
}

fn role(rank: usize, workers: usize) -> String {
    if rank < workers {
        format!("rank {rank}")
    } else {
        format!("server {} (rank {rank})", rank - workers)
    }
}

/// Starts the coordinator and every process, relays their output, and waits; after a
/// failure, restarts the whole set up to `max_restarts` times (without the failed
/// worker when `min_workers` allows).
pub fn run(job: &LocalJob) -> Result<Outcome, LaunchError> {
    let mut attempts = Vec::new();
    let mut attempt = Attempt {
        number: 0,
        workers: job.workers,
        after: None,
    };
    loop {
        let e = match run_once(job, &attempt) {
            Ok(outcome) => return Ok(outcome),
            Err(e @ LaunchError::Interrupted(_)) => return Err(e),
            Err(e) => e,
        };
        let first_line = e
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .trim_end_matches(':')
            .to_string();
        attempts.push(format!(
            "attempt {} ({} worker(s)): {first_line}",
            attempt.number + 1,
            attempt.workers
        ));
        let workers = match (&e, job.min_workers) {
            (LaunchError::RankFailed { rank, .. }, Some(_)) if *rank < attempt.workers => {
                attempt.workers - 1
            }
            _ => attempt.workers,
        };
        let too_few = job.min_workers.filter(|&m| workers < m);
        if attempt.number == job.max_restarts || too_few.is_some() {
            if job.max_restarts == 0 {
                return Err(e);
            }
            if let Some(m) = too_few {
                attempts.push(format!(
                    "not restarting: {workers} worker(s) would remain, fewer than --min-workers {m}"
                ));
            }
            return Err(LaunchError::GaveUp {
                last: Box::new(e),
                attempts,
            });
        }
        if !job.quiet {
            eprintln!(
                "{first_line}\nrestarting {} (restart {} of {}){}",
                if workers == attempt.workers {
                    "every process".to_string()
                } else {
                    format!("with {workers} of {} workers", attempt.workers)
                },
                attempt.number + 1,
                job.max_restarts,
                if job.foreign {
                    ""
                } else {
                    "; training continues from the newest checkpoint"
                }
            );
        }
        attempt = Attempt {
            number: attempt.number + 1,
            after: Some((first_line, attempt.workers)),
            workers,
        };
    }
}

/// One start of the whole set of processes.
struct Attempt {
    /// 0 for the first start.
    number: usize,
    /// Workers in this attempt.
    workers: usize,
    /// The previous attempt's failure and its workers.
    after: Option<(String, usize)>,
}

fn run_once(job: &LocalJob, attempt: &Attempt) -> Result<Outcome, LaunchError> {
    let token = JobKey::random_token();
    let job_id = format!("{}-{}", job.name, std::process::id());
    // Fewer workers after an elastic restart; the servers stay.
    let world = job.world - (job.workers - attempt.workers);
    let workers = attempt.workers;
    let coord = Coordinator::start(
        "127.0.0.1:0",
        JobKey::new(job_id.clone(), &token),
        world,
        job.timeout,
    )?;
    let (tx, rx) = mpsc::channel::<Event>();
    let mut children: Vec<Child> = Vec::with_capacity(world);
    for rank in 0..world {
        let mut command = Command::new(&job.exe);
        if let Some(dir) = &job.workdir {
            command.current_dir(dir);
        }
        if let Some((reason, before)) = &attempt.after {
            command
                .env("DLC_RESTART_REASON", reason)
                .env("DLC_RESTART_WORKERS_BEFORE", before.to_string());
        }
        // A process group of its own: a terminal's Ctrl-C reaches only the launcher,
        // which asks every process to stop once (a second signal at a worker would
        // end it at once, without its checkpoint).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let spawned = command
            .args(&job.args)
            .env("DLC_RANK", rank.to_string())
            .env("DLC_WORLD_SIZE", world.to_string())
            .env("DLC_COORDINATOR", coord.addr().to_string())
            .env("DLC_JOB_ID", &job_id)
            .env("DLC_JOB_TOKEN", &token)
            .env("DLC_PROGRESS", "json")
            .env("DLC_DIE_WITH_PARENT", "1")
            .env("DLC_RESTART_COUNT", attempt.number.to_string())
            .env("DLC_EXEC_PREFIX", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(source) => {
                stop_all(&mut children);
                return Err(LaunchError::Spawn {
                    what: format!("{} for rank {rank}", job.exe.display()),
                    source,
                });
            }
        };
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(Event::Stdout(rank, line));
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(Event::Stderr(rank, line));
                }
            });
        }
        children.push(child);
    }
    drop(tx);

    let bar = (!job.quiet && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}<{eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    });
    let say = |line: &str| match &bar {
        Some(b) => b.println(line),
        None if !job.quiet => eprintln!("{line}"),
        None => {}
    };
    // A foreign command's stdout is the user's: relayed on stdout, even with -q.
    let user_line = |rank: usize, line: &str| {
        let line = format!("[{}] {line}", role(rank, workers));
        match &bar {
            Some(b) => b.println(line),
            None => println!("{line}"),
        }
    };

    let mut tails: Vec<VecDeque<String>> = vec![VecDeque::new(); world];
    let mut outcome = Outcome::default();
    let mut exited: Vec<Option<std::process::ExitStatus>> = vec![None; world];
    let mut failure: Option<(usize, String, Instant)> = None;
    // SIGINT/SIGTERM stop the job: every process is stopped, none is orphaned.
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hooks: Vec<_> = [libc::SIGINT, libc::SIGTERM]
        .into_iter()
        .filter_map(|sig| {
            signal_hook::flag::register_usize(sig, signalled.clone(), sig as usize).ok()
        })
        .collect();
    let unhook = || {
        for h in &hooks {
            signal_hook::low_level::unregister(*h);
        }
    };
    // The first signal is passed on as SIGTERM (training stops after its step with a
    // checkpoint); a second one, or STOP_GRACE, stops every process at once.
    let mut stopping: Option<(usize, Instant)> = None;
    loop {
        let sig = signalled.swap(0, std::sync::atomic::Ordering::SeqCst);
        let overdue = stopping.is_some_and(|(_, t)| t.elapsed() > STOP_GRACE);
        if (sig != 0 && stopping.is_some()) || overdue {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            stop_all(&mut children);
            unhook();
            let first = stopping.map_or(sig, |(s, _)| s);
            return Err(LaunchError::Interrupted(first as i32));
        }
        if sig != 0 {
            say("stopping: every process was asked to stop (training writes a checkpoint first); signal again to stop at once");
            signal_all(&mut children, libc::SIGTERM);
            stopping = Some((sig, Instant::now()));
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Stderr(rank, line)) => {
                say(&format!("[{}] {line}", role(rank, workers)));
                let t = &mut tails[rank];
                t.push_back(line);
                if t.len() > 8 {
                    t.pop_front();
                }
            }
            Ok(Event::Stdout(rank, line)) if job.foreign => user_line(rank, &line),
            Ok(Event::Stdout(rank, line)) => match serde_json::from_str::<serde_json::Value>(&line)
            {
                Ok(v) if rank == 0 && v["event"] == "progress" => {
                    if let Some(b) = &bar {
                        b.set_prefix(format!("epoch {}/{}", v["epoch"], v["epochs"]));
                        b.set_length(v["steps"].as_u64().unwrap_or(0));
                        b.set_position(v["step"].as_u64().unwrap_or(0));
                        b.set_message(v["msg"].as_str().unwrap_or("").to_string());
                    } else if !job.quiet && !v["msg"].as_str().unwrap_or("").is_empty() {
                        eprintln!(
                            "  epoch {} step {}: {}",
                            v["epoch"],
                            v["step"],
                            v["msg"].as_str().unwrap_or("")
                        );
                    }
                }
                Ok(v) if v["event"] == "log" => say(v["msg"].as_str().unwrap_or("")),
                Ok(v) if rank == 0 && v["event"] == "summary" => outcome.summary = Some(v),
                _ => say(&format!("[{}] {line}", role(rank, workers))),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        for (rank, c) in children.iter_mut().enumerate() {
            if exited[rank].is_none() {
                if let Ok(Some(status)) = c.try_wait() {
                    exited[rank] = Some(status);
                    if !status.success() && failure.is_none() {
                        failure = Some((rank, describe(status), Instant::now()));
                    }
                }
            }
        }
        if let Some((_, _, when)) = &failure {
            // Give the failing rank's last lines a moment to arrive, then stop the rest.
            if when.elapsed() > Duration::from_millis(300) {
                break;
            }
        } else if exited.iter().all(|e| e.is_some()) {
            // Drain what is left of the output.
            while let Ok(ev) = rx.recv_timeout(Duration::from_millis(100)) {
                if let (Event::Stdout(rank, line), true) = (&ev, job.foreign) {
                    user_line(*rank, line);
                } else if let Event::Stdout(0, line) = ev {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["event"] == "summary" {
                            outcome.summary = Some(v);
                        }
                    }
                } else if let Event::Stderr(rank, line) = ev {
                    say(&format!("[{}] {line}", role(rank, workers)));
                }
            }
            break;
        }
    }
    unhook();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some((sig, _)) = stopping {
        stop_all(&mut children);
        return Err(LaunchError::Interrupted(sig as i32));
    }
    if let Some((rank, status, _)) = failure {
        stop_all(&mut children);
        let (rank, status) = first_failure((rank, status), coord.failure(), &exited);
        return Err(LaunchError::RankFailed {
            rank,
            role: role(rank, workers),
            status,
            tail: tails[rank].iter().cloned().collect::<Vec<_>>().join("\n"),
        });
    }
    coord.shutdown(Duration::from_secs(2));
    Ok(outcome)
}

/// Which rank to blame. The coordinator knows which rank died first (its connection
/// dropped); the others may have exited on hearing of it and been reaped before it in
/// the same sweep. Name the first to die, with its own exit status when it has one.
fn first_failure(
    reaped: (usize, String),
    coordinator: Option<(usize, String)>,
    exited: &[Option<std::process::ExitStatus>],
) -> (usize, String) {
    match coordinator {
        Some((r, _)) if r != reaped.0 => match exited.get(r).copied().flatten() {
            Some(s) if !s.success() => (r, describe(s)),
            _ => reaped,
        },
        _ => reaped,
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// How long processes asked to stop by a signal may take (a checkpoint) before they
/// are stopped at once.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Sends `sig` to every process still running.
fn signal_all(children: &mut [Child], sig: i32) {
    for c in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }
}

/// Stops every process: SIGTERM (an agent then stops its command's process group),
/// then SIGCONT (a stopped process, e.g. one the coordinator found frozen, handles
/// its SIGTERM only once continued), SIGKILL for whatever still runs after a grace
/// period.
fn stop_all(children: &mut [Child]) {
    signal_all(children, libc::SIGTERM);
    signal_all(children, libc::SIGCONT);
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until
        && children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in children.iter_mut() {
        let _ = c.kill();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

/// The local resource manager behind the [`ResourceManager`] seam: `submit` runs the
/// job in the foreground and returns when it ends.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// No progress output.
    pub quiet: bool,
}

impl Local {
    fn job(&self, spec: &LaunchSpec) -> LocalJob {
        let args = spec.process_args(&spec.job_file.display().to_string());
        LocalJob {
            exe: spec.exe.clone(),
            args,
            world: spec.world(),
            workers: spec.workers,
            name: spec.name.clone(),
            timeout: Duration::from_secs(spec.timeout_s),
            quiet: self.quiet,
            max_restarts: spec.max_restarts,
            min_workers: spec.min_workers,
            foreign: spec.command.is_some(),
            workdir: Some(spec.workdir.clone()),
        }
    }
}

impl ResourceManager for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn foreground(&self) -> bool {
        true
    }

    fn assigns_threads(&self) -> bool {
        true
    }

    /// Restarts and shrinking are the launcher's own; nodes other than this one are not.
    fn check(&self, spec: &LaunchSpec) -> Result<(), ManagerError> {
        if spec.nodes > 1 {
            return Err(ManagerError::Invalid(format!(
                "the local manager runs on this machine only; use --manager slurm, \
                 kubernetes, ray or spark for {} nodes",
                spec.nodes
            )));
        }
        Ok(())
    }

    fn render(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        let job = self.job(spec);
        let mut s = format!(
            "# {} process(es) on this machine; a coordinator in the launcher; DLC_JOB_TOKEN fresh per job\n",
            job.world
        );
        let cmd = std::iter::once(job.exe.display().to_string())
            .chain(job.args.iter().cloned())
            .map(|a| crate::spec::shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        for rank in 0..job.world {
            s.push_str(&format!(
                "DLC_RANK={rank} DLC_WORLD_SIZE={} DLC_COORDINATOR=127.0.0.1:<port> DLC_JOB_ID={}-<pid> {cmd}\n",
                job.world,
                crate::spec::shell_quote(&job.name)
            ));
        }
        Ok(s)
    }

    fn submit(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        let job = self.job(spec);
        match run(&job) {
            Ok(_) => Ok(format!("{}-{}", job.name, std::process::id())),
            Err(e) => Err(ManagerError::Invalid(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn the_first_rank_to_die_is_blamed_even_when_reaped_after_the_others() {
        // Rank 1 was killed (signal 9); rank 0 exited with 1 on hearing of it and was
        // reaped first in the same sweep.
        let exited = [
            Some(std::process::ExitStatus::from_raw(1 << 8)),
            Some(std::process::ExitStatus::from_raw(9)),
            None,
        ];
        let reaped = (0, describe(exited[0].unwrap()));
        assert_eq!(reaped.1, "exit code 1");
        let coord = Some((1, "its process exited".to_string()));
        assert_eq!(
            first_failure(reaped.clone(), coord, &exited),
            (1, "killed by signal 9".to_string())
        );
        // Without the coordinator's word, or when that rank is still running, the
        // reaped rank stays blamed.
        assert_eq!(first_failure(reaped.clone(), None, &exited), reaped);
        let coord = Some((2, "lost".to_string()));
        assert_eq!(first_failure(reaped.clone(), coord, &exited), reaped);
    }
}
