//! `dlc exec`: the agent of one process of a foreign job (wiring only; the agent is
//! `dlc_launch::agent`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use dlc_job::Strategy;
use dlc_launch::agent::{self, ExecSpec, Framework};

#[derive(Args, Debug)]
#[command(
    after_help = "Started by `dlc launch … -- COMMAND` on every manager; also usable \
under srun, mpirun or torchrun directly, e.g.\n  srun -n 4 dlc exec -- python train.py"
)]
pub struct ExecArgs {
    /// Framework of the command: auto (from its imports), torch, tensorflow, jax or none.
    #[arg(long, default_value = "auto")]
    framework: Framework,
    /// Network graph: ring (every process a worker) or ps (TensorFlow: rank 0 the
    /// chief, then the ps tasks, then the workers).
    #[arg(long, default_value = "ring")]
    strategy: Strategy,
    /// Parameter-server tasks with --strategy ps.
    #[arg(long, default_value_t = 1)]
    ps_servers: usize,
    /// Seconds to wait for every process to join before failing (gang start).
    #[arg(long, default_value_t = 60, value_name = "S")]
    join_timeout: u64,
    /// Run directory, exported as DLC_RUN_DIR [default: runs/<command>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// CPU threads for the command (OMP_NUM_THREADS, …) [default: the launcher's CPUs
    /// per task, else cores ÷ processes on this host].
    #[arg(long)]
    threads: Option<usize>,
    /// GPUs per process, assigned by local rank (CUDA_VISIBLE_DEVICES).
    #[arg(long, default_value_t = 0)]
    gpus_per_process: usize,
    /// Extra variable for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// `dlc exec`: returns the process's exit code (the command's own on failure).
pub fn exec(a: ExecArgs) -> Result<i32> {
    if std::env::var("DLC_DIE_WITH_PARENT").is_ok_and(|v| v == "1") {
        dlc_launch::die_with_parent();
    }
    if a.join_timeout == 0 || a.join_timeout > 86_400 {
        bail!("--join-timeout must be between 1 and 86400 seconds");
    }
    let env = a
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--env {kv}: want KEY=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    let id = dlc_launch::env::from_process_env(&a.command.join("\0"))?;
    for n in &id.notes {
        eprintln!("note: {n}");
    }
    let run_dir = crate::launch::absolute(
        &a.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&id.job_id)),
    )?;
    if id.rank == 0 {
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    }
    let spec = ExecSpec {
        argv: a.command,
        framework: a.framework,
        strategy: a.strategy,
        servers: a.ps_servers,
        join_timeout: Duration::from_secs(a.join_timeout),
        run_dir: run_dir.display().to_string(),
        threads: a.threads,
        gpus: a.gpus_per_process,
        prefix: !std::env::var("DLC_EXEC_PREFIX").is_ok_and(|v| v == "0"),
        env,
    };
    match agent::run(&id, &spec) {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(e.exit_code())
        }
    }
}
