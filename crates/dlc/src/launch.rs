//! `dlc launch`, `dlc status`, `dlc logs`, `dlc cancel`: a job on a resource manager.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dlc_job::{JobSpec, Manager, PsMode, Strategy};
use dlc_launch::agent::{self, Framework};
use dlc_launch::record::{self, JobRecord};
use dlc_launch::{ForeignCommand, LaunchSpec, OutputVolume, ResourceManager};

use crate::train::{RunArgs, RunOpts};

#[derive(Args, Debug)]
#[command(
    after_help = "Your own script instead of a job file: everything after `--` is the \
command every process runs under `dlc exec`, e.g.\n  \
dlc launch --workers 2 -- python examples/frameworks/torch_ddp.py --epochs 1\n  \
dlc launch --manager slurm --nodes 2 --workers-per-node 4 --framework tensorflow -- python train.py"
)]
pub struct LaunchArgs {
    /// Job file (TOML); omit it to launch your own command given after `--`.
    job: Option<PathBuf>,
    #[command(flatten)]
    run: RunOpts,
    /// Framework of the command after `--`: auto (from its imports), torch,
    /// tensorflow (tf-keras), jax (also Keras 3) or none; decides the environment
    /// (torchrun's variables, TF_CONFIG, JAX/Keras variables) every process gets
    /// [default: [command] framework, else auto].
    #[arg(long)]
    framework: Option<Framework>,
    /// Seconds every process of a foreign command may take to start and join before
    /// the job fails naming the missing ranks (gang start) [default: [command]
    /// join_timeout_s, else 60].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    join_timeout: Option<u64>,
    /// Your command and its arguments (after `--`): every process runs it.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// Resource manager: local, slurm, kubernetes, ray, spark or yarn (--dry-run: a
    /// service spec for `yarn app -launch`) [default: [resources] manager, else local].
    #[arg(long)]
    manager: Option<Manager>,
    /// Ray: the cluster's address, HOST:6379 [default: [resources] address, else
    /// RAY_ADDRESS, else the Ray head running on this machine]. Spark (also
    /// --master): the master URL [default: [resources] address, else MASTER, else
    /// local[N]].
    #[arg(long, alias = "master")]
    address: Option<String>,
    /// Machines [default: [resources] nodes, else 1].
    #[arg(long)]
    nodes: Option<usize>,
    /// Workers per machine (workers = nodes × this) [default: [distributed] workers spread over the nodes].
    #[arg(long)]
    workers_per_node: Option<usize>,
    /// GPUs per worker [default: [resources] gpus_per_worker, else 0].
    #[arg(long)]
    gpus_per_worker: Option<usize>,
    /// CPU cores per process, also its tensor threads [default: [resources] cpus_per_worker, else 1].
    #[arg(long)]
    cpus_per_worker: Option<usize>,
    /// Wall-clock limit of the job, e.g. 90m, 2h, 1d.
    #[arg(long)]
    time: Option<String>,
    /// Slurm partition.
    #[arg(long)]
    partition: Option<String>,
    /// Kubernetes namespace [default: default].
    #[arg(long)]
    namespace: Option<String>,
    /// Container image with dlc and the dataset (Kubernetes).
    #[arg(long)]
    image: Option<String>,
    /// Kubernetes: a PersistentVolumeClaim that keeps the run directory (mounted at
    /// /dlc/runs in every pod) [default: [resources] output_claim].
    #[arg(long, value_name = "CLAIM")]
    output_claim: Option<String>,
    /// Port of the coordinator rank 0 hosts [default: derived from the scheduler's job id].
    #[arg(long)]
    port: Option<u16>,
    /// Print the batch script / manifests instead of submitting.
    #[arg(long)]
    dry_run: bool,
    /// Wait for the job to end, relaying its output; exit non-zero if it failed.
    #[arg(long)]
    wait: bool,
}

