//! `dlc`: the dlcluster command line. Argument parsing and wiring only; the work
//! lives in the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod devices;
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
    /// metrics.jsonl, model.safetensors and a checkpoint into the run directory.
    Train(train::TrainArgs),
    /// Run one process of a distributed job (started by a resource manager, which
    /// sets DLC_RANK, DLC_WORLD_SIZE, DLC_COORDINATOR, DLC_JOB_ID, DLC_JOB_TOKEN).
    Worker(train::WorkerArgs),
    /// Evaluate saved weights on the job's test set.
    Eval(train::EvalArgs),
    /// Benchmarks of the hot paths, against ceilings measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Show the CPU and every usable NVIDIA GPU (or why none is usable).
    Devices(devices::DevicesArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train::train(a),
        Command::Worker(a) => train::worker(a),
        Command::Eval(a) => train::eval(a),
        Command::Bench(b) => bench::run(b),
        Command::Devices(a) => devices::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
