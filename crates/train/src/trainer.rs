//! The single-worker training loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::ElementConversion;
use dlc_data::Prefetch;
use dlc_job::{CheckpointEvery, JobSpec};
use dlc_model::Net;
use std::cell::Cell;

use crate::backend::{CpuTrain, GpuDevice, GpuTrain};
use crate::checkpoint::{self, LoopState, Snapshot};
use crate::data::JobData;
use crate::device::Device;
use crate::dist::{GradSync, GradTap, Local, Step};
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
    /// This process belongs to a job restarted after a failure: it continues from
    /// the newest checkpoint in its run directory when there is one.
    pub restart: Option<Restart>,
    /// Set to a signal number (SIGTERM, SIGUSR1) to stop training after the current
    /// step with a checkpoint; every rank stops at the same step.
    pub stop: Option<Arc<AtomicUsize>>,
    /// The launcher's id of this job (the same across its restarts): a restarted
    /// process continues only a run directory that this job created.
    pub launch_id: Option<String>,
    /// Fault injection for testing recovery: this process kills itself with SIGKILL
    /// right after finishing this global step (`DLC_FAULT_KILL_AT_STEP`).
    pub kill_at_step: Option<usize>,
}

/// How a restarted job came about (from the launcher).
#[derive(Debug, Clone, Default)]
pub struct Restart {
    /// Restarts so far (1 for the first).
    pub count: usize,
    /// Why the previous attempt ended.
    pub reason: String,
    /// Workers before the failure.
    pub workers_before: usize,
}

impl TrainOptions {
    /// The run directory to continue from: `--resume`, or after a restart the run
    /// directory when it holds a checkpoint.
    pub fn resume_dir(&self) -> Option<PathBuf> {
        self.resume.clone().or_else(|| {
            self.out
                .clone()
                .filter(|d| self.owns(d) && checkpoint::exists(d))
        })
    }

    /// Whether `dir` is this job's own run directory and this process a restart of
    /// it (the launch id rank 0 recorded there is this job's).
    fn owns(&self, dir: &Path) -> bool {
        match (&self.restart, &self.launch_id) {
            (Some(_), Some(id)) => std::fs::read_to_string(dir.join(LAUNCH_ID_FILE))
                .is_ok_and(|recorded| recorded == *id),
            _ => false,
        }
    }

    /// The signal this process was asked to stop by, if any.
    fn stop_signal(&self) -> Option<usize> {
        self.stop
            .as_ref()
            .map(|s| s.load(Ordering::SeqCst))
            .filter(|&s| s != 0)
    }
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
    /// The signal number that stopped training early (after a checkpoint), if one
    /// did ([`signal_name`] names it).
    pub stopped_by: Option<i32>,
    /// What rank 0's checkpoints cost (zero elsewhere).
    pub checkpoints: CheckpointCost,
}

/// Checkpoints written by this invocation and their mean cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointCost {
    /// Checkpoints written.
    pub written: usize,
    /// Mean milliseconds the training thread spent copying the state (training waits).
    pub copy_ms: f64,
    /// Mean milliseconds writing and fsyncing took on the writer's thread.
    pub write_ms: f64,
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
    train_distributed(job, opts, Local)
}

