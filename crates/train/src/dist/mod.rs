//! Data-parallel training across processes: how a worker combines its gradients
//! with the others' (the network graph, chosen by `[distributed] strategy`), behind
//! one trait, [`GradSync`], with one file per strategy:
//!
//! * [`local::Local`]: one worker, the optimizer steps on its own gradients.
//! * [`ring::Ring`]: gradients are flattened (fixed, rank-independent order),
//!   weighted by `local samples / global batch`, summed with ring all-reduce and
//!   written back; every worker applies the same optimizer step. With
//!   `[distributed] compression` the gradients travel as bf16 or fp16. A model larger
//!   than `[distributed] bucket_mib` has its gradients summed in buckets while
//!   backward still runs ([`overlap`]).
//! * [`ps::Ps`]: workers push weighted gradient shards to parameter servers,
//!   which run the optimizer ([`ps::serve`]), and pull fresh parameters back.
//!
//! Every strategy hands its optimizer state over as one [`FlatState`], so a checkpoint
//! does not depend on the strategy that wrote it.

pub mod flat;
pub mod local;
pub mod overlap;
pub mod ps;
pub mod ring;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use dlc_comm::{CommError, Communicator};
use dlc_model::Net;

use crate::optim::{AnyOptim, FlatState, NetOptim};
use crate::TrainError;

pub use local::Local;
pub use overlap::{Bucketed, GradTap, Tapper};
pub use ps::Ps;
pub use ring::Ring;

/// The network graph seen from one worker: how its gradients meet the others'.
/// The training loop is generic over it; a new strategy is one new file.
pub trait GradSync {
    /// Number of workers.
    fn workers(&self) -> usize;

    /// How the job combines gradients, for the start-of-training line.
    fn describe(&self) -> String;

    /// The links to the other ranks (`None` for one worker).
    fn comm(&self) -> Option<&Communicator>;

    /// The links to the other ranks, to use (`None` for one worker).
    fn comm_mut(&mut self) -> Option<&mut Communicator>;

    /// Whether the job's state can be checkpointed (and the job stopped on a signal
    /// after a step every worker agrees on); else why not.
    fn checkpoints(&self) -> Result<(), String> {
        Ok(())
    }

    /// The optimizer state of the whole job (this worker's optimizer's, unless the
    /// strategy keeps it elsewhere).
    fn optimizer_state<B: AutodiffBackend>(
        &mut self,
        model: &Net<B>,
        optim: &AnyOptim<B, Net<B>>,
        _spec: &dlc_job::TrainSpec,
        device: &B::Device,
    ) -> Result<FlatState, TrainError> {
        optim.export(model, device)
    }

    /// Makes every replica start from the same parameters and puts the optimizer
    /// state of a checkpoint (`restored`) where the strategy keeps it.
    /// `total_steps` tells asynchronous servers when to stop.
    fn init<B: AutodiffBackend>(
        &mut self,
        model: Net<B>,
        optim: NetOptim<B>,
        restored: Option<&FlatState>,
        spec: &dlc_job::TrainSpec,
        total_steps: usize,
        device: &B::Device,
    ) -> Result<(Net<B>, NetOptim<B>), TrainError>;

    /// Runs `work`, this worker's forward and backward pass (handed the hook to run
    /// the forward pass with, if any), with whatever the strategy overlaps with it;
    /// `weight` is this worker's share of the step's samples. Bucketed gradients,
    /// when the strategy sums them during backward, go on to [`GradSync::step`].
    /// By default `work` runs alone.
    fn compute<B: GradTap, T>(
        &mut self,
        _model: &Net<B>,
        _weight: f32,
        work: impl FnOnce(Option<&mut Tapper<B>>) -> Result<T, TrainError>,
    ) -> Result<(T, Option<Bucketed>), TrainError> {
        Ok((work(None)?, None))
    }

