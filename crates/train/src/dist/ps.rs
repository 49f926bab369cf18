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
            let staleness = job.distributed.max_staleness;
            let mut pushes = vec![0usize; workers];
            let mut waiting = vec![false; workers];
            let poll = Duration::from_millis(200);
            let mut stall = dlc_comm::Stall::new();
            while pushes.iter().sum::<usize>() < workers * total_steps || waiting.iter().any(|&w| w)
            {
                // Reply to workers within the staleness bound.
                let slowest = *pushes.iter().min().unwrap_or(&0);
                let ready: Vec<usize> = (0..workers)
                    .filter(|&w| waiting[w] && pushes[w] <= slowest + staleness)
                    .collect();
                if !ready.is_empty() {
                    let fresh = params_to_flat(&module, Which::Trainable);
                    let sends: Vec<(usize, &[f32])> =
                        ready.iter().map(|&w| (w, &fresh[..])).collect();
                    comm.exchange(&sends, &mut [])?;
                    for w in ready {
                        waiting[w] = false;
                    }
                }
                let candidates: Vec<usize> = (0..workers)
                    .filter(|&w| !waiting[w] && pushes[w] < total_steps)
                    .collect();
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
                    pushes[w] += 1;
                    waiting[w] = true;
                }
            }
        }
    }
    Ok(())
}