/// Trains `job` as one worker of a distributed job, on the device `[train] device`
/// names (workers on one host are spread over the visible GPUs by local rank).
pub fn train_distributed<S: GradSync>(
    job: &JobSpec,
    opts: &TrainOptions,
    mut sync: S,
) -> Result<TrainSummary, TrainError> {
    let result = crate::device::resolve(job.train.device, opts.local_rank.unwrap_or(sync.rank()))
        .and_then(|(device, notice)| {
            // Which GPU rank 0 took is said once; a fall-back to the CPU by every rank
            // that falls back (a rank on another host may be the one without a GPU).
            match (notice, device) {
                (Some(n), Device::Cpu) if !opts.quiet => eprintln!("rank {}: {n}", sync.rank()),
                (Some(n), _) if !opts.quiet && sync.rank() == 0 => eprintln!("{n}"),
                _ => {}
            }
            let mut summary = match device {
                Device::Cpu => train_on::<CpuTrain, S>(job, opts, &Default::default(), &mut sync),
                Device::Cuda(i) => {
                    let at = Cell::new(At::Setup);
                    device_errors(device, &at, || {
                        train_tracked::<GpuTrain, S>(job, opts, &GpuDevice::new(i), &mut sync, &at)
                    })
                }
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

/// Where a training run is, for an error that interrupts it without a `Result`
/// (a device's panic): set by the run as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Loading data, building or restoring the model.
    Setup,
    /// Training step `step` (counted over the whole run, from 1) of `epoch` (from 1).
    Step { step: usize, epoch: usize },
    /// Evaluating and checkpointing after epoch `epoch` (from 1).
    EpochEnd { epoch: usize },
    /// Saving the model and writing the summary.
    Finish,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Setup => write!(f, "while setting up"),
            At::Step { step, epoch } => write!(f, "at step {step} (epoch {epoch})"),
            At::EpochEnd { epoch } => write!(f, "after epoch {epoch} (evaluation, checkpoint)"),
            At::Finish => write!(f, "while saving the model"),
        }
    }
}

/// Burn's CUDA backend panics on device errors (out of memory, a kernel nvrtc cannot
/// compile, a lost GPU); here they become this rank's error naming the device and
/// where the run was (`at`), which the other ranks are told, instead of a panic.
fn device_errors<T>(
    device: Device,
    at: &Cell<At>,
    f: impl FnOnce() -> Result<T, TrainError>,
) -> Result<T, TrainError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message =
            crate::error::panic_message(&*panic).unwrap_or_else(|| "the backend panicked".into());
        Err(TrainError::Device {
            device: device.to_string(),
            at: at.get().to_string(),
            message,
        })
    })
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

/// The file in a run directory that names the launch that created it.
const LAUNCH_ID_FILE: &str = "launch-id";

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
///
/// The loop is a few phases of [`Run`]: prepare (data, run directory, model, a
/// checkpoint to continue from), step, epoch end (buffers, evaluation), checkpoint,
/// finish; what differs between strategies stays behind [`GradSync`].
pub fn train_on<B: GradTap, S: GradSync>(
    job: &JobSpec,
    opts: &TrainOptions,
    device: &B::Device,
    sync: &mut S,
) -> Result<TrainSummary, TrainError> {
    train_tracked::<B, S>(job, opts, device, sync, &Cell::new(At::Setup))
}

/// [`train_on`], telling `at` where the run is as it goes.
fn train_tracked<B: GradTap, S: GradSync>(
    job: &JobSpec,
    opts: &TrainOptions,
    device: &B::Device,
    sync: &mut S,
    at: &Cell<At>,
) -> Result<TrainSummary, TrainError> {
    at.set(At::Setup);
    let mut run = Run::<B>::prepare(job, opts, device, sync, at)?;
    let mut end = End::Done;
    while run.state.epoch < run.spec.epochs {
        end = run.train_epoch(sync)?;
        if end != End::Done {
            break;
        }
        at.set(At::EpochEnd {
            epoch: run.state.epoch + 1,
        });
        run.end_epoch(sync)?;
    }
    at.set(At::Finish);
    run.finish(sync, end)
}

/// Why an epoch's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The epoch (or training) ran to its end.
    Done,
    /// `--steps` was reached.
    MaxSteps,
    /// A rank was asked to stop by this signal.
    Signal(usize),
}

/// Everything one training run carries between its phases.
struct Run<'a, B: GradTap> {
    opts: &'a TrainOptions,
    /// Where the run is, for an error that interrupts it without a `Result`.
    at: &'a Cell<At>,
    device: &'a B::Device,
    spec: dlc_job::TrainSpec,
    rank: usize,
    workers: usize,
    lead: bool,
    started: Instant,
    progress: Progress,
    data: JobData,
    source: Box<dyn dlc_data::BatchSource>,
    params: usize,
    run_dir: PathBuf,
    model: Net<B>,
    optim: AnyOptim<B, Net<B>>,
    state: LoopState,
    metrics: Option<MetricsSink>,
    checkpoints: Option<Checkpoints>,
    trained_samples: usize,
    train_seconds: f64,
    last_eval: Option<EvalResult>,
    epoch_loss: (f64, usize),
    epoch_start: Instant,
}

