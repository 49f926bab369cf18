//! The per-process agent of a foreign job (`dlc exec -- COMMAND`): dlcluster as the
//! launcher of a user's own PyTorch, TensorFlow/Keras or JAX script.
//!
//! Every scheduled task runs one agent. The agent
//!
//! 1. joins the job's rendezvous (rank 0 hosts it under a foreign launcher; the local
//!    launcher hosts it itself) and publishes a port it reserved for the framework;
//! 2. waits until *every* task has joined (gang start; the coordinator names the
//!    ranks that never came when the join deadline passes);
//! 3. computes the framework's environment from the peer table ([`framework_env`]:
//!    torchrun's variables, `TF_CONFIG`, Keras 3 / JAX variables);
//! 4. starts the command in a process group of its own that dies with the agent,
//!    relays its output (prefixed `[rank r]` unless the launcher prefixes), forwards
//!    SIGINT/SIGTERM, and watches the coordinator;
//! 5. reports the command's end: a failure is broadcast to every rank at once (their
//!    agents stop their commands within seconds and name this rank); a success leaves.
//!
//! With the parameter-server strategy the TensorFlow chief (rank 0) decides the end
//! of the job: when it finishes, the `ps` and `worker` tasks (which serve forever) are
//! stopped and the job succeeds.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlc_comm::rendezvous::{CoordClient, Notice};
use dlc_comm::CommError;
use dlc_job::Strategy;
use serde_json::json;

use crate::env::{Identity, Source};

pub use dlc_job::Framework;

/// Picks the framework of `argv` from the imports of the first `.py` file in it (or
/// of `python -m module` is not attempted); `Auto` when none is recognised.
pub fn detect_framework(argv: &[String]) -> Framework {
    let Some(script) = argv.iter().find(|a| a.ends_with(".py")) else {
        return Framework::Auto;
    };
    let Ok(text) = std::fs::read_to_string(script) else {
        return Framework::Auto;
    };
    let imports = |module: &str| {
        text.lines().any(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix("import ")
                .or_else(|| l.strip_prefix("from "));
            rest.is_some_and(|r| {
                r.split([',', ' ', '.'])
                    .next()
                    .is_some_and(|m| m.trim() == module)
            }) || (l.starts_with("import ") && l.split([',', ' ']).any(|m| m.trim() == module))
        })
    };
    if imports("tensorflow") || imports("tf_keras") {
        Framework::Tensorflow
    } else if imports("jax") || imports("keras") {
        // Keras 3 without TensorFlow: the multi-process route is its JAX backend.
        Framework::Jax
    } else if imports("torch") {
        Framework::Torch
    } else {
        Framework::Auto
    }
}

/// A process's role in a TensorFlow parameter-server job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs the user's coordinator code (rank 0); its end is the job's end.
    Chief,
    /// Parameter server `i`.
    Ps(usize),
    /// Worker `i` (with the ring strategy every process is a worker).
    Worker(usize),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Chief => f.write_str("chief"),
            Role::Ps(i) => write!(f, "ps {i}"),
            Role::Worker(i) => write!(f, "worker {i}"),
        }
    }
}

/// The role of `rank`: with `ps`, rank 0 is the chief, ranks `1..=servers` the
/// parameter servers and the rest workers; with `ring` every rank is a worker.
pub fn role(strategy: Strategy, servers: usize, rank: usize) -> Role {
    match strategy {
        Strategy::Ring => Role::Worker(rank),
        Strategy::Ps if rank == 0 => Role::Chief,
        Strategy::Ps if rank <= servers => Role::Ps(rank - 1),
        Strategy::Ps => Role::Worker(rank - 1 - servers),
    }
}