#[derive(Args, Debug)]
pub struct JobRef {
    /// Job id as the scheduler knows it (Slurm: a number; Kubernetes: the job name).
    id: String,
    /// Resource manager that runs the job: slurm or kubernetes [default: the one
    /// `dlc launch` submitted it to, else slurm for a number].
    #[arg(long)]
    manager: Option<Manager>,
    /// Kubernetes namespace [default: the one it was submitted to].
    #[arg(long)]
    namespace: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    job: JobRef,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    job: JobRef,
    /// Keep printing new output until the job ends.
    #[arg(long, short)]
    follow: bool,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    job: JobRef,
}

/// `p`, made absolute against the current directory.
pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(p)
    })
}

/// A foreign command's job name: its script's stem, else its program's name.
fn command_name(argv: &[String]) -> String {
    let word = argv
        .iter()
        .find(|a| a.ends_with(".py"))
        .or(argv.first())
        .map_or("command", String::as_str);
    Path::new(word)
        .file_stem()
        .map_or("command".into(), |s| s.to_string_lossy().into_owned())
}

/// Resolves the job file, `[resources]` and the command line into a launch: the
/// manager (submitting where it was told) and what it launches, checked against what
/// that manager can do.
fn launch_spec(a: &LaunchArgs) -> Result<(Manager, Box<dyn ResourceManager>, LaunchSpec)> {
    let mut job: JobSpec = match (&a.job, a.command.is_empty()) {
        (Some(file), true) => RunArgs {
            job: file.clone(),
            opts: a.run.clone(),
        }
        .job()?,
        (Some(file), false) => bail!(
            "give a job file or a command after `--`, not both ({} and `{}`); a job file \
             can carry the command itself in a [command] table",
            file.display(),
            a.command.join(" ")
        ),
        (None, false) => {
            let mut job = JobSpec::for_command(command_name(&a.command));
            job.command = Some(dlc_job::CommandSpec {
                argv: a.command.clone(),
                framework: Framework::Auto,
                env: Default::default(),
                workdir: None,
                max_restarts: 0,
                join_timeout_s: 60,
            });
            a.run.apply(job)?
        }
        (None, true) => bail!(
            "nothing to launch: give a job file (dlc launch JOB.toml …) or your own command \
             after `--` (dlc launch --workers 2 -- python train.py)"
        ),
    };
    let foreign = job.command.is_some();
    let r = &mut job.resources;
    if let Some(m) = a.manager {
        r.manager = m;
    }
    for (dst, src) in [
        (&mut r.nodes, a.nodes),
        (&mut r.gpus_per_worker, a.gpus_per_worker),
        (&mut r.cpus_per_worker, a.cpus_per_worker),
    ] {
        if let Some(v) = src {
            *dst = v;
        }
    }
    if a.workers_per_node.is_some() {
        r.workers_per_node = a.workers_per_node;
    }
    for (dst, src) in [
        (&mut r.time_limit, &a.time),
        (&mut r.partition, &a.partition),
        (&mut r.image, &a.image),
    ] {
        if src.is_some() {
            dst.clone_from(src);
        }
    }
    if let Some(n) = &a.namespace {
        r.namespace.clone_from(n);
    }
    if a.output_claim.is_some() {
        r.output_claim.clone_from(&a.output_claim);
        r.output_host_path = None;
    }
    if a.port.is_some() {
        r.port = a.port;
    }
    if a.address.is_some() {
        r.address.clone_from(&a.address);
    }
    if r.nodes == 0 || r.cpus_per_worker == 0 || r.workers_per_node == Some(0) {
        bail!("--nodes, --workers-per-node and --cpus-per-worker must be at least 1");
    }
    if !foreign && r.gpus_per_worker > 1 {
        bail!(
            "--gpus-per-worker {}: a dlc worker trains on one GPU (no model parallelism yet), \
             so the others would sit idle; run one worker per GPU instead (--workers-per-node \
             {} --gpus-per-worker 1)",
            r.gpus_per_worker,
            r.gpus_per_worker * r.workers_per_node.unwrap_or(1)
        );
    }
    if let Some(w) = r.workers_per_node {
        if a.run.workers.is_some_and(|n| n != w * r.nodes) {
            bail!(
                "--workers {} disagrees with --nodes {} × --workers-per-node {w}",
                a.run.workers.unwrap_or(0),
                r.nodes
            );
        }
        job.distributed.workers = w * r.nodes;
        job.check_distributed()?;
    }
    let r = job.resources.clone();
    let d = &job.distributed;
    if foreign && (a.run.resume.is_some() || a.run.epochs.is_some() || a.run.steps.is_some()) {
        bail!("--resume, --epochs and --steps are for job files; pass your script its own options after `--`");
    }
    let time_limit = r
        .time_limit
        .as_deref()
        .map(dlc_job::parse_duration)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let out = match (&a.run.resume, &a.run.out) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => dlc_train::trainer::default_run_dir(&job),
    };
    let rm = dlc_launch::manager(
        r.manager,
        dlc_launch::Target {
            namespace: Some(r.namespace.clone()),
            address: r.address.clone(),
            quiet: a.run.quiet,
        },
    )?;
    let own_threads = rm.assigns_threads();
    let threads = own_threads.then_some(r.cpus_per_worker);
    let worker_args = a.run.process_flags(&job, threads);
    let (exe, image) = match r.manager {
        Manager::Kubernetes => (
            PathBuf::from("dlc"),
            r.image.clone().ok_or_else(|| {
                anyhow::anyhow!("kubernetes needs a container image with dlc and the dataset: --image or [resources] image")
            })?,
        ),
        _ => (std::env::current_exe().context("locating the dlc binary")?, String::new()),
    };
    let (job_file, job_text) = match &a.job {
        Some(f) => {
            let p = absolute(f)?;
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            (p, text)
        }
        None => (PathBuf::new(), String::new()),
    };
    let ps_processes = if d.strategy == Strategy::Ps {
        d.ps_servers
    } else {
        0
    };
    let cmd = job.command.as_ref();
    let framework = a.framework.or(cmd.map(|c| c.framework)).unwrap_or_default();
    // An explicit framework is checked here; `auto` once each agent has read the script.
    if foreign && framework != Framework::Auto {
        agent::check_strategy(framework, d.strategy)?;
    }
    let join_timeout = a
        .join_timeout
        .or(cmd.map(|c| c.join_timeout_s))
        .unwrap_or(60);
    // One restart mechanism for every job: --max-restarts, else [command] or
    // [distributed] max_restarts.
    let max_restarts = match (a.run.max_restarts, cmd) {
        (None, Some(c)) if c.max_restarts > 0 => c.max_restarts,
        _ => d.max_restarts,
    };
    let command = cmd.map(|c| {
        let mut exec_args = vec![
            "--framework".to_string(),
            framework.to_string(),
            "--strategy".into(),
            d.strategy.to_string(),
            "--ps-servers".into(),
            d.ps_servers.to_string(),
            "--join-timeout".into(),
            join_timeout.to_string(),
        ];
        if own_threads {
            exec_args.extend(["--threads".into(), r.cpus_per_worker.to_string()]);
        }
        if r.gpus_per_worker > 0 {
            exec_args.extend(["--gpus-per-process".into(), r.gpus_per_worker.to_string()]);
        }
        for (k, v) in &c.env {
            exec_args.extend(["--env".into(), format!("{k}={v}")]);
        }
        ForeignCommand {
            exec_args,
            argv: c.argv.clone(),
        }
    });
    let output_volume = match (&r.output_claim, &r.output_host_path) {
        (Some(c), _) => Some(OutputVolume::Claim(c.clone())),
        (None, Some(p)) => Some(OutputVolume::HostPath(p.clone())),
        (None, None) => None,
    };
    if output_volume.is_some() && r.manager != Manager::Kubernetes {
        bail!("output_claim and output_host_path are for Kubernetes; under {} the run directory is on the file system the nodes share", r.manager);
    }
    // The job file's [command] workdir (default: its directory), else where we are.
    let workdir = match cmd.and_then(|c| c.workdir.clone()) {
        Some(w) => absolute(&w)?,
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let spec = LaunchSpec {
        name: job.display_name().to_string(),
        exe,
        job_text,
        job_file,
        worker_args,
        // A foreign job's processes all run `dlc exec`: with TensorFlow's ps strategy
        // a chief, the ps tasks and the workers.
        workers: if foreign {
            d.workers
                + if ps_processes > 0 {
                    ps_processes + 1
                } else {
                    0
                }
        } else {
            d.workers
        },
        servers: if foreign { 0 } else { ps_processes },
        nodes: r.nodes,
        gpus_per_worker: r.gpus_per_worker,
        cpus_per_worker: r.cpus_per_worker,
        time_limit,
        partition: r.partition.clone(),
        namespace: r.namespace.clone(),
        image,
        workdir,
        // Kubernetes paths live in the pod, not here; with an output volume, below it.
        out: match (r.manager, &output_volume) {
            (Manager::Kubernetes, Some(_)) => Path::new(dlc_launch::kubernetes::RUNS_DIR)
                .join(out.file_name().unwrap_or(out.as_os_str())),
            (Manager::Kubernetes, None) => out,
            _ => absolute(&out)?,
        },
        output_volume,
        resume: a.run.resume.is_some(),
        port: r.port,
        timeout_s: if foreign {
            join_timeout
        } else {
            d.join_timeout().as_secs()
        },
        command,
        // Asynchronous servers cannot stop with their workers (no consistent step).
        checkpoints: !(foreign || d.strategy == Strategy::Ps && d.ps_mode == PsMode::Async),
        max_restarts,
        min_workers: d.min_workers,
    };
    rm.check(&spec)?;
    Ok((r.manager, rm, spec))
}