/// Rank 0's checkpoint schedule and writer.
struct Checkpoints {
    every: Option<CheckpointEvery>,
    writer: checkpoint::Writer,
    last_step: usize,
    last_time: Instant,
    /// Time the training thread spent copying state for checkpoints.
    copy_time: std::time::Duration,
}

impl<'a, B: GradTap> Run<'a, B> {
    /// Loads the data, prepares the run directory, builds the model and optimizer
    /// (from a checkpoint when resuming or restarting) and makes replicas agree.
    fn prepare<S: GradSync>(
        job: &'a JobSpec,
        opts: &'a TrainOptions,
        device: &'a B::Device,
        sync: &mut S,
        at: &'a Cell<At>,
    ) -> Result<Self, TrainError> {
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
        let resume = opts.resume_dir();
        if let (Err(why), true) = (
            sync.checkpoints(),
            resume.is_some() || spec.checkpoint_every.is_some(),
        ) {
            return Err(TrainError::Usage(format!(
                "checkpoints (--resume, checkpoint_every) are not possible here: {why}"
            )));
        }
        let progress = Progress::new(opts.quiet || !lead);

        // Ranks load at their own pace (a large table takes a while): the others wait.
        let data = sync.busy("loading its data", || {
            JobData::load(&job.data, job.train.seed)
        })?;
        let plan = data.model_plan(&job.model)?;
        let params: usize = plan.iter().map(|l| l.params).sum();

        let run_dir = if lead {
            let dir = prepare_run_dir(job, opts, resume.as_deref())?;
            data.info().save(&dir)?;
            dir
        } else {
            resume
                .clone()
                .or_else(|| opts.out.clone())
                .unwrap_or_default()
        };
        B::seed(device, spec.seed);
        let mut model = Net::<B>::new(&plan, device);
        let mut state = LoopState::default();
        let mut restored = None;
        if resume.is_some() {
            let r = checkpoint::load(&run_dir, model, &spec, device)?;
            if let Some(w) = &r.warning {
                progress.println(&format!("warning: {w}"));
            }
            (model, state, restored) = (r.model, r.state, Some(r.optim));
            progress.println(&format!(
                "resuming {} at epoch {}, step {} (global step {}) on {workers} worker(s)",
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
        if let (Some(m), false) = (metrics.as_mut(), sync.peer_addrs().is_empty()) {
            m.write(&Record::World {
                workers,
                addrs: sync.peer_addrs().to_vec(),
                links: sync.links(),
            })?;
        }
        if let (Some(m), Some(r)) = (metrics.as_mut(), &opts.restart) {
            let lost = last_logged_step(&run_dir).saturating_sub(state.global_step);
            m.write(&Record::Restart {
                restart: r.count,
                reason: r.reason.clone(),
                workers_before: r.workers_before,
                workers_after: workers,
                step: state.global_step,
                steps_lost: lost,
            })?;
            progress.println(&format!(
                "restart {} after: {}; {} → {workers} worker(s), continuing at global step {} ({lost} step(s) done again)",
                r.count, r.reason, r.workers_before, state.global_step
            ));
        }

        let source = data.batches(&spec, rank, workers);
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
            sync.describe(),
            run_dir.display()
        ));
        let total_steps = opts
            .max_steps
            .unwrap_or(usize::MAX)
            .min(spec.epochs * steps_per_epoch)
            .saturating_sub(state.global_step);
        let (model, optim) = sync.init(
            model,
            AnyOptim::<B, Net<B>>::new(&spec),
            restored.as_ref(),
            &spec,
            total_steps,
            device,
        )?;
        let checkpoints = (lead && sync.checkpoints().is_ok()).then(|| Checkpoints {
            every: spec.checkpoint_every,
            writer: checkpoint::Writer::new(&run_dir),
            last_step: state.global_step,
            last_time: Instant::now(),
            copy_time: std::time::Duration::ZERO,
        });
        Ok(Self {
            at,
            opts,
            device,
            spec,
            rank,
            workers,
            lead,
            started,
            progress,
            data,
            source,
            params,
            run_dir,
            model,
            optim,
            state,
            metrics,
            checkpoints,
            trained_samples: 0,
            train_seconds: 0.0,
            last_eval: None,
            epoch_loss: (0.0, 0),
            epoch_start: Instant::now(),
        })
    }

    /// Trains the rest of the current epoch, or until `--steps` or a stop signal.
    fn train_epoch<S: GradSync>(&mut self, sync: &mut S) -> Result<End, TrainError> {
        let steps_per_epoch = self.source.steps_per_epoch();
        self.epoch_start = Instant::now();
        self.epoch_loss = (0.0, 0);
        let mut loader = Prefetch::start(
            self.source
                .epoch(self.state.epoch, self.state.step_in_epoch),
            PREFETCH_BATCHES,
        )?;
        self.progress.start_epoch(
            self.state.epoch + 1,
            self.spec.epochs,
            steps_per_epoch,
            self.state.step_in_epoch,
        );
        let mut window = Window::start();
        let mut end = End::Done;
        while self.state.step_in_epoch < steps_per_epoch {
            if self
                .opts
                .max_steps
                .is_some_and(|m| self.state.global_step >= m)
            {
                end = End::MaxSteps;
                break;
            }
            let batch = loader.next_batch().ok_or_else(|| {
                TrainError::Usage(format!(
                    "the data loader ended at step {} of {steps_per_epoch} in epoch {}",
                    self.state.step_in_epoch,
                    self.state.epoch + 1
                ))
            })??;
            window.data += loader.take_waited().as_secs_f64();
            let stopping = self.opts.stop_signal();
            let (loss, stop) = self.step(sync, batch, stopping, &mut window)?;
            if self.opts.kill_at_step == Some(self.state.global_step) {
                // SAFETY: raise(3) with a signal number; SIGKILL ends the process here.
                unsafe {
                    libc::raise(libc::SIGKILL);
                }
            }
            self.epoch_loss.0 += loss;
            self.epoch_loss.1 += 1;
            if self.state.global_step.is_multiple_of(self.spec.log_every) {
                self.log_window(&mut window, loss)?;
            } else {
                self.progress.step(self.state.step_in_epoch, "", false);
            }
            if let Some(sig) = stop {
                end = End::Signal(sig);
                break;
            }
            self.checkpoint_if_due(sync)?;
        }
        self.train_seconds += window.started.elapsed().as_secs_f64();
        Ok(end)
    }

    /// One optimizer step on `batch`; returns the (job-wide, where known) loss and
    /// the signal any rank was asked to stop by.
    fn step<S: GradSync>(
        &mut self,
        sync: &mut S,
        batch: dlc_data::Batch,
        stopping: Option<usize>,
        window: &mut Window,
    ) -> Result<(f64, Option<usize>), TrainError> {
        let (local_n, global_n) = (batch.len(), batch.global_len);
        let state = self.state;
        self.at.set(At::Step {
            step: state.global_step + 1,
            epoch: state.epoch + 1,
        });
        B::seed(
            self.device,
            step_seed(self.spec.seed, state.global_step * self.workers + self.rank),
        );
        let weight = crate::dist::share(local_n, global_n);
        let ((grads, local_loss), bucketed) = sync.compute(&self.model, weight, |tap| {
            if batch.is_empty() {
                return Ok((None, 0.0));
            }
            self.model.check_tokens(&batch.inputs).map_err(|m| {
                TrainError::Usage(format!(
                    "step {} of epoch {}: {m}",
                    state.step_in_epoch + 1,
                    state.epoch + 1
                ))
            })?;
            let (x, y) = to_tensors::<B>(batch, self.source.sample_shape(), self.device);
            let logits = match tap {
                Some(tap) => self.model.forward_hooked(x, tap),
                None => self.model.forward(x),
            };
            let loss = task::loss(logits, y);
            let loss_value: f64 = loss.clone().into_scalar().elem();
            if !loss_value.is_finite() {
                return Err(TrainError::Usage(format!(
                    "training diverged at step {} (loss {loss_value}); lower train.learning_rate",
                    state.global_step
                )));
            }
            Ok((
                Some(GradientsParams::from_grads(loss.backward(), &self.model)),
                loss_value,
            ))
        })?;
        let lr = self.spec.lr_schedule.rate(
            self.spec.learning_rate,
            state.global_step,
            self.spec.epochs * self.source.steps_per_epoch(),
            self.spec.warmup_steps,
        );
        // Moved out, not cloned: a clone shares every parameter's storage, so the
        // optimizer's in-place update would copy each one first (0.9 MB a step for
        // the MLP, 7 % of its step). An error ends the run, so the empty net left
        // behind is never trained on.
        let model = std::mem::replace(&mut self.model, Net { layers: Vec::new() });
        let stepped = sync.step(Step {
            model,
            grads,
            bucketed,
            loss: local_loss,
            local_n,
            global_n,
            lr,
            stop: stopping,
            optim: &mut self.optim,
            device: self.device,
        })?;
        window.comm += stepped.comm_s;
        window.comm_hidden += stepped.comm_hidden_s;
        self.model = stepped.model;
        self.state.step_in_epoch += 1;
        self.state.global_step += 1;
        // Job-wide samples: every worker trains its share of the global batch.
        window.samples += global_n;
        self.trained_samples += global_n;
        Ok((stepped.loss, stepped.stop))
    }

    /// Writes a step line and updates the progress display.
    fn log_window(&mut self, window: &mut Window, loss: f64) -> Result<(), TrainError> {
        let secs = window.started.elapsed().as_secs_f64();
        let sps = window.samples as f64 / secs.max(1e-9);
        self.train_seconds += secs;
        let steps = self.spec.log_every as f64;
        if let Some(m) = self.metrics.as_mut() {
            m.write(&Record::Step {
                epoch: self.state.epoch + 1,
                step: self.state.global_step,
                loss,
                samples_per_sec: sps,
                compute_s: (secs - window.comm - window.data).max(0.0) / steps,
                comm_s: window.comm / steps,
                comm_hidden_s: window.comm_hidden / steps,
                data_s: window.data / steps,
            })?;
        }
        self.progress.step(
            self.state.step_in_epoch,
            &format!("loss {loss:.4} · {sps:.0} samples/s"),
            true,
        );
        *window = Window::start();
        Ok(())
    }

    /// Rank 0 starts writing a checkpoint when `checkpoint_every` says one is due.
    fn checkpoint_if_due<S: GradSync>(&mut self, sync: &mut S) -> Result<(), TrainError> {
        // The epoch's end writes one anyway.
        let epoch_end = self.state.step_in_epoch == self.source.steps_per_epoch();
        let due = match &self.checkpoints {
            Some(_) if epoch_end => false,
            Some(c) => match c.every {
                Some(CheckpointEvery::Steps(n)) => self.state.global_step - c.last_step >= n,
                Some(CheckpointEvery::Period(p)) => c.last_time.elapsed() >= p,
                None => false,
            },
            None => false,
        };
        if due {
            self.checkpoint(sync)?;
        }
        Ok(())
    }

    /// Rank 0 copies the state and hands it to the writer thread (waiting for the
    /// previous write, announced: the other ranks wait for it in their next step).
    fn checkpoint<S: GradSync>(&mut self, sync: &mut S) -> Result<(), TrainError> {
        let Some(c) = self.checkpoints.as_mut() else {
            return Ok(());
        };
        let (model, optim, state, spec) = (&self.model, &self.optim, self.state, &self.spec);
        let samples = (self.state.step_in_epoch * self.spec.batch_size).min(self.data.train.len());
        let (workers, device) = (self.workers, self.device);
        let copying = Instant::now();
        // The other ranks wait for this in their next step; servers answer at once.
        let flat = sync.optimizer_state(model, optim, spec, device)?;
        sync.busy("writing a checkpoint", || {
            let snap = Snapshot::take(model, flat, spec, state, samples, workers)?;
            c.copy_time += copying.elapsed();
            c.writer.write(snap)
        })?;
        c.last_step = self.state.global_step;
        c.last_time = Instant::now();
        Ok(())
    }

    /// Averages buffers, and on rank 0 evaluates, reports and checkpoints.
    fn end_epoch<S: GradSync>(&mut self, sync: &mut S) -> Result<(), TrainError> {
        self.model = sync.sync_buffers(self.model.clone())?;
        self.state.epoch += 1;
        self.state.step_in_epoch = 0;
        if !self.lead {
            return Ok(());
        }
        // The other ranks wait for this work in their next collective.
        let (model, data, device) = (&self.model, &self.data, self.device);
        let test = sync.busy(&format!("evaluating epoch {}", self.state.epoch), || {
            evaluate(
                &model.valid(),
                data.test.as_ref(),
                data.standardizer.as_ref(),
                device,
            )
        })?;
        let train_loss = self.epoch_loss.0 / self.epoch_loss.1.max(1) as f64;
        let seconds = self.epoch_start.elapsed().as_secs_f64();
        if let Some(m) = self.metrics.as_mut() {
            m.write(&Record::Epoch {
                epoch: self.state.epoch,
                train_loss,
                test_loss: test.loss,
                test_accuracy: test.accuracy,
                test_rmse: test.rmse,
                test_mae: test.mae,
                seconds,
            })?;
        }
        self.progress.println(&format!(
            "epoch {}/{}: train loss {train_loss:.4}, test loss {:.4}, {} ({seconds:.1}s)",
            self.state.epoch,
            self.spec.epochs,
            test.loss,
            test.describe(),
        ));
        self.checkpoint(sync)?;
        self.last_eval = Some(test);
        Ok(())
    }

    /// Ends training: a checkpoint where it stopped early, every rank's goodbye, the
    /// final evaluation and weights.
    fn finish<S: GradSync>(mut self, sync: &mut S, end: End) -> Result<TrainSummary, TrainError> {
        self.progress.finish();
        if end != End::Done {
            self.model = sync.sync_buffers(self.model.clone())?;
            self.checkpoint(sync)?;
        }
        // Rank 0's files are complete before any rank leaves: under srun a rank that
        // exits non-zero (stopped by a signal) gets the others killed.
        let test = if self.lead {
            let ends = |run: &mut Self| -> Result<EvalResult, TrainError> {
                if let Some(c) = run.checkpoints.as_mut() {
                    c.writer.wait()?;
                }
                let test = match (end, run.last_eval.take()) {
                    (_, Some(t)) => t,
                    // Stopping on a signal is urgent (a time limit, a preemption).
                    (End::Signal(_), None) => EvalResult::none(),
                    (_, None) => evaluate(
                        &run.model.valid(),
                        run.data.test.as_ref(),
                        run.data.standardizer.as_ref(),
                        run.device,
                    )?,
                };
                save_safetensors(&run.model.valid(), &run.run_dir.join("model.safetensors"))?;
                Ok(test)
            };
            let test = sync.busy("writing its final files", || ends(&mut self))?;
            if let End::Signal(sig) = end {
                if let Some(m) = self.metrics.as_mut() {
                    m.write(&Record::Stop {
                        reason: signal_name(sig as i32),
                        step: self.state.global_step,
                    })?;
                }
            }
            test
        } else {
            EvalResult::none()
        };
        sync.finish()?;
        Ok(TrainSummary {
            run_dir: self.run_dir,
            global_step: self.state.global_step,
            epochs_completed: self.state.epoch,
            test,
            samples_per_sec: self.trained_samples as f64 / self.train_seconds.max(1e-9),
            seconds: self.started.elapsed().as_secs_f64(),
            params: self.params,
            device: String::new(),
            peak_rss_mib: peak_rss_mib(),
            checkpoints: self
                .checkpoints
                .as_ref()
                .map_or_else(Default::default, |c| {
                    let n = c.writer.written.max(1) as f64;
                    CheckpointCost {
                        written: c.writer.written,
                        copy_ms: c.copy_time.as_secs_f64() * 1e3 / n,
                        write_ms: c.writer.write_time.as_secs_f64() * 1e3 / n,
                    }
                }),
            stopped_by: match end {
                End::Signal(sig) => Some(sig as i32),
                _ => None,
            },
        })
    }
}

/// Throughput bookkeeping between step lines.
struct Window {
    started: Instant,
    samples: usize,
    comm: f64,
    comm_hidden: f64,
    data: f64,
}

impl Window {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            samples: 0,
            comm: 0.0,
            comm_hidden: 0.0,
            data: 0.0,
        }
    }
}

