//! Data-parallel training across processes: how a worker combines its gradients
//! with the others' (the network graph, chosen by `[distributed] strategy`).
//!
//! * [`GradSync::Local`]: one worker, the optimizer steps on its own gradients.
//! * [`GradSync::Ring`]: gradients are flattened (fixed, rank-independent order),
//!   weighted by `local samples / global batch`, summed with ring all-reduce and
//!   written back; every worker applies the same optimizer step.
//! * [`GradSync::Ps`]: workers push weighted gradient shards to parameter servers,
//!   which run the optimizer ([`ps::serve`]), and pull fresh parameters back.

pub mod flat;
pub mod ps;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use dlc_comm::{CommError, Communicator, ReduceOp};
use dlc_job::PsMode;
use dlc_model::Net;

use flat::Which;

use crate::optim::AnyOptim;

/// The network graph seen from one worker.
pub enum GradSync {
    /// Single worker.
    Local,
    /// Ring all-reduce among `comm.world()` workers.
    Ring(Communicator),
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
    },
}

/// Result of one synchronised step.
pub struct Stepped<B: AutodiffBackend> {
    /// The updated model.
    pub model: Net<B>,
    /// Job-wide mean loss when the strategy computes it (ring), else the local loss.
    pub loss: f64,
}

impl GradSync {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        match self {
            GradSync::Local => 1,
            GradSync::Ring(c) => c.world(),
            GradSync::Ps { workers, .. } => *workers,
        }
    }

    /// This worker's rank.
    pub fn rank(&self) -> usize {
        match self {
            GradSync::Local => 0,
            GradSync::Ring(c) | GradSync::Ps { comm: c, .. } => c.rank(),
        }
    }

    /// Makes every replica start from the same parameters: rank 0's (ring), or the
    /// servers' copy of rank 0's (ps). `total_steps` tells servers when to stop.
    pub fn init<B: AutodiffBackend>(
        &mut self,
        model: Net<B>,
        total_steps: usize,
    ) -> Result<Net<B>, CommError> {
        match self {
            GradSync::Local => Ok(model),
            GradSync::Ring(comm) => {
                let mut all = flat::params_to_flat(&model, Which::All);
                comm.named("parameters").broadcast(&mut all, 0)?;
                Ok(flat::params_from_flat(model, &all, Which::All))
            }
            GradSync::Ps {
                comm,
                workers,
                servers,
                ..
            } => {
                let params = flat::params_to_flat(&model, Which::Trainable);
                if comm.rank() == 0 {
                    comm.kv_set("ps/params", &params.len().to_string())?;
                    comm.kv_set("ps/steps", &total_steps.to_string())?;
                    let shards: Vec<(usize, &[f32])> = (0..*servers)
                        .map(|s| (*workers + s, &params[ps::shard(params.len(), s, *servers)]))
                        .collect();
                    comm.exchange(&shards, &mut [])?;
                }
                let fresh = ps::pull(comm, *workers, *servers, params.len())?;
                Ok(flat::params_from_flat(model, &fresh, Which::Trainable))
            }
        }
    }

    /// Combines this worker's gradients (from `local_n` of the step's `global_n`
    /// samples; `grads` is `None` when this worker had no samples) and updates the model.
    #[allow(clippy::too_many_arguments)]
    pub fn step<B: AutodiffBackend>(
        &mut self,
        model: Net<B>,
        grads: Option<GradientsParams>,
        loss: f64,
        local_n: usize,
        global_n: usize,
        lr: f64,
        optim: &mut AnyOptim<B, Net<B>>,
        device: &B::Device,
    ) -> Result<Stepped<B>, CommError> {
        let weight = local_n as f32 / global_n.max(1) as f32;
        let flat_grads = |model: &Net<B>, grads: Option<GradientsParams>, w: f32| match grads {
            Some(g) => {
                let mut v = flat::grads_to_flat(model, &g);
                v.iter_mut().for_each(|x| *x *= w);
                v
            }
            None => vec![0.0; flat::params_to_flat(model, Which::Trainable).len()],
        };
        match self {
            GradSync::Local => {
                let grads = grads.unwrap_or_default();
                Ok(Stepped {
                    model: optim.step(lr, model, grads),
                    loss,
                })
            }
            GradSync::Ring(comm) => {
                let mut v = flat_grads(&model, grads, weight);
                v.push(loss as f32 * weight);
                comm.named("gradients").all_reduce(&mut v, ReduceOp::Sum)?;
                let global_loss = v.pop().unwrap_or(0.0) as f64;
                let g = flat::grads_from_flat(&model, v, device);
                Ok(Stepped {
                    model: optim.step(lr, model, g),
                    loss: global_loss,
                })
            }
            GradSync::Ps {
                comm,
                workers,
                servers,
                mode,
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
                let msgs: Vec<Vec<f32>> = (0..*servers)
                    .map(|s| {
                        let mut m = v[ps::shard(n, s, *servers)].to_vec();
                        m.push(lr);
                        m
                    })
                    .collect();
                let sends: Vec<(usize, &[f32])> = msgs
                    .iter()
                    .enumerate()
                    .map(|(s, m)| (*workers + s, &m[..]))
                    .collect();
                comm.exchange(&sends, &mut [])?;
                let fresh = ps::pull(comm, *workers, *servers, n)?;
                Ok(Stepped {
                    model: flat::params_from_flat(model, &fresh, Which::Trainable),
                    loss,
                })
            }
        }
    }

    /// Makes the non-trainable buffers (batch-norm running statistics) the mean
    /// over workers, so every replica — and the saved model — reflects all data.
    pub fn sync_buffers<B: AutodiffBackend>(&mut self, model: Net<B>) -> Result<Net<B>, CommError> {
        match self {
            GradSync::Ring(comm) => {
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
            GradSync::Ring(c) | GradSync::Ps { comm: c, .. } => c.busy(what, work),
        }
    }

    /// Waits for every rank (workers and servers) at the end of training, then
    /// announces this rank's clean exit.
    pub fn finish(&mut self) -> Result<(), CommError> {
        match self {
            GradSync::Local => Ok(()),
            GradSync::Ring(c) | GradSync::Ps { comm: c, .. } => {
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
            GradSync::Ring(c) | GradSync::Ps { comm: c, .. } => c.fail(reason),
        }
    }
}