    /// Combines this worker's gradients (from `local_n` of the step's `global_n`
    /// samples) and updates the model.
    fn step<B: AutodiffBackend>(&mut self, s: Step<'_, B>) -> Result<Stepped<B>, CommError>;

    /// Makes the non-trainable buffers (batch-norm running statistics) the mean
    /// over workers, so every replica — and the saved model — reflects all data.
    fn sync_buffers<B: AutodiffBackend>(&mut self, model: Net<B>) -> Result<Net<B>, CommError> {
        Ok(model)
    }

    /// Waits for every rank (workers and servers) at the end of training, then
    /// announces this rank's clean exit.
    fn finish(&mut self) -> Result<(), CommError> {
        match self.comm_mut() {
            Some(c) => {
                c.named("end of training").barrier()?;
                c.leave();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// This worker's rank.
    fn rank(&self) -> usize {
        self.comm().map_or(0, Communicator::rank)
    }

    /// Every rank's address for peer links in rank order (empty for one worker).
    fn peer_addrs(&self) -> &[String] {
        match self.comm() {
            Some(c) => c.peer_addrs(),
            None => &[],
        }
    }

    /// What carries this rank's link to each rank (`shm`, `tcp`; `None` for itself
    /// and ranks it has no link to); empty for one worker.
    fn links(&self) -> Vec<Option<&'static str>> {
        self.comm().map_or_else(Vec::new, |c| {
            c.transports()
                .into_iter()
                .map(|t| t.map(|t| t.name()))
                .collect()
        })
    }

    /// Runs `work`, long local work that other ranks may wait for, announced to the
    /// job as `what` (see [`Communicator::busy`]).
    fn busy<R>(&mut self, what: &str, work: impl FnOnce() -> R) -> R {
        match self.comm_mut() {
            Some(c) => c.busy(what, work),
            None => work(),
        }
    }

    /// Reports this rank's failure to every other rank (see
    /// [`Communicator::fail`]).
    fn fail(&mut self, reason: &str) {
        if let Some(c) = self.comm_mut() {
            c.fail(reason);
        }
    }
}

/// One worker's share of a step, handed to [`GradSync::step`].
pub struct Step<'a, B: AutodiffBackend> {
    /// The model before the step.
    pub model: Net<B>,
    /// This worker's gradients (`None` when it had no samples; none in it when they
    /// went to buckets during backward).
    pub grads: Option<GradientsParams>,
    /// The gradients summed during backward, from [`GradSync::compute`].
    pub bucketed: Option<Bucketed>,
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
    /// Seconds the training thread spent exchanging gradients and parameters (or
    /// waiting for it).
    pub comm_s: f64,
    /// Seconds of gradient summing that ran while backward did (hidden from the
    /// step's time).
    pub comm_hidden_s: f64,
}

/// A worker's share of a step's samples: the weight of its gradients (and loss) in
/// the job-wide mean. An empty step weighs nothing (no 0/0).
pub fn share(local_n: usize, global_n: usize) -> f32 {
    local_n as f32 / global_n.max(1) as f32
}

/// `optim` with a checkpoint's state (`restored`) put in, when there is one: for the
/// strategies whose workers run the optimizer.
fn with_restored<B: AutodiffBackend>(
    optim: NetOptim<B>,
    model: &Net<B>,
    restored: Option<&FlatState>,
    device: &B::Device,
) -> Result<NetOptim<B>, TrainError> {
    match restored {
        Some(state) => optim.import(model, state, device),
        None => Ok(optim),
    }
}

/// The gradients as one flat buffer, weighted by `weight`, with room for `spare`
/// more values (zeros for a worker without samples).
fn flat_grads<B: AutodiffBackend>(
    model: &Net<B>,
    grads: Option<GradientsParams>,
    weight: f32,
    spare: usize,
) -> Vec<f32> {
    match grads {
        Some(g) => flat::grads_to_flat(model, &g, weight, spare),
        None => {
            let mut v = vec![0.0; flat::params_to_flat(model, flat::Which::Trainable).len()];
            v.reserve(spare);
            v
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