/// `SIGTERM`, `SIGUSR1`, … for a signal number.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGINT => "SIGINT".into(),
        s => format!("signal {s}"),
    }
}

/// The highest step of a step line in `run/metrics.jsonl` (0 without one).
fn last_logged_step(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step")
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0) as usize
}

/// Creates (or, when resuming, checks) the run directory and records the job in it.
fn prepare_run_dir(
    job: &JobSpec,
    opts: &TrainOptions,
    resume: Option<&Path>,
) -> Result<PathBuf, TrainError> {
    if let Some(dir) = resume {
        if opts.resume.is_some() && opts.out.as_ref().is_some_and(|o| o != dir) {
            return Err(TrainError::Usage(
                "--resume continues in its own directory; drop --out".into(),
            ));
        }
        if !checkpoint::exists(dir) {
            return Err(TrainError::BadState {
                path: checkpoint::dir(dir),
                message: "no checkpoint to resume from".into(),
            });
        }
        return Ok(dir.to_path_buf());
    }
    let dir = opts.out.clone().unwrap_or_else(|| default_run_dir(job));
    // A restarted job without a checkpoint yet starts again in its own directory.
    if dir.join("metrics.jsonl").exists() && !opts.owns(&dir) {
        return Err(TrainError::Usage(format!(
            "{} already holds a run; choose another --out, or continue it with --resume {}",
            dir.display(),
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(TrainError::io(&dir))?;
    write_job(&dir, job)?;
    if let Some(id) = &opts.launch_id {
        let path = dir.join(LAUNCH_ID_FILE);
        std::fs::write(&path, id).map_err(TrainError::io(&path))?;
    }
    Ok(dir)
}

fn write_job(dir: &Path, job: &JobSpec) -> Result<(), TrainError> {
    let path = dir.join("job.toml");
    std::fs::write(&path, job.to_toml()).map_err(TrainError::io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_panic_becomes_an_error_naming_the_device() {
        let at = Cell::new(At::Setup);
        let e = device_errors::<()>(Device::Cuda(1), &at, || {
            at.set(At::Step { step: 12, epoch: 2 });
            panic!("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")")
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("training on cuda:1 failed at step 12 (epoch 2): ")
                && e.contains("OUT_OF_MEMORY"),
            "{e}"
        );
        let e = device_errors::<()>(Device::Cuda(0), &Cell::new(At::Setup), || panic!("nvrtc"));
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("cuda:0 failed while setting up: nvrtc"));
        // Errors and results pass through untouched.
        assert_eq!(device_errors(Device::Cuda(0), &at, || Ok(7)).unwrap(), 7);
        let e = device_errors::<()>(Device::Cuda(0), &at, || Err(TrainError::Usage("no".into())));
        assert!(matches!(e, Err(TrainError::Usage(_))));
    }
}
