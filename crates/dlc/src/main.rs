//! `dlc`: the dlcluster command line. Argument parsing and wiring only; the work
//! lives in the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use dlc_job::JobSpec;
use dlc_train::TrainOptions;

mod bench;

/// dlcluster: train deep-learning jobs described in a TOML file, on one core, one GPU
/// or many workers.
#[derive(Parser, Debug)]
#[command(name = "dlc", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train the job's model; writes metrics.jsonl, model.safetensors and a checkpoint
    /// into the run directory.
    Train(TrainArgs),
    /// Evaluate saved weights on the job's test set.
    Eval(EvalArgs),
    /// Benchmarks of the hot paths, against ceilings measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Job file (TOML).
    job: PathBuf,
    /// Override [train] epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimizer steps in total (a checkpoint is written there).
    #[arg(long)]
    steps: Option<usize>,
    /// Run directory [default: runs/<job>-<timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override [train] seed.
    #[arg(long)]
    seed: Option<u64>,
    /// CPU threads for tensor operations [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Continue the run in DIR from its checkpoint.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Job file (TOML) whose model and test set to use.
    job: PathBuf,
    /// Weights written by `dlc train` (RUN_DIR/model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// CPU threads for tensor operations [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn load_job(path: &PathBuf) -> Result<JobSpec> {
    Ok(JobSpec::from_file(path)?)
}

fn set_threads(threads: Option<usize>) {
    if let Some(t) = threads {
        dlc_train::backend::set_cpu_threads(t);
    }
}

fn train(args: TrainArgs) -> Result<()> {
    let job = load_job(&args.job)?;
    set_threads(args.threads);
    let opts = TrainOptions {
        epochs: args.epochs,
        max_steps: args.steps,
        out: args.out,
        seed: args.seed,
        resume: args.resume,
        quiet: args.quiet,
    };
    let s = dlc_train::train(&job, &opts)
        .with_context(|| format!("training {} failed", args.job.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "run_dir": s.run_dir, "global_step": s.global_step,
                "epochs_completed": s.epochs_completed, "test_loss": s.test.loss,
                "test_accuracy": s.test.accuracy, "samples_per_sec": s.samples_per_sec,
                "seconds": s.seconds, "params": s.params,
            })
        );
    } else {
        println!(
            "done: {} steps, test accuracy {:.2}% (loss {:.4}), {:.0} samples/s, {:.1}s; run dir {}",
            s.global_step,
            100.0 * s.test.accuracy,
            s.test.loss,
            s.samples_per_sec,
            s.seconds,
            s.run_dir.display()
        );
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let job = load_job(&args.job)?;
    set_threads(args.threads);
    let r = dlc_train::evaluate_file(&job, &args.model)
        .with_context(|| format!("evaluating {} failed", args.model.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "test loss {:.4}, test accuracy {:.2}% ({} samples)",
            r.loss,
            100.0 * r.accuracy,
            r.samples
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train(a),
        Command::Eval(a) => eval(a),
        Command::Bench(b) => bench::run(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
