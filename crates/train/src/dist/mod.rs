//! Data-parallel training across processes: how a worker combines its gradients
//! with the others' (the network graph, chosen by `[distributed] strategy`).
//!
//! * [`GradSync::Local`]: one worker, the optimizer steps on its own gradients.
//! * [`GradSync::Ring`]: gradients are flattened (fixed, rank-independent order),
//!   weighted by `local samples / global batch`, summed with ring all-reduce and
//!   written back; every worker applies the same optimizer step. With
//!   `[distributed] compression` the gradients travel as bf16 or fp16.
//! * [`GradSync::Ps`]: workers push weighted gradient shards to parameter servers,
//!   which run the optimizer ([`ps::serve`]), and pull fresh parameters back.
//!
//! Every strategy hands its optimizer state over as one [`FlatState`], so a checkpoint
//! does not depend on the strategy that wrote it.

pub mod flat;
pub mod ps;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use dlc_comm::{CommError, Communicator, Compression, ReduceOp};
use dlc_job::PsMode;
use dlc_model::Net;

use flat::Which;

use crate::optim::{slot_names, AnyOptim, FlatState, NetOptim};
use crate::TrainError;

/// The network graph seen from one worker.
pub enum GradSync {
    /// Single worker.
    Local,
    /// Ring all-reduce among `comm.world()` workers, gradients on the wire as
    /// `Compression` says.
    Ring(Communicator, Compression),
    /// Parameter servers: ranks `workers..workers + servers` of `comm`.
    Ps {
        /// Links to every rank.
        comm: Communicator,
        /// Number of workers (ranks `0..workers`).
        workers: usize,
        /// Number of servers.
        servers: usize,
        /// Sync or async.
        mode: PsMode,
        /// Trainable parameters (known from [`GradSync::init`] on).
        params: usize,
    },
}

/// One worker's share of a step, handed to [`GradSync::step`].
pub struct Step<'a, B: AutodiffBackend> {
    /// The model before the step.
    pub model: Net<B>,
    /// This worker's gradients (`None` when it had no samples).
    pub grads: Option<GradientsParams>,
    /// This worker's mean loss over its samples.
    pub loss: f64,
    /// This worker's samples in the step.
    pub local_n: usize,
    /// The step's samples over all workers.
    pub global_n: usize,
    /// Learning rate of the step.
    pub lr: f64,
    /// The signal this worker was asked to stop by, if any.
    pub stop: Option<usize>,
    /// The optimizer (ring and one worker; servers run their own).
    pub optim: &'a mut AnyOptim<B, Net<B>>,
    /// Where tensors live.
    pub device: &'a B::Device,
}

/// Result of one synchronised step.
pub struct Stepped<B: AutodiffBackend> {
    /// The updated model.
    pub model: Net<B>,
    /// Job-wide mean loss when the strategy computes it (ring), else the local loss.
    pub loss: f64,
    /// A stop signal some worker was asked to stop by: every worker learns it in the
    /// same step, so all stop together.
    pub stop: Option<usize>,
    /// Seconds spent exchanging gradients and parameters.
    pub comm_s: f64,
}