/// Everything [`framework_env`] needs to know about the job and this process.
#[derive(Debug, Clone)]
pub struct Layout {
    /// This process.
    pub rank: usize,
    /// Every process's published `host:port` (the port it reserved), by rank.
    pub peers: Vec<String>,
    /// Rank among the processes on this host.
    pub local_rank: usize,
    /// Job id.
    pub job_id: String,
    /// Run directory.
    pub run_dir: String,
    /// Network graph.
    pub strategy: Strategy,
    /// Parameter servers (ps).
    pub servers: usize,
    /// Restart count of the whole job (0 on the first attempt).
    pub restart: usize,
    /// CPU threads for this process.
    pub threads: usize,
    /// GPUs per process, and the devices this host shows (`CUDA_VISIBLE_DEVICES`),
    /// when dlcluster (not the scheduler) assigns them.
    pub gpus: Option<(usize, Option<String>)>,
}

/// Whether `framework` has a network graph for `strategy`: `ps` is TensorFlow's
/// ParameterServerStrategy (or whatever a `none` command makes of the roles).
pub fn check_strategy(framework: Framework, strategy: Strategy) -> Result<(), AgentError> {
    if strategy == Strategy::Ps && !matches!(framework, Framework::Tensorflow | Framework::None) {
        return Err(AgentError::Invalid(format!(
            "--strategy ps is TensorFlow's ParameterServerStrategy; {framework} has none \
             (use --strategy ring, or --framework tensorflow)"
        )));
    }
    Ok(())
}

/// How many of `peers` (published `host:port`, by rank) share `rank`'s host.
fn local_world(peers: &[String], rank: usize) -> usize {
    let me = host_of(&peers[rank]);
    peers.iter().filter(|p| host_of(p) == me).count()
}

fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or("", |(_, p)| p)
}

