//! The single-worker training loop.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use dlc_data::Prefetch;
use dlc_job::JobSpec;
use dlc_model::Net;

use crate::backend::{CpuTrain, GpuDevice, GpuTrain};
use crate::checkpoint::{self, LoopState};
use crate::data::JobData;
use crate::device::Device;
use crate::dist::GradSync;
use crate::eval::{evaluate, save_safetensors, EvalResult};
use crate::metrics::{MetricsSink, Record};
use crate::optim::AnyOptim;
use crate::progress::Progress;
use crate::task::{self, to_tensors};
use crate::TrainError;

/// Command-line overrides and output choices for a training run.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Override `[train] epochs`.
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps in total (checkpointing where it stops).
    pub max_steps: Option<usize>,
    /// Run directory (default `runs/<job>-<timestamp>`).
    pub out: Option<PathBuf>,
    /// Override `[train] seed`.
    pub seed: Option<u64>,
    /// Continue the run in this directory from its checkpoint.
    pub resume: Option<PathBuf>,
    /// No progress output.
    pub quiet: bool,
    /// Rank among the processes on this host (chooses the GPU); default: the global rank.
    pub local_rank: Option<usize>,
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Where its files are.
    pub run_dir: PathBuf,
    /// Optimizer steps done since the start of training (resumed runs included).
    pub global_step: usize,
    /// Epochs completed.
    pub epochs_completed: usize,
    /// Test metrics of the final model.
    pub test: EvalResult,
    /// Training throughput of this invocation (samples/s, excluding evaluation).
    pub samples_per_sec: f64,
    /// Wall time of this invocation.
    pub seconds: f64,
    /// Number of trainable parameters.
    pub params: usize,
    /// Device trained on (`cpu`, `cuda:N`).
    pub device: String,
    /// This process's peak resident memory in MiB (Linux; None elsewhere).
    pub peak_rss_mib: Option<f64>,
}

/// This process's peak resident set size (`VmHWM`) in MiB, where Linux reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Trains `job` as a single worker on the device `[train] device` names.
pub fn train(job: &JobSpec, opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    train_distributed(job, opts, GradSync::Local)
}

/// Trains `job` as one worker of a distributed job, on the device `[train] device`
/// names (workers on one host are spread over the visible GPUs by local rank).
pub fn train_distributed(
    job: &JobSpec,
    opts: &TrainOptions,
    mut sync: GradSync,
) -> Result<TrainSummary, TrainError> {
    let result = crate::device::resolve(job.train.device, opts.local_rank.unwrap_or(sync.rank()))
        .and_then(|(device, notice)| {
            if let Some(n) = notice {
                if !opts.quiet && sync.rank() == 0 {
                    eprintln!("{n}");
                }
            }
            let mut summary = match device {
                Device::Cpu => train_on::<CpuTrain>(job, opts, &Default::default(), &mut sync),
                Device::Cuda(i) => train_on::<GpuTrain>(job, opts, &GpuDevice::new(i), &mut sync),
            }?;
            summary.device = device.to_string();
            Ok(summary)
        });
    // Only a finished run leaves (in `GradSync::finish`); any error is this rank's
    // failure, told to every other rank with its reason.
    if let Err(e) = &result {
        sync.fail(&e.to_string());
    }
    result
}

/// A default run directory name: `runs/<job>-<UTC timestamp>`.
pub fn default_run_dir(job: &JobSpec) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_string();
    PathBuf::from("runs").join(format!("{}-{stamp}", job.display_name()))
}

/// Batches the loader thread prepares ahead of the training loop.
const PREFETCH_BATCHES: usize = 4;

/// Mixes the job seed with a counter into a per-step RNG seed.
fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

