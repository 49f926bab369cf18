//! Parameter servers: the servers ([`serve`]) and the workers' side of the graph
//! ([`Ps`]).
//!
//! Server `s` of `K` owns shard `s` of the flattened trainable parameters (contiguous,
//! near-equal shards) and runs the job's optimizer on it, with burn's own optimizer
//! applied to a one-tensor module, so a synchronous PS step is the same arithmetic as
//! one worker's step, and its optimizer state is a range of the workers' flat state
//! ([`FlatState`]). At the start, rank 0 sends each server its shard of the
//! parameters and of the optimizer state (from a checkpoint, or empty).
//!
//! * sync: a worker's message is its gradient shard (already weighted), the step's
//!   learning rate and a control word ([`Ctl`]: a stop signal it got). Each round the
//!   server reads rank 0's message first: a gradient step, a request for the shard's
//!   optimizer state (a checkpoint), or the end of training. For a step it reads the
//!   other workers', sums in worker order, steps, and replies to every worker with the
//!   new shard and how many workers were asked to requeue and to end, so every worker
//!   stops after the same step.
//! * async: serve workers as their gradients arrive (gradient shard and learning
//!   rate); apply each at once; reply to a worker only while it is at most
//!   `max_staleness` steps ahead of the slowest. Async jobs take no checkpoints: there
//!   is no step at which the job's state is one consistent whole.

use std::ops::Range;
use std::time::Duration;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use dlc_comm::{CommError, Communicator};
use dlc_job::{JobSpec, PsMode};

use dlc_model::Net;

use crate::dist::flat::{params_from_flat, params_to_flat, Which};
use crate::dist::{agreed_stop, flat_grads, GradSync, Step, Stepped};
use crate::optim::{slot_names, AnyOptim, FlatState, NetOptim};
use crate::TrainError;

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

/// Receives every server's shard and concatenates them (`n` parameters in all),
/// each followed by `extra` values; returns the parameters and server 0's extras.
pub fn pull(
    comm: &mut Communicator,
    workers: usize,
    servers: usize,
    n: usize,
    extra: usize,
) -> Result<(Vec<f32>, Vec<f32>), CommError> {
    let mut bufs: Vec<Vec<f32>> = (0..servers)
        .map(|s| vec![0.0f32; shard(n, s, servers).len() + extra])
        .collect();
    let mut parts: Vec<(usize, &mut [f32])> = bufs
        .iter_mut()
        .enumerate()
        .map(|(s, b)| (workers + s, &mut b[..]))
        .collect();
    comm.exchange(&[], &mut parts)?;
    let extras = bufs[0][bufs[0].len() - extra..].to_vec();
    let mut out = Vec::with_capacity(n);
    for mut b in bufs {
        b.truncate(b.len() - extra);
        out.extend(b);
    }
    Ok((out, extras))
}

/// What a synchronous worker's message asks of the servers (its last value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctl {
    /// A gradient step.
    Step,
    /// A gradient step; this worker was asked to stop and requeue (SIGUSR1).
    StepRequeue,
    /// A gradient step; this worker was asked to end (SIGTERM, SIGINT).
    StepEnd,
    /// Rank 0 only: send me your shard's optimizer state (a checkpoint).
    State,
    /// Rank 0 only: training is over.
    Finish,
}

impl Ctl {
    /// The control word.
    pub fn word(self) -> f32 {
        match self {
            Ctl::Step => 0.0,
            Ctl::StepRequeue => 1.0,
            Ctl::StepEnd => 2.0,
            Ctl::State => 3.0,
            Ctl::Finish => 4.0,
        }
    }

    fn of(word: f32) -> Option<Ctl> {
        [
            Ctl::Step,
            Ctl::StepRequeue,
            Ctl::StepEnd,
            Ctl::State,
            Ctl::Finish,
        ]
        .into_iter()
        .find(|c| c.word() == word)
    }
}

/// Rank 0's first message to server `s` of `servers`: its shard of the parameters
/// and of the optimizer state (`slots` of them; empty before the first step).
pub fn init_message(
    params: &[f32],
    state: &FlatState,
    slots: usize,
    s: usize,
    servers: usize,
) -> Vec<f32> {
    let range = shard(params.len(), s, servers);
    let mut m = params[range.clone()].to_vec();
    m.extend(state_message(
        &state.slice(range.clone()),
        slots,
        range.len(),
    ));
    m
}

