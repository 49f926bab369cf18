//! Ring all-reduce: every worker sums the job's weighted gradients and applies the
//! same optimizer step.

use burn::tensor::backend::AutodiffBackend;
use dlc_comm::{CommError, Communicator, Compression, ReduceOp};
use dlc_model::Net;

use super::flat::{self, Which};
use super::{agreed_stop, flat_grads, with_restored, GradSync, Step, Stepped};
use crate::optim::{FlatState, NetOptim};
use crate::TrainError;

/// Ring all-reduce among `comm.world()` workers.
pub struct Ring {
    /// Links to every worker.
    pub comm: Communicator,
    /// How the gradients travel (`[distributed] compression`).
    pub compression: Compression,
}

impl GradSync for Ring {
    fn workers(&self) -> usize {
        self.comm.world()
    }

    fn describe(&self) -> String {
        match self.compression {
            Compression::None => format!("{} workers, ring all-reduce", self.comm.world()),
            z => format!(
                "{} workers, ring all-reduce, {z} gradients",
                self.comm.world()
            ),
        }
    }

    fn comm(&self) -> Option<&Communicator> {
        Some(&self.comm)
    }

    fn comm_mut(&mut self) -> Option<&mut Communicator> {
        Some(&mut self.comm)
    }

    /// Every replica starts from rank 0's parameters.
    fn init<B: AutodiffBackend>(
        &mut self,
        model: Net<B>,
        optim: NetOptim<B>,
        restored: Option<&FlatState>,
        _spec: &dlc_job::TrainSpec,
        _total_steps: usize,
        device: &B::Device,
    ) -> Result<(Net<B>, NetOptim<B>), TrainError> {
        let optim = with_restored(optim, &model, restored, device)?;
        let mut all = flat::params_to_flat(&model, Which::All);
        self.comm.named("parameters").broadcast(&mut all, 0)?;
        Ok((flat::params_from_flat(model, &all, Which::All), optim))
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
            optim,
            device,
        } = s;
        let started = std::time::Instant::now();
        let weight = local_n as f32 / global_n.max(1) as f32;
        // More sums ride along: the loss, and how many workers were asked to stop
        // to requeue (SIGUSR1) and to end (SIGTERM, SIGINT).
        let mut extra = [
            loss as f32 * weight,
            f32::from(u8::from(stop == Some(libc::SIGUSR1 as usize))),
            f32::from(u8::from(
                stop.is_some() && stop != Some(libc::SIGUSR1 as usize),
            )),
        ];
        let mut v = flat_grads(&model, grads, weight, extra.len());
        if self.compression == Compression::None {
            v.extend_from_slice(&extra);
            self.comm
                .named("gradients")
                .all_reduce(&mut v, ReduceOp::Sum)?;
            let tail = v.split_off(v.len() - extra.len());
            extra.copy_from_slice(&tail);
        } else {
            // Compressed gradients; the loss and the stop counts stay exact in a
            // small f32 sum of their own.
            self.comm.named("gradients").all_reduce_compressed(
                &mut v,
                ReduceOp::Sum,
                self.compression,
            )?;
            self.comm
                .named("loss and stops")
                .all_reduce(&mut extra, ReduceOp::Sum)?;
        }
        let comm_s = started.elapsed().as_secs_f64();
        let [global_loss, requeueing, ending] = extra;
        let g = flat::grads_from_flat(&model, v, device);
        Ok(Stepped {
            model: optim.step(lr, model, g),
            loss: global_loss as f64,
            stop: agreed_stop(stop, requeueing, ending),
            comm_s,
        })
    }

    fn sync_buffers<B: AutodiffBackend>(&mut self, model: Net<B>) -> Result<Net<B>, CommError> {
        let mut v = flat::params_to_flat(&model, Which::Buffers);
        if v.is_empty() {
            return Ok(model);
        }
        self.comm
            .named("batch-norm statistics")
            .all_reduce(&mut v, ReduceOp::Mean)?;
        Ok(flat::params_from_flat(model, &v, Which::Buffers))
    }
}