/// Trains `job` on backend `B` (generic so that GPU backends can follow), combining
/// gradients through `sync`. Only rank 0 writes the run directory and reports.
pub fn train_on<B: AutodiffBackend>(
    job: &JobSpec,
    opts: &TrainOptions,
    device: &B::Device,
    sync: &mut GradSync,
) -> Result<TrainSummary, TrainError> {
    let rank = sync.rank();
    let workers = sync.workers();
    let lead = rank == 0;
    let started = Instant::now();
    let mut spec = job.train.clone();
    if let Some(e) = opts.epochs {
        spec.epochs = e;
    }
    if let Some(s) = opts.seed {
        spec.seed = s;
    }
    if spec.epochs == 0 {
        return Err(TrainError::Usage("--epochs must be at least 1".into()));
    }
    let progress = Progress::new(opts.quiet || !lead);

    // Ranks load at their own pace (a large table takes a while): the others wait.
    let data = sync.busy("loading its data", || {
        JobData::load(&job.data, job.train.seed)
    })?;
    let plan = data.model_plan(&job.model)?;
    let scale = data.standardizer.as_ref();
    let params: usize = plan.iter().map(|l| l.params).sum();

    let run_dir = if lead {
        let dir = prepare_run_dir(job, opts)?;
        data.info().save(&dir)?;
        dir
    } else {
        opts.resume
            .clone()
            .or_else(|| opts.out.clone())
            .unwrap_or_default()
    };
    if matches!(sync, GradSync::Ps { .. }) && opts.resume.is_some() {
        return Err(TrainError::Usage(
            "--resume is not supported with the ps strategy yet (the optimizer state lives on the servers)".into(),
        ));
    }
    B::seed(device, spec.seed);
    let mut model = Net::<B>::new(&plan, device);
    let mut optim = AnyOptim::<B, Net<B>>::new(&spec);
    let mut state = LoopState::default();
    if opts.resume.is_some() {
        let (m, o, s) = checkpoint::load(&run_dir, model, optim, device)?;
        (model, optim, state) = (m, o, s);
        progress.println(&format!(
            "resuming {} at epoch {}, step {} (global step {})",
            run_dir.display(),
            state.epoch + 1,
            state.step_in_epoch,
            state.global_step
        ));
    }
    let mut metrics = if lead {
        Some(MetricsSink::open(&run_dir)?)
    } else {
        None
    };

    let source = data.batches(&spec, rank, workers);
    let shape = source.sample_shape();
    let steps_per_epoch = source.steps_per_epoch();
    if steps_per_epoch == 0 {
        return Err(TrainError::Usage(format!(
            "{} training samples make no full batch of {} (drop_last is on)",
            data.train.len(),
            spec.batch_size
        )));
    }
    progress.println(&format!(
        "training {} ({params} parameters) on {} samples ({}), {} test; {} steps/epoch × {} epochs; {}; run dir {}",
        job.display_name(),
        data.train.len(),
        data.train.describe(),
        data.test.len(),
        steps_per_epoch,
        spec.epochs,
        describe(sync),
        run_dir.display()
    ));
    let total_steps = opts
        .max_steps
        .unwrap_or(usize::MAX)
        .min(spec.epochs * steps_per_epoch)
        .saturating_sub(state.global_step);
    model = sync.init(model, total_steps)?;

    let mut trained_samples = 0usize;
    let mut train_seconds = 0.0f64;
    let mut stopped_early = false;
    let mut last_eval = None;

    while state.epoch < spec.epochs {
        let epoch_start = Instant::now();
        let mut loader = Prefetch::start(
            source.epoch(state.epoch, state.step_in_epoch),
            PREFETCH_BATCHES,
        )?;
        progress.start_epoch(
            state.epoch + 1,
            spec.epochs,
            steps_per_epoch,
            state.step_in_epoch,
        );
        let (mut loss_sum, mut loss_steps) = (0.0f64, 0usize);
        let (mut window_start, mut window_samples) = (Instant::now(), 0usize);
        let (mut window_comm, mut window_data) = (0.0f64, 0.0f64);
        while state.step_in_epoch < steps_per_epoch {
            if opts.max_steps.is_some_and(|m| state.global_step >= m) {
                stopped_early = true;
                break;
            }
            let batch = loader.next_batch().ok_or_else(|| {
                TrainError::Usage(format!(
                    "the data loader ended at step {} of {steps_per_epoch} in epoch {}",
                    state.step_in_epoch,
                    state.epoch + 1
                ))
            })??;
            window_data += loader.take_waited().as_secs_f64();
            let (local_n, global_n) = (batch.len(), batch.global_len);
            B::seed(
                device,
                step_seed(spec.seed, state.global_step * workers + rank),
            );
            let (grads, local_loss) = if batch.is_empty() {
                (None, 0.0)
            } else {
                model.check_tokens(&batch.inputs).map_err(|m| {
                    TrainError::Usage(format!(
                        "step {} of epoch {}: {m}",
                        state.step_in_epoch + 1,
                        state.epoch + 1
                    ))
                })?;
                let (x, y) = to_tensors::<B>(batch, shape, device);
                let loss = task::loss(model.forward(x), y);
                let loss_value: f64 = loss.clone().into_scalar().elem();
                if !loss_value.is_finite() {
                    return Err(TrainError::Usage(format!(
                        "training diverged at step {} (loss {loss_value}); lower train.learning_rate",
                        state.global_step
                    )));
                }
                (
                    Some(GradientsParams::from_grads(loss.backward(), &model)),
                    loss_value,
                )
            };
            let lr = spec.lr_schedule.rate(
                spec.learning_rate,
                state.global_step,
                spec.epochs * steps_per_epoch,
                spec.warmup_steps,
            );
            let comm_start = Instant::now();
            let stepped = sync.step(
                model, grads, local_loss, local_n, global_n, lr, &mut optim, device,
            )?;
            if !matches!(sync, GradSync::Local) {
                window_comm += comm_start.elapsed().as_secs_f64();
            }
            model = stepped.model;
            let loss_value = stepped.loss;
            state.step_in_epoch += 1;
            state.global_step += 1;
            loss_sum += loss_value;
            loss_steps += 1;
            // Job-wide samples: every worker trains its share of the global batch.
            window_samples += global_n;
            trained_samples += global_n;
            if state.global_step % spec.log_every == 0 {
                let secs = window_start.elapsed().as_secs_f64();
                let sps = window_samples as f64 / secs.max(1e-9);
                train_seconds += secs;
                let steps = spec.log_every as f64;
                if let Some(m) = metrics.as_mut() {
                    m.write(&Record::Step {
                        epoch: state.epoch + 1,
                        step: state.global_step,
                        loss: loss_value,
                        samples_per_sec: sps,
                        compute_s: (secs - window_comm - window_data).max(0.0) / steps,
                        comm_s: window_comm / steps,
                        data_s: window_data / steps,
                    })?;
                }
                progress.step(
                    state.step_in_epoch,
                    &format!("loss {loss_value:.4} · {sps:.0} samples/s"),
                    true,
                );
                (window_start, window_samples) = (Instant::now(), 0);
                (window_comm, window_data) = (0.0, 0.0);
            } else {
                progress.step(state.step_in_epoch, "", false);
            }
        }
        train_seconds += window_start.elapsed().as_secs_f64();
        if stopped_early {
            break;
        }
        model = sync.sync_buffers(model)?;
        if !lead {
            state.epoch += 1;
            state.step_in_epoch = 0;
            continue;
        }
        // The other ranks wait for this work in their next collective.
        let test = sync.busy(&format!("evaluating epoch {}", state.epoch + 1), || {
            evaluate(&model.valid(), data.test.as_ref(), scale, device)
        })?;
        state.epoch += 1;
        state.step_in_epoch = 0;
        let train_loss = loss_sum / loss_steps.max(1) as f64;
        if let Some(m) = metrics.as_mut() {
            m.write(&Record::Epoch {
                epoch: state.epoch,
                train_loss,
                test_loss: test.loss,
                test_accuracy: test.accuracy,
                test_rmse: test.rmse,
                test_mae: test.mae,
                seconds: epoch_start.elapsed().as_secs_f64(),
            })?;
        }
        progress.println(&format!(
            "epoch {}/{}: train loss {train_loss:.4}, test loss {:.4}, {} ({:.1}s)",
            state.epoch,
            spec.epochs,
            test.loss,
            test.describe(),
            epoch_start.elapsed().as_secs_f64()
        ));
        if !matches!(sync, GradSync::Ps { .. }) {
            sync.busy("writing a checkpoint", || {
                checkpoint::save(&run_dir, &model, &optim, state)
            })?;
        }
        last_eval = Some(test);
    }
    progress.finish();
    if stopped_early {
        model = sync.sync_buffers(model)?;
    }
    sync.finish()?;
    let test = if lead {
        if stopped_early && !matches!(sync, GradSync::Ps { .. }) {
            checkpoint::save(&run_dir, &model, &optim, state)?;
        }
        let test = match last_eval {
            Some(t) => t,
            None => evaluate(&model.valid(), data.test.as_ref(), scale, device)?,
        };
        save_safetensors(&model.valid(), &run_dir.join("model.safetensors"))?;
        test
    } else {
        EvalResult::none()
    };
    Ok(TrainSummary {
        run_dir,
        global_step: state.global_step,
        epochs_completed: state.epoch,
        test,
        samples_per_sec: trained_samples as f64 / train_seconds.max(1e-9),
        seconds: started.elapsed().as_secs_f64(),
        params,
        device: String::new(),
        peak_rss_mib: peak_rss_mib(),
    })
}

