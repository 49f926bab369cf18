//! Parameter servers.
//!
//! Server `s` of `K` owns shard `s` of the flattened trainable parameters (contiguous,
//! near-equal shards) and runs the job's optimizer on it, with burn's own optimizer
//! applied to a one-tensor module, so a synchronous PS step is the same arithmetic as
//! one worker's step. Each worker message is the gradient shard followed by the
//! step's learning rate.
//!
//! * sync: every step, receive all workers' (already weighted) gradients, sum them in
//!   worker order, step, send the new shard to every worker.
//! * async: serve workers as their gradients arrive; apply each at once; reply to a
//!   worker only while it is at most `max_staleness` steps ahead of the slowest.

use std::ops::Range;
use std::time::Duration;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use dlc_comm::{CommError, Communicator};
use dlc_job::{JobSpec, PsMode};

use crate::dist::flat::{params_to_flat, Which};
use crate::optim::AnyOptim;

/// The element range of shard `s` of `k` over `n` parameters.
pub fn shard(n: usize, s: usize, k: usize) -> Range<usize> {
    let (a, b) = dlc_data::sampler::split_range(n, s, k);
    a..b
}

/// The parameters a server owns, as a module the optimizer can step.
#[derive(Module, Debug)]
pub struct Shard<B: Backend> {
    /// Flat parameter values.
    pub values: Param<Tensor<B, 1>>,
}

/// Receives every server's shard and concatenates them (`n` parameters in all).
pub fn pull(
    comm: &mut Communicator,
    workers: usize,
    servers: usize,
    n: usize,
) -> Result<Vec<f32>, CommError> {
    let mut out = vec![0.0f32; n];
    let mut rest = &mut out[..];
    let mut parts: Vec<(usize, &mut [f32])> = Vec::with_capacity(servers);
    for s in 0..servers {
        let (part, tail) = rest.split_at_mut(shard(n, s, servers).len());
        parts.push((workers + s, part));
        rest = tail;
    }
    comm.exchange(&[], &mut parts)?;
    Ok(out)
}

fn parse_kv(comm: &mut Communicator, key: &str) -> Result<usize, CommError> {
    comm.kv_get(key)?
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CommError::Rendezvous(format!("rank 0 never published `{key}`")))
}

/// The learning rate an async worker sends with an empty batch: reply with the
/// parameters, take no optimizer step.
pub const NO_STEP: f32 = f32::NAN;

/// Runs server `index` (rank `workers + index`) until the job's last step.
pub fn serve<B: AutodiffBackend>(
    job: &JobSpec,
    comm: &mut Communicator,
    index: usize,
    workers: usize,
    servers: usize,
    device: &B::Device,
) -> Result<(), CommError> {
    let n = parse_kv(comm, "ps/params")?;
    let total_steps = parse_kv(comm, "ps/steps")?;
    let range = shard(n, index, servers);
    let len = range.len();
    let mut init = vec![0.0f32; len];
    comm.exchange(&[], &mut [(0, &mut init[..])])?;
    let mut module = Shard::<B> {
        values: Param::from_tensor(Tensor::from_data(
            TensorData::new(init.clone(), [len]),
            device,
        )),
    };
    let mut optim = AnyOptim::<B, Shard<B>>::new(&job.train);
    let all: Vec<usize> = (0..workers).collect();
    let sends: Vec<(usize, &[f32])> = all.iter().map(|&w| (w, &init[..])).collect();
    comm.exchange(&sends, &mut [])?;

    let mut apply = |module: Shard<B>, grad: Vec<f32>, lr: f64| {
        let mut grads = GradientsParams::new();
        let g = Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(grad, [len]), device);
        grads.register::<B::InnerBackend, 1>(module.values.id, g);
        optim.step(lr, module, grads)
    };
    match job.distributed.ps_mode {
        PsMode::Sync => {
            for _ in 0..total_steps {
                let mut bufs: Vec<Vec<f32>> = (0..workers).map(|_| vec![0.0f32; len + 1]).collect();
                let mut recvs: Vec<(usize, &mut [f32])> = bufs
                    .iter_mut()
                    .enumerate()
                    .map(|(w, b)| (w, &mut b[..]))
                    .collect();
                comm.exchange(&[], &mut recvs)?;
                let lr = bufs[0][len] as f64;
                let mut sum = bufs[0][..len].to_vec();
                for b in &bufs[1..] {
                    sum.iter_mut().zip(&b[..len]).for_each(|(s, x)| *s += *x);
                }
                module = apply(module, sum, lr);
                let fresh = params_to_flat(&module, Which::Trainable);
                let sends: Vec<(usize, &[f32])> = all.iter().map(|&w| (w, &fresh[..])).collect();
                comm.exchange(&sends, &mut [])?;
            }
        }
        PsMode::Async => {
            let mut gate = StalenessGate::new(workers, job.distributed.max_staleness, total_steps);
            let poll = Duration::from_millis(200);
            let mut stall = dlc_comm::Stall::new();
            while !gate.done() {
                let ready = gate.release();
                if !ready.is_empty() {
                    let fresh = params_to_flat(&module, Which::Trainable);
                    let sends: Vec<(usize, &[f32])> =
                        ready.iter().map(|&w| (w, &fresh[..])).collect();
                    comm.exchange(&sends, &mut [])?;
                }
                let candidates = gate.candidates();
                if candidates.is_empty() {
                    continue;
                }
                let readable = comm.readable(&candidates, poll)?;
                if readable.is_empty() {
                    if stall.left(comm).is_none() {
                        return Err(CommError::Timeout {
                            rank: candidates[0],
                            timeout: stall.waited(),
                            during: "parameter server waiting for gradients".into(),
                        });
                    }
                    continue;
                }
                stall = dlc_comm::Stall::new();
                for w in readable {
                    let mut buf = vec![0.0f32; len + 1];
                    comm.exchange(&[], &mut [(w, &mut buf[..])])?;
                    let lr = buf[len];
                    buf.truncate(len);
                    if !lr.is_nan() {
                        module = apply(module, buf, f64::from(lr));
                    }
                    gate.pushed(w);
                }
            }
            tracing::info!(
                "asynchronous parameter server {index}: workers ran up to {} step(s) ahead \
                 of the slowest (bound {})",
                gate.max_lead(),
                job.distributed.max_staleness
            );
        }
    }
    Ok(())
}