/// The environment the command of `layout.rank` is given for `framework`
/// (resolved: `Auto` exports the variables of every framework).
pub fn framework_env(
    framework: Framework,
    l: &Layout,
) -> Result<Vec<(String, String)>, AgentError> {
    let world = l.peers.len();
    let me = host_of(&l.peers[l.rank]);
    let local_world = local_world(&l.peers, l.rank);
    // Hosts in order of their first rank: a host's index is its "group rank".
    let mut hosts: Vec<&str> = Vec::new();
    for p in &l.peers {
        if !hosts.contains(&host_of(p)) {
            hosts.push(host_of(p));
        }
    }
    let group_rank = hosts.iter().position(|h| *h == me).unwrap_or(0);
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| env.push((k.to_string(), v));
    set("DLC_RANK", l.rank.to_string());
    set("DLC_WORLD_SIZE", world.to_string());
    set("DLC_LOCAL_RANK", l.local_rank.to_string());
    set("DLC_LOCAL_WORLD_SIZE", local_world.to_string());
    set("DLC_JOB_ID", l.job_id.clone());
    set("DLC_RUN_DIR", l.run_dir.clone());
    set("DLC_RESTART_COUNT", l.restart.to_string());
    set(
        "DLC_STRATEGY",
        match l.strategy {
            Strategy::Ring => "ring",
            Strategy::Ps => "ps",
        }
        .into(),
    );
    let role = role(l.strategy, l.servers, l.rank);
    set("DLC_ROLE", role.to_string().replace(' ', ":"));
    let t = l.threads.max(1).to_string();
    for k in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"] {
        set(k, t.clone());
    }
    if let Some((per, visible)) = &l.gpus {
        if *per > 0 {
            let all: Vec<String> = match visible {
                Some(v) => v.split(',').map(|s| s.trim().to_string()).collect(),
                None => (0..(l.local_rank + 1) * per)
                    .map(|i| i.to_string())
                    .collect(),
            };
            let mine: Vec<String> = all
                .iter()
                .skip(l.local_rank * per)
                .take(*per)
                .cloned()
                .collect();
            if mine.len() < *per {
                return Err(AgentError::Invalid(format!(
                    "local rank {} needs {per} GPU(s) but this host shows only {} ({})",
                    l.local_rank,
                    all.len(),
                    visible.as_deref().unwrap_or("CUDA_VISIBLE_DEVICES unset")
                )));
            }
            set("CUDA_VISIBLE_DEVICES", mine.join(","));
        }
    }
    let torch = matches!(framework, Framework::Torch | Framework::Auto);
    let tf = matches!(framework, Framework::Tensorflow | Framework::Auto);
    let jax = matches!(framework, Framework::Jax | Framework::Auto);
    check_strategy(framework, l.strategy)?;
    let master = &l.peers[0];
    if torch {
        set("RANK", l.rank.to_string());
        set("WORLD_SIZE", world.to_string());
        set("LOCAL_RANK", l.local_rank.to_string());
        set("LOCAL_WORLD_SIZE", local_world.to_string());
        set("GROUP_RANK", group_rank.to_string());
        set("GROUP_WORLD_SIZE", hosts.len().to_string());
        set("ROLE_RANK", l.rank.to_string());
        set("ROLE_WORLD_SIZE", world.to_string());
        set("MASTER_ADDR", host_of(master).to_string());
        set("MASTER_PORT", port_of(master).to_string());
        set("TORCHELASTIC_RESTART_COUNT", l.restart.to_string());
        set("TORCHELASTIC_RUN_ID", l.job_id.clone());
    }
    if tf {
        let addr = |r: usize| {
            let p = &l.peers[r];
            // TF parses host:port; bracket IPv6 hosts.
            let h = host_of(p);
            if h.contains(':') {
                format!("[{h}]:{}", port_of(p))
            } else {
                p.clone()
            }
        };
        let (cluster, task) = match l.strategy {
            Strategy::Ring => (
                json!({ "worker": (0..world).map(addr).collect::<Vec<_>>() }),
                json!({"type": "worker", "index": l.rank}),
            ),
            Strategy::Ps => {
                if world < l.servers + 2 {
                    return Err(AgentError::Invalid(format!(
                        "a parameter-server job needs a chief, {} ps task(s) and at least one worker: {} process(es) is too few",
                        l.servers, world
                    )));
                }
                let cluster = json!({
                    "chief": [addr(0)],
                    "ps": (1..=l.servers).map(addr).collect::<Vec<_>>(),
                    "worker": (l.servers + 1..world).map(addr).collect::<Vec<_>>(),
                });
                let task = match role {
                    Role::Chief => json!({"type": "chief", "index": 0}),
                    Role::Ps(i) => json!({"type": "ps", "index": i}),
                    Role::Worker(i) => json!({"type": "worker", "index": i}),
                };
                (cluster, task)
            }
        };
        set(
            "TF_CONFIG",
            json!({"cluster": cluster, "task": task}).to_string(),
        );
        // Keras 3 supports neither multi-worker strategy: tf-keras (Keras 2) does.
        set("TF_USE_LEGACY_KERAS", "1".into());
        set("TF_NUM_INTRAOP_THREADS", t.clone());
    }
    if jax {
        let coordinator = if host_of(master).contains(':') {
            format!("[{}]:{}", host_of(master), port_of(master))
        } else {
            master.clone()
        };
        set("KERAS_DISTRIBUTION_JOB_ADDRESSES", coordinator.clone());
        set("KERAS_DISTRIBUTION_NUM_PROCESSES", world.to_string());
        set("KERAS_DISTRIBUTION_PROCESS_ID", l.rank.to_string());
        set("JAX_COORDINATOR_ADDRESS", coordinator);
        set("JAX_NUM_PROCESSES", world.to_string());
        set("JAX_PROCESS_ID", l.rank.to_string());
    }
    Ok(env)
}

/// What a foreign process runs and how.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Its framework (`Auto`: detected from the command).
    pub framework: Framework,
    /// Network graph: ring (all-reduce; every process a worker) or ps.
    pub strategy: Strategy,
    /// Parameter servers with `ps`.
    pub servers: usize,
    /// How long to wait for every process to join (gang start).
    pub join_timeout: Duration,
    /// Run directory (exported as `DLC_RUN_DIR`).
    pub run_dir: String,
    /// CPU threads for the command [default: the launcher's CPUs per task, else
    /// cores ÷ processes on this host].
    pub threads: Option<usize>,
    /// GPUs per process (assigned by local rank when dlcluster's launcher started us).
    pub gpus: usize,
    /// Prefix every output line with `[rank r]` (off when the launcher prefixes).
    pub prefix: bool,
    /// Extra variables for the command (a job file's `[command] env`).
    pub env: Vec<(String, String)>,
}