/// A shard's optimizer state on the wire: whether there is one, the step count (its
/// bits), then `slots` buffers of `len` values.
fn state_message(state: &FlatState, slots: usize, len: usize) -> Vec<f32> {
    let mut m = Vec::with_capacity(2 + slots * len);
    let has = !state.is_empty() && state.slots.len() == slots;
    m.push(f32::from(u8::from(has)));
    m.push(f32::from_bits(state.time as u32));
    for i in 0..slots {
        match state.slots.get(i).filter(|_| has) {
            Some(v) => m.extend_from_slice(v),
            None => m.resize(m.len() + len, 0.0),
        }
    }
    m
}

fn state_from_message(m: &[f32], slots: usize, len: usize) -> FlatState {
    if m[0] == 0.0 {
        return FlatState::default();
    }
    FlatState {
        time: m[1].to_bits() as usize,
        slots: (0..slots)
            .map(|i| m[2 + i * len..2 + (i + 1) * len].to_vec())
            .collect(),
    }
}

/// Rank 0 asks every server for its shard's optimizer state and joins them.
pub fn gather_state(
    comm: &mut Communicator,
    workers: usize,
    servers: usize,
    n: usize,
    slots: usize,
) -> Result<FlatState, CommError> {
    control(comm, workers, servers, n, Ctl::State)?;
    let mut bufs: Vec<Vec<f32>> = (0..servers)
        .map(|s| vec![0.0f32; 2 + slots * shard(n, s, servers).len()])
        .collect();
    let mut recvs: Vec<(usize, &mut [f32])> = bufs
        .iter_mut()
        .enumerate()
        .map(|(s, b)| (workers + s, &mut b[..]))
        .collect();
    comm.exchange(&[], &mut recvs)?;
    let parts = bufs
        .iter()
        .enumerate()
        .map(|(s, b)| state_from_message(b, slots, shard(n, s, servers).len()))
        .collect();
    FlatState::concat(parts).map_err(|e| CommError::Protocol {
        peer: "parameter servers".into(),
        message: format!("their optimizer states do not fit together: {e}"),
    })
}

/// Rank 0 tells every (synchronous) server that training is over.
pub fn finish(
    comm: &mut Communicator,
    workers: usize,
    servers: usize,
    n: usize,
) -> Result<(), CommError> {
    control(comm, workers, servers, n, Ctl::Finish)
}

/// Sends every server a control message from rank 0: a worker message's shape (an
/// empty gradient shard and learning rate) ending in `ctl`.
fn control(
    comm: &mut Communicator,
    workers: usize,
    servers: usize,
    n: usize,
    ctl: Ctl,
) -> Result<(), CommError> {
    let msgs: Vec<Vec<f32>> = (0..servers)
        .map(|s| {
            let mut m = vec![0.0f32; shard(n, s, servers).len() + 2];
            *m.last_mut().expect("not empty") = ctl.word();
            m
        })
        .collect();
    to_servers(comm, workers, &msgs)
}

/// Sends message `s` of `msgs` to server `s` (rank `workers + s`).
fn to_servers(comm: &mut Communicator, workers: usize, msgs: &[Vec<f32>]) -> Result<(), CommError> {
    let sends: Vec<(usize, &[f32])> = msgs
        .iter()
        .enumerate()
        .map(|(s, m)| (workers + s, &m[..]))
        .collect();
    comm.exchange(&sends, &mut [])
}

fn parse_kv(comm: &mut Communicator, key: &str) -> Result<usize, CommError> {
    comm.kv_get(key)?
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CommError::Rendezvous(format!("rank 0 never published `{key}`")))
}

/// The learning rate an async worker sends with an empty batch: reply with the
/// parameters, take no optimizer step.
pub const NO_STEP: f32 = f32::NAN;