impl GradSync {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        match self {
            GradSync::Local => 1,
            GradSync::Ring(c, _) => c.world(),
            GradSync::Ps { workers, .. } => *workers,
        }
    }

    /// Every rank's address for peer links in rank order (empty for one worker).
    pub fn peer_addrs(&self) -> &[String] {
        match self {
            GradSync::Local => &[],
            GradSync::Ring(c, _) | GradSync::Ps { comm: c, .. } => c.peer_addrs(),
        }
    }

    /// What carries this rank's link to each rank (`shm`, `tcp`; `None` for itself
    /// and ranks it has no link to); empty for one worker.
    pub fn links(&self) -> Vec<Option<&'static str>> {
        match self {
            GradSync::Local => Vec::new(),
            GradSync::Ring(c, _) | GradSync::Ps { comm: c, .. } => c
                .transports()
                .into_iter()
                .map(|t| t.map(|t| t.name()))
                .collect(),
        }
    }

    /// How the job combines gradients, for the start-of-training line.
    pub fn describe(&self) -> String {
        match self {
            GradSync::Local => "1 worker".into(),
            GradSync::Ring(c, Compression::None) => {
                format!("{} workers, ring all-reduce", c.world())
            }
            GradSync::Ring(c, z) => {
                format!("{} workers, ring all-reduce, {z} gradients", c.world())
            }
            GradSync::Ps {
                workers,
                servers,
                mode,
                ..
            } => format!("{workers} workers, {servers} parameter server(s), {mode:?} mode"),
        }
    }

    /// Whether the job's state can be checkpointed (and the job stopped on a signal
    /// after a step every worker agrees on); else why not.
    pub fn checkpoints(&self) -> Result<(), String> {
        match self {
            GradSync::Local | GradSync::Ring(..) => Ok(()),
            GradSync::Ps {
                mode: PsMode::Sync, ..
            } => Ok(()),
            GradSync::Ps {
                mode: PsMode::Async,
                ..
            } => Err(
                "asynchronous parameter servers apply each worker's gradients as they arrive, \
                 so there is no step at which the job's state is one consistent whole; use \
                 ps_mode = \"sync\" or the ring strategy"
                    .into(),
            ),
        }
    }

    /// The optimizer state of the whole job (rank 0: from the servers with `ps`).
    pub fn optimizer_state<B: AutodiffBackend>(
        &mut self,
        model: &Net<B>,
        optim: &AnyOptim<B, Net<B>>,
        spec: &dlc_job::TrainSpec,
        device: &B::Device,
    ) -> Result<FlatState, TrainError> {
        match self {
            GradSync::Local | GradSync::Ring(..) => optim.export(model, device),
            GradSync::Ps {
                comm,
                workers,
                servers,
                params,
                ..
            } => Ok(ps::gather_state(
                comm,
                *workers,
                *servers,
                *params,
                slot_names(spec).len(),
            )?),
        }
    }

    /// This worker's rank.
    pub fn rank(&self) -> usize {
        match self {
            GradSync::Local => 0,
            GradSync::Ring(c, _) | GradSync::Ps { comm: c, .. } => c.rank(),
        }
    }

    /// Makes every replica start from the same parameters — rank 0's (ring), or the
    /// servers' copy of rank 0's (ps) — and puts the optimizer state of a checkpoint
    /// (`restored`) where the strategy keeps it: in the workers' optimizer, or in the
    /// servers' (from rank 0). `total_steps` tells asynchronous servers when to stop.
    pub fn init<B: AutodiffBackend>(
        &mut self,
        model: Net<B>,
        optim: NetOptim<B>,
        restored: Option<&FlatState>,
        spec: &dlc_job::TrainSpec,
        total_steps: usize,
        device: &B::Device,
    ) -> Result<(Net<B>, NetOptim<B>), TrainError> {
        // The workers' optimizer steps with ring and alone; servers' with ps.
        let optim = match (&*self, restored) {
            (GradSync::Local | GradSync::Ring(..), Some(state)) => {
                optim.import(&model, state, device)?
            }
            _ => optim,
        };
        match self {
            GradSync::Local => Ok((model, optim)),
            GradSync::Ring(comm, _) => {
                let mut all = flat::params_to_flat(&model, Which::All);
                comm.named("parameters").broadcast(&mut all, 0)?;
                Ok((flat::params_from_flat(model, &all, Which::All), optim))
            }
            GradSync::Ps {
                comm,
                workers,
                servers,
                params,
                ..
            } => {
                let values = flat::params_to_flat(&model, Which::Trainable);
                *params = values.len();
                if comm.rank() == 0 {
                    comm.kv_set("ps/params", &values.len().to_string())?;
                    comm.kv_set("ps/steps", &total_steps.to_string())?;
                    let empty = FlatState::default();
                    let state = restored.unwrap_or(&empty);
                    let slots = slot_names(spec).len();
                    let msgs: Vec<Vec<f32>> = (0..*servers)
                        .map(|s| ps::init_message(&values, state, slots, s, *servers))
                        .collect();
                    let sends: Vec<(usize, &[f32])> = msgs
                        .iter()
                        .enumerate()
                        .map(|(s, m)| (*workers + s, &m[..]))
                        .collect();
                    comm.exchange(&sends, &mut [])?;
                }
                let (fresh, _) = ps::pull(comm, *workers, *servers, values.len(), 0)?;
                Ok((
                    flat::params_from_flat(model, &fresh, Which::Trainable),
                    optim,
                ))
            }
        }
    }

    /// Combines this worker's gradients (from `local_n` of the step's `global_n`
    /// samples) and updates the model.
    pub fn step<B: AutodiffBackend>(&mut self, s: Step<'_, B>) -> Result<Stepped<B>, CommError> {
        let Step {
            model,
            grads,
            loss,
            local_n,
            global_n,
            lr,
            stop,
            optim,
            device,
        } = s;
        let weight = local_n as f32 / global_n.max(1) as f32;
        // Room for the values that ride along with the gradients (loss, stops).
        const SPARE: usize = 3;
        let flat_grads = |model: &Net<B>, grads: Option<GradientsParams>, w: f32| match grads {
            Some(g) => flat::grads_to_flat(model, &g, w, SPARE),
            None => {
                let mut v = vec![0.0; flat::params_to_flat(model, Which::Trainable).len()];
                v.reserve(SPARE);
                v
            }
        };
        let started = std::time::Instant::now();
        match self {
            GradSync::Local => {
                let grads = grads.unwrap_or_default();
                Ok(Stepped {
                    model: optim.step(lr, model, grads),
                    loss,
                    stop,
                    comm_s: 0.0,
                })
            }
            GradSync::Ring(comm, compression) => {
                let mut v = flat_grads(&model, grads, weight);
                // More sums ride along: the loss, and how many workers were asked to
                // stop to requeue (SIGUSR1) and to end (SIGTERM, SIGINT).
                let requeue = stop == Some(libc::SIGUSR1 as usize);
                let mut extra = [
                    loss as f32 * weight,
                    f32::from(u8::from(requeue)),
                    f32::from(u8::from(stop.is_some() && !requeue)),
                ];
                if *compression == Compression::None {
                    v.extend_from_slice(&extra);
                    comm.named("gradients").all_reduce(&mut v, ReduceOp::Sum)?;
                    let tail = v.split_off(v.len() - extra.len());
                    extra.copy_from_slice(&tail);
                } else {
                    // Compressed gradients; the loss and the stop counts stay exact
                    // in a small f32 sum of their own.
                    comm.named("gradients").all_reduce_compressed(
                        &mut v,
                        ReduceOp::Sum,
                        *compression,
                    )?;
                    comm.named("loss and stops")
                        .all_reduce(&mut extra, ReduceOp::Sum)?;
                }
                let comm_s = started.elapsed().as_secs_f64();
                let [global_loss, requeueing, ending] = extra;
                let stop = agreed_stop(stop, requeueing, ending);
                let global_loss = global_loss as f64;
                let g = flat::grads_from_flat(&model, v, device);
                Ok(Stepped {
                    model: optim.step(lr, model, g),
                    loss: global_loss,
                    stop,
                    comm_s,
                })
            }
            GradSync::Ps {
                comm,
                workers,
                servers,
                mode,
                ..
            } => {
                // Async servers apply each worker's mean gradient on its own; a worker
                // without samples asks for the parameters without a step (an Adam
                // step on a zero gradient would still move them).
                let (w, lr) = match mode {
                    PsMode::Sync => (weight, lr as f32),
                    PsMode::Async if local_n == 0 => (1.0, ps::NO_STEP),
                    PsMode::Async => (1.0, lr as f32),
                };
                let v = flat_grads(&model, grads, w);
                let n = v.len();
                let sync = *mode == PsMode::Sync;
                let ctl = match stop {
                    Some(s) if s == libc::SIGUSR1 as usize => ps::Ctl::StepRequeue,
                    Some(_) => ps::Ctl::StepEnd,
                    None => ps::Ctl::Step,
                };
                let msgs: Vec<Vec<f32>> = (0..*servers)
                    .map(|s| {
                        let mut m = v[ps::shard(n, s, *servers)].to_vec();
                        m.push(lr);
                        if sync {
                            m.push(ctl.word());
                        }
                        m
                    })
                    .collect();
                let sends: Vec<(usize, &[f32])> = msgs
                    .iter()
                    .enumerate()
                    .map(|(s, m)| (*workers + s, &m[..]))
                    .collect();
                comm.exchange(&sends, &mut [])?;
                // Synchronous servers count the workers asked to stop (requeue, end).
                let (fresh, counts) = ps::pull(comm, *workers, *servers, n, 2 * usize::from(sync))?;
                let stop = match counts[..] {
                    [requeueing, ending] => agreed_stop(stop, requeueing, ending),
                    // Asynchronous workers run on their own: they ignore signals.
                    _ => None,
                };
                Ok(Stepped {
                    model: flat::params_from_flat(model, &fresh, Which::Trainable),
                    loss,
                    stop,
                    comm_s: started.elapsed().as_secs_f64(),
                })
            }
        }
    }

    /// Makes the non-trainable buffers (batch-norm running statistics) the mean
    /// over workers, so every replica — and the saved model — reflects all data.
    pub fn sync_buffers<B: AutodiffBackend>(&mut self, model: Net<B>) -> Result<Net<B>, CommError> {
        match self {
            GradSync::Ring(comm, _) => {
                let mut v = flat::params_to_flat(&model, Which::Buffers);
                if v.is_empty() {
                    return Ok(model);
                }
                comm.named("batch-norm statistics")
                    .all_reduce(&mut v, ReduceOp::Mean)?;
                Ok(flat::params_from_flat(model, &v, Which::Buffers))
            }
            // Servers hold trainable parameters only: workers swap their buffers
            // directly and average them in rank order (the same result on each).
            GradSync::Ps { comm, workers, .. } => {
                let mine = flat::params_to_flat(&model, Which::Buffers);
                if mine.is_empty() || *workers < 2 {
                    return Ok(model);
                }
                let me = comm.rank();
                let mut theirs: Vec<Vec<f32>> = (0..*workers)
                    .map(|w| {
                        if w == me {
                            Vec::new()
                        } else {
                            vec![0.0; mine.len()]
                        }
                    })
                    .collect();
                let sends: Vec<(usize, &[f32])> = (0..*workers)
                    .filter(|&w| w != me)
                    .map(|w| (w, &mine[..]))
                    .collect();
                let mut recvs: Vec<(usize, &mut [f32])> = theirs
                    .iter_mut()
                    .enumerate()
                    .filter(|(w, _)| *w != me)
                    .map(|(w, b)| (w, &mut b[..]))
                    .collect();
                comm.exchange(&sends, &mut recvs)?;
                let mut mean = vec![0.0f32; mine.len()];
                for (w, b) in theirs.iter().enumerate() {
                    let b = if w == me { &mine } else { b };
                    mean.iter_mut().zip(b).for_each(|(m, x)| *m += *x);
                }
                let k = *workers as f32;
                mean.iter_mut().for_each(|m| *m /= k);
                Ok(flat::params_from_flat(model, &mean, Which::Buffers))
            }
            GradSync::Local => Ok(model),
        }
    }

    /// Runs `work`, long local work that other ranks may wait for, announced to the
    /// job as `what` (see [`Communicator::busy`]).
    pub fn busy<R>(&mut self, what: &str, work: impl FnOnce() -> R) -> R {
        match self {
            GradSync::Local => work(),
            GradSync::Ring(c, _) | GradSync::Ps { comm: c, .. } => c.busy(what, work),
        }
    }

    /// Waits for every rank (workers and servers) at the end of training, then
    /// announces this rank's clean exit.
    pub fn finish(&mut self) -> Result<(), CommError> {
        if let GradSync::Ps {
            comm,
            workers,
            servers,
            mode: PsMode::Sync,
            params,
        } = self
        {
            if comm.rank() == 0 {
                ps::finish(comm, *workers, *servers, *params)?;
            }
        }
        match self {
            GradSync::Local => Ok(()),
            GradSync::Ring(c, _) | GradSync::Ps { comm: c, .. } => {
                c.named("end of training").barrier()?;
                c.leave();
                Ok(())
            }
        }
    }

    /// Reports this rank's failure to every other rank (see
    /// [`Communicator::fail`]).
    pub fn fail(&mut self, reason: &str) {
        match self {
            GradSync::Local => {}
            GradSync::Ring(c, _) | GradSync::Ps { comm: c, .. } => c.fail(reason),
        }
    }
}

/// The stop every worker agrees on, from its own signal and how many workers were
/// asked to requeue and to end: ending wins over requeueing (the job is being taken
/// down).
fn agreed_stop(own: Option<usize>, requeueing: f32, ending: f32) -> Option<usize> {
    let requeue = own == Some(libc::SIGUSR1 as usize);
    match (ending > 0.0, requeueing > 0.0) {
        (true, _) => Some(own.filter(|_| !requeue).unwrap_or(libc::SIGTERM as usize)),
        (false, true) => Some(libc::SIGUSR1 as usize),
        (false, false) => None,
    }
}
