//! `dlc train`, `dlc worker`, `dlc eval`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use dlc_job::{JobSpec, PsMode, Strategy};
use dlc_train::worker::{Identity, Outcome};
use dlc_train::{TrainOptions, TrainSummary};

/// A job file and the options shared by `train`, `worker` and `launch`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Job file (TOML).
    pub job: PathBuf,
    #[command(flatten)]
    pub opts: RunOpts,
}

impl std::ops::Deref for RunArgs {
    type Target = RunOpts;
    fn deref(&self) -> &RunOpts {
        &self.opts
    }
}

/// Options shared by `train`, `worker` and `launch`.
#[derive(Args, Debug, Clone)]
pub struct RunOpts {
    /// Override [train] epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps in total (a checkpoint is written there).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Run directory [default: runs/<job>-<timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override [train] seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in DIR from its checkpoint.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Number of worker processes [default: [distributed] workers, else 1].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Network graph: `ring` (all-reduce) or `ps` (parameter servers).
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Parameter-server processes (ps).
    #[arg(long)]
    pub ps_servers: Option<usize>,
    /// Parameter-server consistency: `sync` or `async`.
    #[arg(long, value_parser = parse_ps_mode)]
    ps_mode: Option<PsMode>,
    /// Most steps an async worker may run ahead of the slowest.
    #[arg(long)]
    max_staleness: Option<usize>,
    /// Device: auto, cpu, cuda or cuda:N [default: [train] device, else auto].
    #[arg(long)]
    device: Option<dlc_job::DeviceSpec>,
    /// Restart every process up to K times after a failure; a job file's job resumes
    /// from its newest checkpoint, a command gets DLC_RESTART_COUNT [default:
    /// [distributed] max_restarts (or [command] max_restarts), else 0].
    #[arg(long, value_name = "K")]
    pub max_restarts: Option<usize>,
    /// Elastic restarts: continue with fewer workers while at least M remain (the
    /// global batch stays the same): locally without the rank that failed, under
    /// Slurm without the nodes that no longer answer [default: restart all].
    #[arg(long, value_name = "M")]
    pub min_workers: Option<usize>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_ps_mode(s: &str) -> Result<PsMode, String> {
    match s {
        "sync" => Ok(PsMode::Sync),
        "async" => Ok(PsMode::Async),
        _ => Err(format!("unknown ps mode `{s}` (use sync or async)")),
    }
}

/// Reads a job file that trains one of our models; a `[command]` job (the user's own
/// program) is refused with the command that runs it.
pub(crate) fn native_job(path: &std::path::Path) -> Result<JobSpec> {
    let job = JobSpec::from_file(path)?;
    if job.command.is_some() {
        anyhow::bail!(
            "{} runs your own program ([command]), not a model of ours: start it with \
             `dlc launch {}`",
            path.display(),
            path.display()
        );
    }
    Ok(job)
}

impl RunArgs {
    /// Loads the job (a `[command]` job too) and applies the distributed overrides.
    pub fn job(&self) -> Result<JobSpec> {
        self.opts.apply(JobSpec::from_file(&self.job)?)
    }

    /// Loads a job that trains one of our models and applies the overrides.
    pub fn native_job(&self) -> Result<JobSpec> {
        self.opts.apply(native_job(&self.job)?)
    }

    /// The arguments after `dlc` that make a local worker process see the same job.
    fn worker_args(&self, job: &JobSpec, out: &std::path::Path, threads: usize) -> Vec<String> {
        let mut a = vec!["worker".to_string(), self.job.display().to_string()];
        a.extend(self.process_flags(job, Some(threads)));
        match &self.resume {
            Some(r) => a.extend(["--resume".into(), r.display().to_string()]),
            None => a.extend(["--out".into(), out.display().to_string()]),
        }
        a
    }
}

impl RunOpts {
    /// Applies the distributed overrides to `job`.
    pub fn apply(&self, mut job: JobSpec) -> Result<JobSpec> {
        let d = &mut job.distributed;
        if let Some(w) = self.workers {
            d.workers = w;
        }
        if let Some(s) = self.strategy {
            d.strategy = s;
        }
        if let Some(k) = self.ps_servers {
            d.ps_servers = k;
        }
        if let Some(m) = self.ps_mode {
            d.ps_mode = m;
        }
        if let Some(s) = self.max_staleness {
            d.max_staleness = s;
        }
        if let Some(k) = self.max_restarts {
            d.max_restarts = k;
        }
        if self.min_workers.is_some() {
            d.min_workers = self.min_workers;
        }
        if let Some(dev) = self.device {
            job.train.device = dev;
        }
        job.check_distributed()?;
        Ok(job)
    }

