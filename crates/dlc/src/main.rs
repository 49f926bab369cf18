//! `dlc`: the dlcluster command line. Argument parsing and wiring only; the work
//! lives in the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod curves;
mod data;
mod devices;
mod exec;
mod launch;
mod plan;
mod train;

/// dlcluster: train deep-learning jobs described in a TOML file, on one core or
/// many worker processes, with the network graph, data model and resource manager
/// chosen by configuration.
#[derive(Parser, Debug)]
#[command(name = "dlc", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train the job's model (one worker, or `--workers N` local processes); writes
    /// metrics.jsonl, TensorBoard events, curves.png, model.safetensors and a
    /// checkpoint into the run directory.
    Train(train::TrainArgs),
    /// Run one process of a distributed job. Started by a resource manager or launcher:
    /// reads its rank from DLC_*, Slurm (srun), Open MPI/PMI (mpirun) or torchrun variables.
    Worker(train::WorkerArgs),
    /// Start a distributed job on a resource manager: local processes, Slurm
    /// (sbatch + srun) or Kubernetes (Indexed Jobs); a job file, or your own
    /// PyTorch/TensorFlow/JAX command after `--`; --dry-run prints what it would submit.
    Launch(Box<launch::LaunchArgs>),
    /// Run one process of a foreign job (your command after `--`): join the job, wait
    /// for every process, start the command with its framework's environment, and
    /// stop it when another process fails. Started by `dlc launch … -- COMMAND`.
    Exec(exec::ExecArgs),
    /// State of a Slurm or Kubernetes job started by `dlc launch`.
    Status(launch::StatusArgs),
    /// Output of a Slurm or Kubernetes job (--follow until it ends).
    Logs(launch::LogsArgs),
    /// Stop a Slurm or Kubernetes job.
    Cancel(launch::CancelArgs),
    /// Convert a job's data: IDX images to an image folder (PNG) or CSV tables.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Evaluate saved weights on the job's test set.
    Eval(train::EvalArgs),
    /// Plot training curves (loss per step, test accuracy per epoch) of one or more
    /// run directories, overlaid → SVG and PNG.
    Plot(curves::PlotArgs),
    /// Benchmarks of the hot paths, against ceilings measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Show the CPU and every usable NVIDIA GPU (or why none is usable).
    Devices(devices::DevicesArgs),
    /// List the instance catalog (cloud machines, GPUs, prices).
    Instances(plan::InstancesArgs),
    /// Measure what a job needs on this device (FLOPs, bytes, samples/s) → profile.json.
    Profile(plan::ProfileArgs),
    /// Estimate time and cost of a job on every catalog instance, node count and
    /// strategy; mark the Pareto-optimal choices; write plan.csv and a plot.
    Plan(plan::PlanArgs),
}

fn main() -> ExitCode {
    dlc_train::backend::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train::train(a),
        Command::Worker(a) => train::worker(a),
        Command::Eval(a) => train::eval(a),
        Command::Plot(a) => curves::plot(a),
        Command::Launch(a) => launch::launch(*a),
        Command::Exec(a) => match exec::exec(a) {
            Ok(code) => return ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => Err(e),
        },
        Command::Status(a) => launch::status(a),
        Command::Logs(a) => launch::logs(a),
        Command::Cancel(a) => launch::cancel(a),
        Command::Bench(b) => bench::run(b),
        Command::Data(d) => data::run(d),
        Command::Devices(a) => devices::run(a),
        Command::Instances(a) => plan::instances(a),
        Command::Profile(a) => plan::profile_cmd(a),
        Command::Plan(a) => plan::plan_cmd(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