/// Runs server `index` (rank `workers + index`) until training ends.
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
    let slots = slot_names(&job.train).len();
    let mut init = vec![0.0f32; len + 2 + slots * len];
    comm.exchange(&[], &mut [(0, &mut init[..])])?;
    let state = state_from_message(&init[len..], slots, len);
    init.truncate(len);
    let mut module = Shard::<B> {
        values: Param::from_tensor(Tensor::from_data(
            TensorData::new(init.clone(), [len]),
            device,
        )),
    };
    let bad_state = |e: crate::TrainError| CommError::Protocol {
        peer: "rank 0".into(),
        message: e.to_string(),
    };
    let mut optim = AnyOptim::<B, Shard<B>>::new(&job.train)
        .import(&module, &state, device)
        .map_err(bad_state)?;
    let all: Vec<usize> = (0..workers).collect();
    let sends: Vec<(usize, &[f32])> = all.iter().map(|&w| (w, &init[..])).collect();
    comm.exchange(&sends, &mut [])?;

    let apply = |optim: &mut AnyOptim<B, Shard<B>>, module: Shard<B>, grad: Vec<f32>, lr: f64| {
        let mut grads = GradientsParams::new();
        let g = Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(grad, [len]), device);
        grads.register::<B::InnerBackend, 1>(module.values.id, g);
        optim.step(lr, module, grads)
    };
    match job.distributed.ps_mode {
        PsMode::Sync => loop {
            let mut first = vec![0.0f32; len + 2];
            comm.exchange(&[], &mut [(0, &mut first[..])])?;
            let ctl = Ctl::of(first[len + 1]).ok_or_else(|| CommError::Protocol {
                peer: "rank 0".into(),
                message: format!("unknown control word {}", first[len + 1]),
            })?;
            match ctl {
                Ctl::Finish => break,
                Ctl::State => {
                    let state = optim.export(&module, device).map_err(bad_state)?;
                    let m = state_message(&state, slots, len);
                    comm.exchange(&[(0, &m[..])], &mut [])?;
                    continue;
                }
                Ctl::Step | Ctl::StepRequeue | Ctl::StepEnd => {}
            }
            let mut bufs: Vec<Vec<f32>> = (1..workers).map(|_| vec![0.0f32; len + 2]).collect();
            let mut recvs: Vec<(usize, &mut [f32])> = bufs
                .iter_mut()
                .enumerate()
                .map(|(w, b)| (w + 1, &mut b[..]))
                .collect();
            comm.exchange(&[], &mut recvs)?;
            bufs.insert(0, first);
            let lr = bufs[0][len] as f64;
            let (mut requeue, mut end) = (0.0f32, 0.0f32);
            for b in &bufs {
                match Ctl::of(b[len + 1]) {
                    Some(Ctl::StepRequeue) => requeue += 1.0,
                    Some(Ctl::StepEnd) => end += 1.0,
                    _ => {}
                }
            }
            let mut sum = bufs[0][..len].to_vec();
            for b in &bufs[1..] {
                sum.iter_mut().zip(&b[..len]).for_each(|(s, x)| *s += *x);
            }
            module = apply(&mut optim, module, sum, lr);
            let mut fresh = params_to_flat(&module, Which::Trainable);
            fresh.extend([requeue, end]);
            let sends: Vec<(usize, &[f32])> = all.iter().map(|&w| (w, &fresh[..])).collect();
            comm.exchange(&sends, &mut [])?;
        },
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
                        module = apply(&mut optim, module, buf, f64::from(lr));
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

/// The worker side of parameter servers: ranks `workers..workers + servers` of
/// `comm` are the servers.
pub struct Ps {
    /// Links to every rank.
    pub comm: Communicator,
    /// Number of workers (ranks `0..workers`).
    pub workers: usize,
    /// Number of servers.
    pub servers: usize,
    /// Sync or async.
    pub mode: PsMode,
    /// Trainable parameters (known from [`GradSync::init`] on).
    pub params: usize,
}

impl GradSync for Ps {
    fn workers(&self) -> usize {
        self.workers
    }

    fn describe(&self) -> String {
        format!(
            "{} workers, {} parameter server(s), {:?} mode",
            self.workers, self.servers, self.mode
        )
    }

    fn comm(&self) -> Option<&Communicator> {
        Some(&self.comm)
    }

    fn comm_mut(&mut self) -> Option<&mut Communicator> {
        Some(&mut self.comm)
    }

    fn checkpoints(&self) -> Result<(), String> {
        match self.mode {
            PsMode::Sync => Ok(()),
            PsMode::Async => Err(
                "asynchronous parameter servers apply each worker's gradients as they arrive, \
                 so there is no step at which the job's state is one consistent whole; use \
                 ps_mode = \"sync\" or the ring strategy"
                    .into(),
            ),
        }
    }

    /// The servers' optimizer state (rank 0 gathers it).
    fn optimizer_state<B: AutodiffBackend>(
        &mut self,
        _model: &Net<B>,
        _optim: &AnyOptim<B, Net<B>>,
        spec: &dlc_job::TrainSpec,
        _device: &B::Device,
    ) -> Result<FlatState, TrainError> {
        Ok(gather_state(
            &mut self.comm,
            self.workers,
            self.servers,
            self.params,
            slot_names(spec).len(),
        )?)
    }

    /// Rank 0 sends each server its shard of the parameters and of a checkpoint's
    /// optimizer state; every worker pulls the servers' copy.
    fn init<B: AutodiffBackend>(
        &mut self,
        model: Net<B>,
        optim: NetOptim<B>,
        restored: Option<&FlatState>,
        spec: &dlc_job::TrainSpec,
        total_steps: usize,
        _device: &B::Device,
    ) -> Result<(Net<B>, NetOptim<B>), TrainError> {
        let (workers, servers) = (self.workers, self.servers);
        let comm = &mut self.comm;
        let values = params_to_flat(&model, Which::Trainable);
        self.params = values.len();
        if comm.rank() == 0 {
            comm.kv_set("ps/params", &values.len().to_string())?;
            comm.kv_set("ps/steps", &total_steps.to_string())?;
            let empty = FlatState::default();
            let state = restored.unwrap_or(&empty);
            let slots = slot_names(spec).len();
            let msgs: Vec<Vec<f32>> = (0..servers)
                .map(|s| init_message(&values, state, slots, s, servers))
                .collect();
            to_servers(comm, workers, &msgs)?;
        }
        let (fresh, _) = pull(comm, workers, servers, values.len(), 0)?;
        Ok((params_from_flat(model, &fresh, Which::Trainable), optim))
    }

    fn step<B: AutodiffBackend>(&mut self, s: Step<'_, B>) -> Result<Stepped<B>, CommError> {
        let Step {
            model,
            grads,
            loss,
            local_n,
            global_n,
            lr,
            stop,
            ..
        } = s;
        let (workers, servers) = (self.workers, self.servers);
        let started = std::time::Instant::now();
        // Async servers apply each worker's mean gradient on its own; a worker
        // without samples asks for the parameters without a step (an Adam step on a
        // zero gradient would still move them).
        let (w, lr) = match self.mode {
            PsMode::Sync => (super::share(local_n, global_n), lr as f32),
            PsMode::Async if local_n == 0 => (1.0, NO_STEP),
            PsMode::Async => (1.0, lr as f32),
        };
        let v = flat_grads(&model, grads, w, 0);
        let n = v.len();
        let sync = self.mode == PsMode::Sync;
        let ctl = match stop {
            Some(s) if s == libc::SIGUSR1 as usize => Ctl::StepRequeue,
            Some(_) => Ctl::StepEnd,
            None => Ctl::Step,
        };
        let msgs: Vec<Vec<f32>> = (0..servers)
            .map(|s| {
                let mut m = v[shard(n, s, servers)].to_vec();
                m.push(lr);
                if sync {
                    m.push(ctl.word());
                }
                m
            })
            .collect();
        to_servers(&mut self.comm, workers, &msgs)?;
        // Synchronous servers count the workers asked to stop (requeue, end).
        let (fresh, counts) = pull(&mut self.comm, workers, servers, n, 2 * usize::from(sync))?;
        let stop = match counts[..] {
            [requeueing, ending] => agreed_stop(stop, requeueing, ending),
            // Asynchronous workers run on their own: they ignore signals.
            _ => None,
        };
        Ok(Stepped {
            model: params_from_flat(model, &fresh, Which::Trainable),
            loss,
            stop,
            comm_s: started.elapsed().as_secs_f64(),
            comm_hidden_s: 0.0,
        })
    }

    /// Servers hold trainable parameters only: workers swap their buffers directly
    /// and average them in rank order (the same result on each).
    fn sync_buffers<B: AutodiffBackend>(&mut self, model: Net<B>) -> Result<Net<B>, CommError> {
        let workers = self.workers;
        let mine = params_to_flat(&model, Which::Buffers);
        if mine.is_empty() || workers < 2 {
            return Ok(model);
        }
        let me = self.comm.rank();
        let mut theirs: Vec<Vec<f32>> = (0..workers)
            .map(|w| {
                if w == me {
                    Vec::new()
                } else {
                    vec![0.0; mine.len()]
                }
            })
            .collect();
        let sends: Vec<(usize, &[f32])> = (0..workers)
            .filter(|&w| w != me)
            .map(|w| (w, &mine[..]))
            .collect();
        let mut recvs: Vec<(usize, &mut [f32])> = theirs
            .iter_mut()
            .enumerate()
            .filter(|(w, _)| *w != me)
            .map(|(w, b)| (w, &mut b[..]))
            .collect();
        self.comm.exchange(&sends, &mut recvs)?;
        let mut mean = vec![0.0f32; mine.len()];
        for (w, b) in theirs.iter().enumerate() {
            let b = if w == me { &mine } else { b };
            mean.iter_mut().zip(b).for_each(|(m, x)| *m += *x);
        }
        let k = workers as f32;
        mean.iter_mut().for_each(|m| *m /= k);
        Ok(params_from_flat(model, &mean, Which::Buffers))
    }

    /// Rank 0 of a synchronous job tells the servers that training ended first.
    fn finish(&mut self) -> Result<(), CommError> {
        if self.mode == PsMode::Sync && self.comm.rank() == 0 {
            finish(&mut self.comm, self.workers, self.servers, self.params)?;
        }
        self.comm.named("end of training").barrier()?;
        self.comm.leave();
        Ok(())
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