    /// The training options these flags ask for.
    pub fn options(&self) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs,
            max_steps: self.steps,
            out: self.out.clone(),
            seed: self.seed,
            resume: self.resume.clone(),
            quiet: self.quiet,
            local_rank: None,
            restart: None,
            stop: None,
            launch_id: None,
            kill_at_step: None,
        }
    }

    /// The flags that make every process of a distributed job see the same job
    /// (what follows `dlc worker JOB`; no run directory).
    pub fn process_flags(&self, job: &JobSpec, threads: Option<usize>) -> Vec<String> {
        let d = &job.distributed;
        // No --workers: each process learns the world size from its launcher, so a
        // restart with fewer processes (--min-workers) needs no other arguments.
        let mut a: Vec<String> = vec![
            "--strategy".into(),
            d.strategy.to_string(),
            "--ps-servers".into(),
            d.ps_servers.to_string(),
            "--ps-mode".into(),
            match d.ps_mode {
                PsMode::Sync => "sync",
                PsMode::Async => "async",
            }
            .into(),
            "--max-staleness".into(),
            d.max_staleness.to_string(),
            "--device".into(),
            job.train.device.to_string(),
        ];
        if let Some(t) = threads {
            a.extend(["--threads".into(), t.to_string()]);
        }
        for (flag, v) in [
            ("--epochs", self.epochs.map(|v| v.to_string())),
            ("--steps", self.steps.map(|v| v.to_string())),
            ("--seed", self.seed.map(|v| v.to_string())),
        ] {
            if let Some(v) = v {
                a.extend([flag.to_string(), v]);
            }
        }
        a
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    run: RunArgs,
    /// CPU threads for tensor operations (one worker) [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// CPU threads per process with --workers [default: cores / processes, at least 1].
    #[arg(long)]
    threads_per_worker: Option<usize>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    run: RunArgs,
    /// CPU threads for tensor operations [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Job file (TOML) whose model and test set to use.
    job: PathBuf,
    /// Weights written by `dlc train` (RUN_DIR/model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// CPU threads for tensor operations [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Device: auto, cpu, cuda, cuda:N [default: the job's [train] device].
    #[arg(long)]
    device: Option<dlc_job::DeviceSpec>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn set_threads(threads: Option<usize>) {
    dlc_train::backend::set_cpu_threads(threads);
}

fn summary_json(s: &TrainSummary) -> serde_json::Value {
    serde_json::json!({
        "run_dir": s.run_dir, "global_step": s.global_step,
        "epochs_completed": s.epochs_completed, "test_loss": s.test.loss,
        "test_accuracy": s.test.accuracy, "test_rmse": s.test.rmse, "test_mae": s.test.mae,
        "samples_per_sec": s.samples_per_sec,
        "seconds": s.seconds, "params": s.params, "device": s.device,
        "peak_rss_mib": s.peak_rss_mib,
        "checkpoints": s.checkpoints.written,
        "checkpoint_copy_ms": s.checkpoints.copy_ms,
        "checkpoint_write_ms": s.checkpoints.write_ms,
    })
}

/// `test accuracy 84.30%`, or `test RMSE 3.2100, MAE 2.4000`, from a summary or an
/// epoch line of `metrics.jsonl`.
pub(crate) fn test_metrics(v: &serde_json::Value) -> String {
    let num = |k: &str| v[k].as_f64();
    dlc_train::EvalResult {
        loss: num("test_loss").unwrap_or(f64::NAN),
        accuracy: num("test_accuracy"),
        rmse: num("test_rmse"),
        mae: num("test_mae"),
        samples: 0,
    }
    .describe()
}

fn print_summary(v: &serde_json::Value, json: bool) {
    if json {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("event");
        }
        println!("{v}");
    } else {
        println!(
            "done: {} steps on {}, {} (loss {:.4}), {:.0} samples/s, {:.1}s; run dir {}",
            v["global_step"],
            v["device"].as_str().unwrap_or("?"),
            test_metrics(v),
            v["test_loss"].as_f64().unwrap_or(f64::NAN),
            v["samples_per_sec"].as_f64().unwrap_or(f64::NAN),
            v["seconds"].as_f64().unwrap_or(f64::NAN),
            v["run_dir"].as_str().unwrap_or("")
        );
    }
}