/// `dlc launch`.
pub fn launch(a: LaunchArgs) -> Result<()> {
    let (kind, rm, spec) = launch_spec(&a)?;
    if a.dry_run {
        print!("{}", rm.render(&spec)?);
        return Ok(());
    }
    if rm.foreground() {
        if spec.command.is_some() {
            std::fs::create_dir_all(&spec.out)
                .with_context(|| format!("creating the run directory {}", spec.out.display()))?;
        }
        rm.submit(&spec)
            .with_context(|| format!("{kind} launch failed"))?;
        print_result(&spec.out);
        return Ok(());
    }
    let id = rm
        .submit(&spec)
        .with_context(|| format!("submitting {} to {kind}", spec.job_file.display()))?;
    let remembered = record::save(&JobRecord {
        id: id.clone(),
        manager: kind,
        namespace: (kind == Manager::Kubernetes).then(|| spec.namespace.clone()),
        name: spec.name.clone(),
        run_dir: spec.out.clone(),
        submitted: record::now(),
    });
    // Without a record, status/logs/cancel need to be told the manager.
    let flag = match (&remembered, kind) {
        (Ok(()), _) | (Err(_), Manager::Slurm) => String::new(),
        (Err(_), _) => format!(" --manager {kind} --namespace {}", spec.namespace),
    };
    if let Err(e) = &remembered {
        eprintln!("note: could not remember job {id} for dlc status/logs/cancel: {e}");
    }
    if kind == Manager::Kubernetes && spec.output_volume.is_none() {
        eprintln!(
            "note: the run directory lives in rank 0's pod and goes with it; keep it with \
             --output-claim CLAIM or [resources] output_claim / output_host_path"
        );
    }
    eprintln!(
        "submitted {kind} job {id}: {} worker(s){} on {} node(s); run directory {}\n  \
         dlc status {id}{flag}   dlc logs {id}{flag} --follow   dlc cancel {id}{flag}",
        spec.workers,
        if spec.servers > 0 {
            format!(" + {} server(s)", spec.servers)
        } else {
            String::new()
        },
        spec.nodes,
        spec.out.display()
    );
    println!("{id}");
    if !a.wait {
        return Ok(());
    }
    let status = if a.run.quiet {
        follow(rm.as_ref(), &id, &mut std::io::sink(), false, false)?
    } else {
        follow(rm.as_ref(), &id, &mut std::io::stderr().lock(), true, false)?
    };
    if !status.succeeded {
        bail!("{kind} job {id} ended {}: {}", status.state, status.detail);
    }
    print_result(&spec.out);
    Ok(())
}