/// Why a foreign process did not finish successfully.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Rendezvous or coordinator trouble (including the gang-start timeout).
    #[error("rank {rank}: {source}")]
    Comm {
        /// This rank.
        rank: usize,
        /// What went wrong.
        source: CommError,
    },
    /// The command could not be started.
    #[error("rank {rank}: cannot start `{command}`: {source}")]
    Spawn {
        /// This rank.
        rank: usize,
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command failed.
    #[error("rank {rank}: `{command}` {status}")]
    Failed {
        /// This rank.
        rank: usize,
        /// The command.
        command: String,
        /// `exited with code 3`, `was killed by signal 9 (SIGKILL)`.
        status: String,
        /// The agent's exit code (the command's, or 128 + its signal).
        code: i32,
    },
    /// Another rank failed, so this rank's command was stopped.
    #[error("rank {rank} failed ({reason}); this rank ({me}) stopped its command")]
    Aborted {
        /// The rank that failed first.
        rank: usize,
        /// How it failed.
        reason: String,
        /// This rank.
        me: usize,
    },
    /// The coordinator went away.
    #[error("rank {rank}: lost the coordinator ({why}); stopped the command")]
    Lost {
        /// This rank.
        rank: usize,
        /// What happened.
        why: String,
    },
    /// Nonsensical request.
    #[error("{0}")]
    Invalid(String),
}

impl AgentError {
    /// The exit code `dlc exec` ends with: the command's own, 128 + its signal, or 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Failed { code, .. } => *code,
            _ => 1,
        }
    }
}

/// `exited with code 3` / `was killed by signal 9 (SIGKILL)`, and the matching exit code.
pub fn describe_status(status: ExitStatus) -> (String, i32) {
    match (status.code(), status.signal()) {
        (Some(c), _) => (format!("exited with code {c}"), c),
        (None, Some(s)) => (
            format!("was killed by signal {s} ({})", signal_name(s)),
            128 + s,
        ),
        _ => (status.to_string(), 1),
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// How long a stopped command gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the output of an ended command may take to be relayed.
const RELAY_GRACE: Duration = Duration::from_secs(2);

/// The running command: its own process group, killed when dropped.
struct Running {
    child: Child,
    pgid: i32,
    done: Option<ExitStatus>,
}

impl Running {
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a negative pid signals the child's process group.
        unsafe {
            libc::kill(-self.pgid, sig);
        }
    }

    fn poll(&mut self) -> Option<ExitStatus> {
        if self.done.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.done = Some(s);
            }
        }
        self.done
    }

    /// SIGTERM to the group, SIGKILL after the grace period; returns the exit status.
    fn stop(&mut self) -> Option<ExitStatus> {
        if self.poll().is_none() {
            self.signal(libc::SIGTERM);
            let until = Instant::now() + STOP_GRACE;
            while self.poll().is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever is left of the group (children of the command) goes too.
        self.signal(libc::SIGKILL);
        if self.done.is_none() {
            self.done = self.child.wait().ok();
        }
        self.done
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        if self.done.is_none() {
            let _ = self.child.wait();
        }
    }
}

/// Copies `from` line by line to our stdout or stderr, with `prefix`; the thread ends
/// at end of file.
fn relay(
    from: impl Read + Send + 'static,
    to_stderr: bool,
    prefix: Option<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let mut out: Vec<u8> = Vec::with_capacity(line.len() + 12);
            if let Some(p) = &prefix {
                out.extend_from_slice(p.as_bytes());
            }
            out.extend_from_slice(&line);
            if !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&out)
            } else {
                let mut o = std::io::stdout().lock();
                o.write_all(&out).and_then(|()| o.flush())
            };
        }
    })
}

