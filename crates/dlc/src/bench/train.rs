//! `dlc bench train`: steady-state training throughput per CPU thread count, the way
//! PyTorch training is usually timed (samples/s after a warm-up, threads fixed per
//! process), so the two compare in one session.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Job file to train (its model, data, batch size and optimizer).
    job: PathBuf,
    /// CPU thread counts, comma-separated: one training process per count.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Workers per run (job-wide samples/s; threads are per worker).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Gradients on the wire between workers: `none`, `bf16` or `fp16`
    /// [default: the job's `[distributed] compression`].
    #[arg(long, value_parser = ["none", "bf16", "fp16"])]
    compression: Option<String>,
    /// Measured steps per run, after the skipped ones.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Steps skipped before measuring (warm-up: allocation, caches, the loader).
    #[arg(long, default_value_t = 20)]
    skip_steps: usize,
    /// Rounds; each round runs every thread count once (interleaved, so drift in the
    /// machine's speed spreads over all of them).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The model's name in the rows (to match a PyTorch run's, e.g. `cnn`)
    /// [default: the job's preset, else the job's name].
    #[arg(long)]
    model: Option<String>,
    /// One JSON object per run on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// One run's measurement.
struct Run {
    threads_per_proc: usize,
    samples_per_sec: f64,
}

/// Runs `dlc bench train`.
pub fn run(a: TrainArgs) -> Result<()> {
    if a.threads.is_empty()
        || a.threads.contains(&0)
        || a.steps == 0
        || a.rounds == 0
        || a.workers == 0
    {
        bail!("--threads, --steps, --rounds and --workers must be at least 1");
    }
    let mut job = crate::train::native_job(&a.job)?;
    // One step line per step; no checkpoints; enough epochs for every step.
    job.train.log_every = 1;
    job.train.checkpoint_every = None;
    match a.compression.as_deref() {
        Some("bf16") => job.distributed.compression = dlc_job::Compression::Bf16,
        Some("fp16") => job.distributed.compression = dlc_job::Compression::Fp16,
        Some(_) => job.distributed.compression = dlc_job::Compression::None,
        None => {}
    }
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, job.to_toml()).context("writing the benchmark's job file")?;
    let total = a.skip_steps + a.steps;
    let exe = std::env::current_exe().context("locating the dlc binary")?;
    let model = a.model.clone().unwrap_or_else(|| match job.model.preset {
        Some(p) => format!("{p:?}").to_lowercase(),
        None => job.display_name().to_string(),
    });
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..a.rounds {
        for &threads in &a.threads {
            let out = dir.path().join(format!("r{round}-t{threads}"));
            let mut cmd = Command::new(&exe);
            cmd.arg("train")
                .arg(&job_file)
                .args(["--out", &out.display().to_string(), "-q"])
                .args(["--steps", &total.to_string()])
                // Enough epochs for every step (the schedule does not change speed).
                .args(["--epochs", &total.max(job.train.epochs).to_string()]);
            if a.workers > 1 {
                cmd.args(["--workers", &a.workers.to_string()])
                    .args(["--threads-per-worker", &threads.to_string()]);
            } else {
                cmd.args(["--threads", &threads.to_string()]);
            }
            if !a.json {
                eprintln!(
                    "round {}/{}: {} thread(s) × {} worker(s), {total} steps…",
                    round + 1,
                    a.rounds,
                    threads,
                    a.workers
                );
            }
            let o = cmd.output().context("starting dlc train")?;
            if !o.status.success() {
                bail!(
                    "dlc train failed ({}):\n{}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            let (measured, sps) = steady_rate(
                &out.join("metrics.jsonl"),
                a.skip_steps,
                job.train.batch_size,
            )?;
            if a.json {
                // The fields a PyTorch throughput script prints, where they mean the same.
                let row = serde_json::json!({
                    "bench": "train",
                    "framework": "dlc",
                    "job": job.display_name(),
                    "model": model,
                    "threads_per_proc": threads,
                    "procs": a.workers,
                    "batch": job.train.batch_size,
                    "optimizer": format!("{:?}", job.train.optimizer).to_lowercase(),
                    "round": round,
                    "skip_steps": a.skip_steps,
                    "measured_steps": measured,
                    "samples_per_sec": sps,
                });
                println!("{row}");
            }
            let r = Run {
                threads_per_proc: threads,
                samples_per_sec: sps,
            };
            runs.push(r);
        }
    }
    if !a.json {
        println!(
            "{}: batch {}, {} measured steps after {} skipped, {} round(s), {} worker(s)",
            job.display_name(),
            job.train.batch_size,
            a.steps,
            a.skip_steps,
            a.rounds,
            a.workers
        );
        println!(
            "{:>8} {:>12} {:>22}",
            "threads", "samples/s", "spread (min–max)"
        );
        for &t in &a.threads {
            let mut v: Vec<f64> = runs
                .iter()
                .filter(|r| r.threads_per_proc == t)
                .map(|r| r.samples_per_sec)
                .collect();
            v.sort_by(f64::total_cmp);
            let med = v[v.len() / 2];
            println!(
                "{t:>8} {med:>12.0} {:>22}",
                format!("{:.0}–{:.0}", v[0], v[v.len() - 1])
            );
        }
        println!(
            "compare with PyTorch on this machine: the same model, batch and optimizer, \
             torch.set_num_threads({}), samples/s after the same warm-up",
            a.threads
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(())
}

/// Samples per second over the step lines after `skip` steps: every step line holds
/// one step of `batch` samples (`log_every = 1`), so its time is `batch / rate`.
fn steady_rate(metrics: &std::path::Path, skip: usize, batch: usize) -> Result<(usize, f64)> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let (mut steps, mut secs, mut samples) = (0usize, 0.0f64, 0.0f64);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not JSON: {line}", metrics.display()))?;
        if v["kind"] != "step" || v["step"].as_u64().unwrap_or(0) as usize <= skip {
            continue;
        }
        let sps = v["samples_per_sec"].as_f64().unwrap_or(0.0);
        let n = batch as f64;
        if sps > 0.0 {
            steps += 1;
            samples += n;
            secs += n / sps;
        }
    }
    if steps == 0 {
        bail!("{}: no step after the {skip} skipped", metrics.display());
    }
    Ok((steps, samples / secs))
}

#[cfg(test)]
mod tests {
    use super::steady_rate;

    #[test]
    fn the_steady_rate_is_samples_over_time_after_the_skipped_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        // Steps 1–2 slow (skipped); steps 3–4 at 100 and 300 samples/s with batch 60:
        // 0.6 s + 0.2 s for 120 samples = 150 samples/s (not the mean of the rates).
        let lines = [
            r#"{"kind":"step","step":1,"samples_per_sec":1.0}"#,
            r#"{"kind":"step","step":2,"samples_per_sec":2.0}"#,
            r#"{"kind":"epoch","epoch":1}"#,
            r#"{"kind":"step","step":3,"samples_per_sec":100.0}"#,
            r#"{"kind":"step","step":4,"samples_per_sec":300.0}"#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let (steps, rate) = steady_rate(&path, 2, 60).unwrap();
        assert_eq!(steps, 2);
        assert!((rate - 150.0).abs() < 1e-9, "{rate}");
        assert!(steady_rate(&path, 4, 60).is_err());
    }
}