/// `dlc train`.
pub fn train(args: TrainArgs) -> Result<()> {
    let job = args.run.native_job()?;
    let d = &job.distributed;
    // One worker trains in this process, unless restarts need a launcher around it.
    if d.workers == 1 && d.strategy == Strategy::Ring && d.max_restarts == 0 {
        set_threads(args.threads);
        let mut opts = args.run.options();
        opts.stop = stop_on_signals(&job);
        let s = dlc_train::train(&job, &opts)
            .with_context(|| format!("training {} failed", args.run.job.display()))?;
        exit_if_stopped(&s, true);
        print_summary(&summary_json(&s), args.json);
        crate::curves::after_training(&s.run_dir, args.run.quiet);
        return Ok(());
    }
    let world = d.world();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads_per_worker.unwrap_or((cores / world).max(1));
    let out = args
        .run
        .out
        .clone()
        .unwrap_or_else(|| dlc_train::trainer::default_run_dir(&job));
    let local = dlc_launch::local::LocalJob {
        exe: std::env::current_exe().context("locating the dlc binary")?,
        args: args.run.worker_args(&job, &out, threads),
        world,
        workers: d.workers,
        name: job.display_name().to_string(),
        timeout: d.join_timeout(),
        quiet: args.run.quiet,
        max_restarts: d.max_restarts,
        min_workers: d.min_workers,
        foreign: false,
        workdir: None,
    };
    let outcome = dlc_launch::local::run(&local)
        .with_context(|| format!("distributed training of {} failed", args.run.job.display()))?;
    let Some(v) = outcome.summary else {
        anyhow::bail!("rank 0 finished without reporting a summary");
    };
    print_summary(&v, args.json);
    if let Some(dir) = v["run_dir"].as_str() {
        crate::curves::after_training(Path::new(dir), args.run.quiet);
    }
    Ok(())
}

/// `dlc worker`: one process of a distributed job, started by any launcher.
pub fn worker(args: WorkerArgs) -> Result<()> {
    if std::env::var("DLC_DIE_WITH_PARENT").is_ok_and(|v| v == "1") {
        dlc_launch::die_with_parent();
    }
    let text = std::fs::read_to_string(&args.run.job)
        .with_context(|| format!("reading {}", args.run.job.display()))?;
    let id = dlc_launch::env::from_process_env(&text)?;
    for n in &id.notes {
        eprintln!("note: {n}");
    }
    let mut job = args.run.native_job()?;
    if args.run.workers.is_none() {
        // The launcher decided how many processes there are: all but the servers train.
        let d = &mut job.distributed;
        let servers = if d.strategy == Strategy::Ps {
            d.ps_servers
        } else {
            0
        };
        if id.world <= servers {
            anyhow::bail!(
                "the {} launcher started {} process(es), but the ps strategy needs {servers} server(s) plus at least one worker",
                id.source,
                id.world
            );
        }
        d.workers = id.world - servers;
        job.check_distributed()?;
    }
    set_threads(args.threads.or(id.cpus));
    let timeout = job.distributed.join_timeout();
    // Under a foreign launcher rank 0 hosts the rendezvous; it lives until every rank left.
    let coordinator = id
        .host_coordinator(timeout)
        .with_context(|| format!("rank 0 cannot host the coordinator at {}", id.bind_addr()))?;
    let tid = Identity {
        rank: id.rank,
        world: id.world,
        coordinator: id.coordinator.clone(),
        job_id: id.job_id.clone(),
        token: id.token.clone(),
    };
    let mut opts = args.run.options();
    opts.local_rank = Some(id.local_rank);
    opts.restart = restart_from_env(job.distributed.workers);
    opts.launch_id = Some(id.job_id.clone());
    opts.stop = stop_on_signals(&job);
    opts.kill_at_step = fault_from_env(id.rank, opts.restart.is_some())?;
    let outcome = dlc_train::worker::run(&job, &opts, &tid)
        .with_context(|| format!("rank {} ({} launcher) failed", id.rank, id.source))?;
    if let Some(c) = coordinator {
        c.shutdown(timeout);
    }
    if let Outcome::Worker(s) = outcome {
        if id.rank == 0 && !s.run_dir.as_os_str().is_empty() && s.stopped_by.is_none() {
            let mut v = summary_json(&s);
            if std::env::var(dlc_train::progress::PROGRESS_ENV).is_ok_and(|v| v == "json") {
                v["event"] = "summary".into();
                dlc_train::progress::emit(&v);
            } else {
                print_summary(&v, false);
            }
        }
        exit_if_stopped(&s, id.rank == 0);
    }
    Ok(())
}