fn describe(sync: &GradSync) -> String {
    match sync {
        GradSync::Local => "1 worker".into(),
        GradSync::Ring(c) => format!("{} workers, ring all-reduce", c.world()),
        GradSync::Ps {
            workers,
            servers,
            mode,
            ..
        } => format!("{workers} workers, {servers} parameter server(s), {mode:?} mode"),
    }
}

/// Creates (or, when resuming, checks) the run directory and records the job in it.
fn prepare_run_dir(job: &JobSpec, opts: &TrainOptions) -> Result<PathBuf, TrainError> {
    if let Some(dir) = &opts.resume {
        if opts.out.as_ref().is_some_and(|o| o != dir) {
            return Err(TrainError::Usage(
                "--resume continues in its own directory; drop --out".into(),
            ));
        }
        if !checkpoint::dir(dir).join("state.json").exists() {
            return Err(TrainError::BadState {
                path: checkpoint::dir(dir),
                message: "no checkpoint to resume from".into(),
            });
        }
        return Ok(dir.clone());
    }
    let dir = opts.out.clone().unwrap_or_else(|| default_run_dir(job));
    if dir.join("metrics.jsonl").exists() {
        return Err(TrainError::Usage(format!(
            "{} already holds a run; choose another --out, or continue it with --resume {}",
            dir.display(),
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(TrainError::io(&dir))?;
    write_job(&dir, job)?;
    Ok(dir)
}

fn write_job(dir: &Path, job: &JobSpec) -> Result<(), TrainError> {
    let path = dir.join("job.toml");
    std::fs::write(&path, job.to_toml()).map_err(TrainError::io(&path))
}