/// When an asynchronous server answers a worker: a worker that pushed gradients
/// waits for fresh parameters until it is at most `staleness` pushes ahead of the
/// slowest worker — stale-synchronous parallel, bounded staleness.
#[derive(Debug)]
pub struct StalenessGate {
    pushes: Vec<usize>,
    waiting: Vec<bool>,
    staleness: usize,
    total: usize,
    max_lead: usize,
}

impl StalenessGate {
    /// A gate for `workers` workers that push `total` times each.
    pub fn new(workers: usize, staleness: usize, total: usize) -> Self {
        Self {
            pushes: vec![0; workers],
            waiting: vec![false; workers],
            staleness,
            total,
            max_lead: 0,
        }
    }

    /// Worker `w` pushed gradients and waits for parameters.
    pub fn pushed(&mut self, w: usize) {
        self.pushes[w] += 1;
        self.waiting[w] = true;
    }

    /// The waiting workers that may have their parameters now (no longer waiting).
    pub fn release(&mut self) -> Vec<usize> {
        let slowest = self.pushes.iter().copied().min().unwrap_or(0);
        let ready: Vec<usize> = (0..self.pushes.len())
            .filter(|&w| self.waiting[w] && self.pushes[w] <= slowest + self.staleness)
            .collect();
        for &w in &ready {
            self.waiting[w] = false;
            self.max_lead = self.max_lead.max(self.pushes[w] - slowest);
        }
        ready
    }

    /// The workers whose next push may come now.
    pub fn candidates(&self) -> Vec<usize> {
        (0..self.pushes.len())
            .filter(|&w| !self.waiting[w] && self.pushes[w] < self.total)
            .collect()
    }

    /// Whether every worker pushed its last gradients and got its answer.
    pub fn done(&self) -> bool {
        self.pushes.iter().all(|&p| p >= self.total) && !self.waiting.iter().any(|&w| w)
    }

    /// The most pushes any answered worker was ahead of the slowest one.
    pub fn max_lead(&self) -> usize {
        self.max_lead
    }
}

#[cfg(test)]
mod tests {
    use super::StalenessGate;

    /// Runs a fast worker 0 (pushes whenever it may) against a worker 1 that pushes
    /// once every `slow` rounds; returns the gate and worker 0's lead at each answer.
    fn run(staleness: usize, slow: usize, total: usize) -> (StalenessGate, Vec<usize>) {
        let mut gate = StalenessGate::new(2, staleness, total);
        let mut leads = Vec::new();
        for round in 0.. {
            assert!(round < 100 * total, "the gate deadlocked: {gate:?}");
            if gate.done() {
                break;
            }
            for w in gate.candidates() {
                if w == 0 || round % slow == 0 {
                    gate.pushed(w);
                }
            }
            for w in gate.release() {
                if w == 0 {
                    leads.push(gate.pushes[0] - gate.pushes[1].min(gate.pushes[0]));
                }
            }
        }
        (gate, leads)
    }

    #[test]
    fn a_fast_worker_runs_ahead_exactly_up_to_the_bound() {
        for staleness in 0..4 {
            let (gate, leads) = run(staleness, 3, 30);
            assert!(gate.done());
            // Answered as soon as allowed: the lead reaches the bound (a synchronous
            // server would keep it at 0) and never passes it.
            assert_eq!(gate.max_lead(), staleness, "{leads:?}");
            assert!(leads.iter().all(|&l| l <= staleness), "{leads:?}");
        }
    }

    #[test]
    fn workers_at_the_same_pace_never_run_ahead() {
        let (gate, _) = run(0, 1, 10);
        assert!(gate.done());
        assert_eq!(gate.max_lead(), 0);
    }
}