/// A run stopped by a signal (after its checkpoint) did not finish: rank 0 (`lead`)
/// exits with `dlc_launch::EXIT_REQUEUE` (SIGUSR1, a time limit ahead: Slurm scripts
/// requeue the job) or `dlc_launch::EXIT_STOPPED` (SIGTERM, SIGINT). The other ranks
/// exit 0: under `srun --kill-on-bad-exit` their non-zero status could get rank 0
/// killed before it exits itself, and the step's status would be that kill's.
fn exit_if_stopped(s: &TrainSummary, lead: bool) {
    if !lead {
        return;
    }
    let Some(sig) = s.stopped_by else {
        return;
    };
    eprintln!(
        "stopped by {} at global step {} after writing a checkpoint; continue with --resume {}",
        dlc_train::trainer::signal_name(sig),
        s.global_step,
        s.run_dir.display()
    );
    std::process::exit(match sig {
        libc::SIGUSR1 => dlc_launch::EXIT_REQUEUE,
        _ => dlc_launch::EXIT_STOPPED,
    })
}

/// The restart this process belongs to, from the launcher's `DLC_RESTART_*`
/// variables (None on a first start).
fn restart_from_env(workers: usize) -> Option<dlc_train::trainer::Restart> {
    let var = |k: &str| std::env::var(k).ok();
    let count = var("DLC_RESTART_COUNT")?.parse::<usize>().ok()?;
    (count > 0).then(|| dlc_train::trainer::Restart {
        count,
        reason: var("DLC_RESTART_REASON")
            .unwrap_or_else(|| "the previous attempt failed (see the job's log)".into()),
        workers_before: var("DLC_RESTART_WORKERS_BEFORE")
            .and_then(|w| w.parse().ok())
            .unwrap_or(workers),
    })
}

/// Fault injection for testing recovery: `DLC_FAULT_KILL_AT_STEP=RANK:STEP` makes
/// that rank SIGKILL itself right after global step STEP, on the first attempt only
/// (a restarted job then runs through).
fn fault_from_env(rank: usize, restarted: bool) -> Result<Option<usize>> {
    let Ok(v) = std::env::var("DLC_FAULT_KILL_AT_STEP") else {
        return Ok(None);
    };
    let (r, step) = v
        .split_once(':')
        .and_then(|(r, s)| {
            Some((
                r.trim().parse::<usize>().ok()?,
                s.trim().parse::<usize>().ok()?,
            ))
        })
        .with_context(|| format!("DLC_FAULT_KILL_AT_STEP={v}: expected RANK:STEP, e.g. 1:57"))?;
    Ok((r == rank && !restarted).then_some(step))
}

/// SIGTERM and SIGUSR1 (preemption, a scheduler's time limit) stop training after the
/// current step with a checkpoint, where the strategy can checkpoint; elsewhere they
/// keep their default effect.
fn stop_on_signals(job: &JobSpec) -> Option<Arc<AtomicUsize>> {
    // Asynchronous ps workers cannot stop together (see `GradSync::checkpoints`):
    // every process keeps the default action. Synchronous servers ignore the flag and
    // stop when rank 0 says training is over, after its checkpoint.
    if job.distributed.strategy == Strategy::Ps && job.distributed.ps_mode == PsMode::Async {
        return None;
    }
    let flag = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGUSR1, libc::SIGINT] {
        // A second signal ends the process at once (exit 1), the first one stops it
        // after its step; registration order is the order the actions run in.
        let registered = signal_hook::flag::register_conditional_shutdown(sig, 1, asked.clone())
            .and_then(|_| signal_hook::flag::register(sig, asked.clone()))
            .and_then(|_| signal_hook::flag::register_usize(sig, flag.clone(), sig as usize));
        if registered.is_err() {
            return None;
        }
    }
    Some(flag)
}

/// `dlc eval`.
pub fn eval(args: EvalArgs) -> Result<()> {
    let job = native_job(&args.job)?;
    set_threads(args.threads);
    let device = args.device.unwrap_or(job.train.device);
    let (r, device) = dlc_train::evaluate_file(&job, &args.model, device)
        .with_context(|| format!("evaluating {} failed", args.model.display()))?;
    if args.json {
        let mut v = serde_json::to_value(r)?;
        v["device"] = device.to_string().into();
        println!("{v}");
    } else {
        println!(
            "test loss {:.4}, {} ({} samples, on {device})",
            r.loss,
            r.describe(),
            r.samples
        );
    }
    Ok(())
}