/// Prints the final epoch line of a finished run, if there is one.
fn print_result(out: &Path) {
    let Ok(text) = std::fs::read_to_string(out.join("metrics.jsonl")) else {
        return;
    };
    let last = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "epoch");
    if let Some(v) = last {
        eprintln!(
            "epoch {}: {} (loss {:.4}); run directory {}",
            v["epoch"],
            crate::train::test_metrics(&v),
            v["test_loss"].as_f64().unwrap_or(f64::NAN),
            out.display()
        );
    }
}

/// Copies the job's output to `out` as it grows, until the job ends; returns its
/// final status. With `states`, state changes are reported on stderr. Unless
/// `strict`, a failed log read (output not there yet) is retried next round.
fn follow(
    rm: &dyn ResourceManager,
    id: &str,
    out: &mut dyn Write,
    states: bool,
    strict: bool,
) -> Result<dlc_launch::JobStatus> {
    let mut shown = 0usize;
    let mut last_state = String::new();
    let started = Instant::now();
    loop {
        let st = rm.status(id)?;
        if states && st.state != last_state {
            eprintln!(
                "[{:>5.0}s] {} job {id}: {} ({})",
                started.elapsed().as_secs_f64(),
                rm.name(),
                st.state,
                st.detail
            );
            last_state.clone_from(&st.state);
        }
        match rm.logs(id) {
            Ok(text) if text.len() > shown => {
                out.write_all(&text.as_bytes()[shown..])?;
                out.flush()?;
                shown = text.len();
            }
            Ok(_) => {}
            Err(e) if strict => return Err(e.into()),
            Err(_) => {}
        }
        if st.finished {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The manager of a job: as given, else as remembered at submission, else Slurm for a
/// number.
fn resolve(j: &JobRef) -> Result<(Manager, Option<String>)> {
    let rec = record::find(&j.id);
    let manager = match (j.manager, &rec) {
        (Some(m), _) => m,
        (None, Some(r)) => r.manager,
        (None, None) if !j.id.is_empty() && j.id.bytes().all(|b| b.is_ascii_digit()) => {
            Manager::Slurm
        }
        (None, None) => bail!(
            "dlc has no record of job `{}` (it remembers the jobs `dlc launch` submitted from \
             this account); say which manager runs it: --manager slurm|kubernetes",
            j.id
        ),
    };
    let namespace = j.namespace.clone().or_else(|| {
        rec.filter(|r| r.manager == manager)
            .and_then(|r| r.namespace)
    });
    Ok((manager, namespace))
}

fn manager_of(j: &JobRef) -> Result<Box<dyn ResourceManager>> {
    let (manager, namespace) = resolve(j)?;
    let rm = dlc_launch::manager(
        manager,
        dlc_launch::Target {
            namespace,
            ..Default::default()
        },
    )?;
    if rm.foreground() {
        bail!("{manager} jobs run in the foreground of `dlc train`/`dlc launch`; status, logs and cancel are for slurm and kubernetes jobs");
    }
    Ok(rm)
}

/// `dlc status`.
pub fn status(a: StatusArgs) -> Result<()> {
    let rm = manager_of(&a.job)?;
    let st = rm.status(&a.job.id)?;
    if a.json {
        println!("{}", serde_json::to_string(&st)?);
    } else {
        println!("{} {}: {} ({})", rm.name(), st.id, st.state, st.detail);
    }
    Ok(())
}

/// `dlc logs`.
pub fn logs(a: LogsArgs) -> Result<()> {
    let rm = manager_of(&a.job)?;
    if a.follow {
        follow(
            rm.as_ref(),
            &a.job.id,
            &mut std::io::stdout().lock(),
            false,
            true,
        )?;
        return Ok(());
    }
    print!("{}", rm.logs(&a.job.id)?);
    Ok(())
}

/// `dlc cancel`.
pub fn cancel(a: CancelArgs) -> Result<()> {
    let rm = manager_of(&a.job)?;
    rm.cancel(&a.job.id)?;
    eprintln!("cancelled {} job {}", rm.name(), a.job.id);
    Ok(())
}