/// Runs one process of a foreign job: rendezvous, gang start, the command, and its
/// end reported to every rank. Returns when the command (or the job) has ended.
pub fn run(id: &Identity, spec: &ExecSpec) -> Result<(), AgentError> {
    let rank = id.rank;
    let comm = |source: CommError| AgentError::Comm { rank, source };
    if spec.argv.is_empty() {
        return Err(AgentError::Invalid(
            "no command to run: give it after `--`, e.g. `dlc exec -- python train.py`".into(),
        ));
    }
    let framework = match spec.framework {
        Framework::Auto => detect_framework(&spec.argv),
        f => f,
    };
    // Under a foreign launcher rank 0 hosts the rendezvous (gang start included).
    let coordinator = id.host_coordinator(spec.join_timeout).map_err(comm)?;
    let key = id.key();
    let mut client =
        CoordClient::connect(&id.coordinator, &key, rank, spec.join_timeout).map_err(comm)?;
    let (reserved, addr) = client.reserve_port(&id.coordinator).map_err(comm)?;
    let peers = client
        .join(&key, id.world, &addr.to_string(), spec.join_timeout)
        .map_err(comm)?;
    let watch = client.watch().map_err(comm)?;

    let threads = spec.threads.or(id.cpus).unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / local_world(&peers, rank)).max(1)
    });
    let restart = std::env::var("DLC_RESTART_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let layout = Layout {
        rank,
        peers,
        local_rank: id.local_rank,
        job_id: id.job_id.clone(),
        run_dir: spec.run_dir.clone(),
        strategy: spec.strategy,
        servers: spec.servers,
        restart,
        threads,
        gpus: (id.source == Source::Dlc && spec.gpus > 0)
            .then(|| (spec.gpus, std::env::var("CUDA_VISIBLE_DEVICES").ok())),
    };
    let env = match framework_env(framework, &layout) {
        Ok(e) => e,
        Err(e) => {
            watch.fail(&e.to_string());
            return Err(e);
        }
    };
    let me_role = role(spec.strategy, spec.servers, rank);
    let command = spec.argv.join(" ");

    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // What the command must not inherit: our secret and our own plumbing.
    for k in [
        "DLC_JOB_TOKEN",
        "DLC_COORDINATOR",
        "DLC_DIE_WITH_PARENT",
        "DLC_PROGRESS",
        "DLC_HOST_COORDINATOR",
        "DLC_EXEC_PREFIX",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in &env {
        // The user's own setting wins for thread counts; ours for identities.
        if k.ends_with("_NUM_THREADS") && std::env::var_os(k).is_some() {
            continue;
        }
        cmd.env(k, v);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if framework == Framework::Tensorflow && std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() {
        cmd.env("TF_CPP_MIN_LOG_LEVEL", "1");
    }
    cmd.process_group(0);
    // SAFETY: prctl in the child before exec; async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    // Hand the reserved port to the framework (released just before the start).
    drop(reserved);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(source) => {
            let e = AgentError::Spawn {
                rank,
                command: command.clone(),
                source,
            };
            watch.fail(&format!("cannot start `{command}`"));
            return Err(e);
        }
    };
    let prefix = spec.prefix.then(|| format!("[rank {rank}] "));
    let mut relays = Vec::new();
    if let Some(o) = child.stdout.take() {
        relays.push(relay(o, false, prefix.clone()));
    }
    if let Some(e) = child.stderr.take() {
        relays.push(relay(e, true, prefix));
    }
    let pgid = child.id() as i32;
    let mut running = Running {
        child,
        pgid,
        done: None,
    };

    let signalled = Arc::new(AtomicUsize::new(0));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let _ = signal_hook::flag::register_usize(sig, signalled.clone(), sig as usize);
    }
    let mut forwarded: Option<(usize, Instant)> = None;
    let result = loop {
        if let Some(status) = running.poll() {
            if status.success() {
                if me_role == Role::Chief {
                    watch.finish();
                } else {
                    watch.leave();
                }
                break Ok(());
            }
            let (how, code) = describe_status(status);
            let how = match forwarded {
                Some((sig, _)) => format!("{how} after dlc forwarded signal {sig}"),
                None => how,
            };
            watch.fail(&format!("`{command}` {how}"));
            break Err(AgentError::Failed {
                rank,
                command,
                status: how,
                code,
            });
        }
        let sig = signalled.swap(0, Ordering::SeqCst);
        if sig != 0 {
            match forwarded {
                None => {
                    running.signal(sig as i32);
                    forwarded = Some((sig, Instant::now()));
                }
                Some(_) => running.signal(libc::SIGKILL),
            }
        }
        if let Some((_, when)) = forwarded {
            if when.elapsed() > STOP_GRACE * 2 {
                running.signal(libc::SIGKILL);
            }
        }
        match watch.notice(Duration::from_millis(50)) {
            None => {}
            Some(Notice::Aborted { rank: r, reason }) => {
                running.stop();
                break Err(AgentError::Aborted {
                    rank: r,
                    reason,
                    me: rank,
                });
            }
            Some(Notice::Finished { .. }) => {
                // The chief is done: this task's serving ends with it.
                running.stop();
                watch.leave();
                break Ok(());
            }
            Some(Notice::Lost(why)) => {
                running.stop();
                break Err(AgentError::Lost { rank, why });
            }
        }
    };
    // The command's last lines (a final result, a traceback) before our own: wait for
    // the relays to reach end of file, but not for a background process of the
    // command that keeps the pipes open (its group is killed when `running` drops).
    let until = Instant::now() + RELAY_GRACE;
    while relays.iter().any(|h| !h.is_finished()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(c) = coordinator {
        c.shutdown(Duration::from_secs(10));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(rank: usize, peers: &[&str], strategy: Strategy, servers: usize) -> Layout {
        Layout {
            rank,
            peers: peers.iter().map(|s| s.to_string()).collect(),
            local_rank: rank,
            job_id: "j-1".into(),
            run_dir: "/runs/x".into(),
            strategy,
            servers,
            restart: 2,
            threads: 3,
            gpus: None,
        }
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn torch_gets_torchrun_variables_with_rank_0s_reserved_port() {
        let peers = ["10.0.0.1:4001", "10.0.0.1:4002", "10.0.0.2:4003"];
        let env = framework_env(Framework::Torch, &layout(2, &peers, Strategy::Ring, 0)).unwrap();
        for (k, v) in [
            ("RANK", "2"),
            ("WORLD_SIZE", "3"),
            ("LOCAL_RANK", "2"),
            ("LOCAL_WORLD_SIZE", "1"),
            ("GROUP_RANK", "1"),
            ("GROUP_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "4001"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
            ("DLC_RESTART_COUNT", "2"),
            ("DLC_RUN_DIR", "/runs/x"),
            ("OMP_NUM_THREADS", "3"),
        ] {
            assert_eq!(get(&env, k), Some(v), "{k}");
        }
        assert_eq!(get(&env, "TF_CONFIG"), None);
    }

    #[test]
    fn tf_config_for_multi_worker_mirrored_and_parameter_servers() {
        let peers = ["127.0.0.1:5000", "127.0.0.1:5001"];
        let env =
            framework_env(Framework::Tensorflow, &layout(1, &peers, Strategy::Ring, 0)).unwrap();
        let c: serde_json::Value = serde_json::from_str(get(&env, "TF_CONFIG").unwrap()).unwrap();
        assert_eq!(
            c,
            json!({"cluster": {"worker": ["127.0.0.1:5000", "127.0.0.1:5001"]},
                   "task": {"type": "worker", "index": 1}})
        );
        assert_eq!(get(&env, "TF_USE_LEGACY_KERAS"), Some("1"));
        assert_eq!(get(&env, "RANK"), None);

        // chief + 1 ps + 2 workers.
        let peers = ["h0:1", "h0:2", "h1:3", "h1:4"];
        let roles: Vec<_> = (0..4).map(|r| role(Strategy::Ps, 1, r)).collect();
        assert_eq!(
            roles,
            [Role::Chief, Role::Ps(0), Role::Worker(0), Role::Worker(1)]
        );
        for (rank, task) in [
            (0, json!({"type": "chief", "index": 0})),
            (1, json!({"type": "ps", "index": 0})),
            (3, json!({"type": "worker", "index": 1})),
        ] {
            let env = framework_env(
                Framework::Tensorflow,
                &layout(rank, &peers, Strategy::Ps, 1),
            )
            .unwrap();
            let c: serde_json::Value =
                serde_json::from_str(get(&env, "TF_CONFIG").unwrap()).unwrap();
            assert_eq!(
                c["cluster"],
                json!({"chief": ["h0:1"], "ps": ["h0:2"], "worker": ["h1:3", "h1:4"]})
            );
            assert_eq!(c["task"], task);
        }
        // Too few processes for chief + ps + worker; ps without TensorFlow.
        let err = framework_env(
            Framework::Tensorflow,
            &layout(0, &["a:1", "a:2"], Strategy::Ps, 1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("at least one worker"), "{err}");
        let err = framework_env(Framework::Torch, &layout(0, &peers, Strategy::Ps, 1)).unwrap_err();
        assert!(err.to_string().contains("--strategy ring"), "{err}");
    }

    #[test]
    fn jax_and_keras_get_the_coordinator_and_auto_gets_everything() {
        let peers = ["[::1]:7000", "[::1]:7001"];
        let env = framework_env(Framework::Jax, &layout(1, &peers, Strategy::Ring, 0)).unwrap();
        assert_eq!(
            get(&env, "KERAS_DISTRIBUTION_JOB_ADDRESSES"),
            Some("[::1]:7000")
        );
        assert_eq!(get(&env, "KERAS_DISTRIBUTION_NUM_PROCESSES"), Some("2"));
        assert_eq!(get(&env, "KERAS_DISTRIBUTION_PROCESS_ID"), Some("1"));
        let env = framework_env(Framework::Auto, &layout(0, &peers, Strategy::Ring, 0)).unwrap();
        for k in ["RANK", "TF_CONFIG", "JAX_PROCESS_ID", "MASTER_PORT"] {
            assert!(get(&env, k).is_some(), "{k}");
        }
        assert_eq!(get(&env, "MASTER_ADDR"), Some("::1"));
        let env = framework_env(Framework::None, &layout(0, &peers, Strategy::Ring, 0)).unwrap();
        assert_eq!(get(&env, "RANK"), None);
        assert_eq!(get(&env, "DLC_RANK"), Some("0"));
    }

    #[test]
    fn gpus_are_assigned_by_local_rank_from_the_visible_list() {
        let peers = ["h:1", "h:2"];
        let mut l = layout(1, &peers, Strategy::Ring, 0);
        l.gpus = Some((1, Some("4,5".into())));
        let env = framework_env(Framework::None, &l).unwrap();
        assert_eq!(get(&env, "CUDA_VISIBLE_DEVICES"), Some("5"));
        l.gpus = Some((2, None));
        assert_eq!(
            get(
                &framework_env(Framework::None, &l).unwrap(),
                "CUDA_VISIBLE_DEVICES"
            ),
            Some("2,3")
        );
        l.gpus = Some((2, Some("0,1".into())));
        assert!(framework_env(Framework::None, &l).is_err());
    }

    #[test]
    fn frameworks_are_detected_from_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("import torch\nimport numpy as np\n", Framework::Torch),
            (
                "import os\nimport tensorflow as tf\nimport torch\n",
                Framework::Tensorflow,
            ),
            ("from tf_keras import layers\n", Framework::Tensorflow),
            ("import jax.numpy as jnp\n", Framework::Jax),
            ("import numpy, keras\n", Framework::Jax),
            (
                "from torch.utils.data import DataLoader\n",
                Framework::Torch,
            ),
            ("print('hello')  # import torch\n", Framework::Auto),
            ("import torchvision\n", Framework::Auto),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let p = dir.path().join(format!("s{i}.py"));
            std::fs::write(&p, text).unwrap();
            let argv = vec!["python".to_string(), p.display().to_string()];
            assert_eq!(detect_framework(&argv), *want, "{text}");
        }
        assert_eq!(
            detect_framework(&["sh".into(), "-c".into(), "true".into()]),
            Framework::Auto
        );
    }

    #[test]
    fn statuses_are_described_with_signal_names() {
        let (s, c) = describe_status(ExitStatus::from_raw(9));
        assert_eq!((s.as_str(), c), ("was killed by signal 9 (SIGKILL)", 137));
        let (s, c) = describe_status(ExitStatus::from_raw(3 << 8));
        assert_eq!((s.as_str(), c), ("exited with code 3", 3));
    }
}
