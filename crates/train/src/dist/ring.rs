//! Ring all-reduce: every worker sums the job's weighted gradients and applies the
//! same optimizer step.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use dlc_comm::{CommError, Communicator, Compression, ReduceOp};
use dlc_model::Net;

use super::flat::{self, Which};
use super::overlap::{self, Bucketed, GradTap, Layout, Tapper};
use super::{agreed_stop, flat_grads, share, with_restored, GradSync, Step, Stepped};
use crate::optim::{FlatState, NetOptim};
use crate::TrainError;

/// Values that ride along with the gradients: the weighted loss, and how many
/// workers were asked to stop to requeue (SIGUSR1) and to end (SIGTERM, SIGINT).
const EXTRA: usize = 3;

/// Ring all-reduce among `comm.world()` workers.
pub struct Ring {
    comm: Communicator,
    compression: Compression,
    bucket_bytes: usize,
    layout: Option<Arc<Layout>>,
}

impl Ring {
    /// Gradients summed over `comm`, travelling as `compression` says, in buckets of
    /// `bucket_bytes` summed while backward runs when the model has more than one.
    pub fn new(comm: Communicator, compression: Compression, bucket_bytes: usize) -> Self {
        Self {
            comm,
            compression,
            bucket_bytes,
            layout: None,
        }
    }

    /// Sums `v` (gradients with room to spare) and `extra` over the workers.
    fn sum_with_extra(
        &mut self,
        v: &mut Vec<f32>,
        extra: &mut [f32; EXTRA],
    ) -> Result<(), CommError> {
        if self.compression == Compression::None {
            v.extend_from_slice(extra);
            self.comm.named("gradients").all_reduce(v, ReduceOp::Sum)?;
            let tail = v.split_off(v.len() - EXTRA);
            extra.copy_from_slice(&tail);
        } else {
            // Compressed gradients; the loss and the stop counts stay exact in a
            // small f32 sum of their own.
            self.comm.named("gradients").all_reduce_compressed(
                v,
                ReduceOp::Sum,
                self.compression,
            )?;
            self.comm
                .named("loss and stops")
                .all_reduce(extra, ReduceOp::Sum)?;
        }
        Ok(())
    }
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

    /// Sums gradient buckets while backward runs, when the model has more than one
    /// (on the CPU backend).
    fn compute<B: GradTap, T>(
        &mut self,
        model: &Net<B>,
        weight: f32,
        work: impl FnOnce(Option<&mut Tapper<B>>) -> Result<T, TrainError>,
    ) -> Result<(T, Option<Bucketed>), TrainError> {
        // On a GPU a tap would copy each gradient to the host in the middle of
        // backward (a device sync per parameter), untested on a GPU so far: GPU
        // jobs keep summing after backward until the device path (flattening each
        // bucket on the device, issue 17) is measured.
        if std::any::TypeId::of::<B::InnerBackend>()
            != std::any::TypeId::of::<burn::backend::Flex>()
        {
            return Ok((work(None)?, None));
        }
        let bucket_bytes = self.bucket_bytes;
        let layout = self
            .layout
            .get_or_insert_with(|| Arc::new(Layout::new(model, bucket_bytes)));
        if layout.buckets() < 2 {
            return Ok((work(None)?, None));
        }
        let (out, bucketed) = overlap::run_overlapped(
            &mut self.comm,
            self.compression,
            layout,
            weight,
            EXTRA,
            work,
        )?;
        Ok((out, Some(bucketed)))
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
            bucketed,
            loss,
            local_n,
            global_n,
            lr,
            stop,
            optim,
            device,
        } = s;
        let started = Instant::now();
        let weight = share(local_n, global_n);
        let mut extra = [
            loss as f32 * weight,
            f32::from(u8::from(stop == Some(libc::SIGUSR1 as usize))),
            f32::from(u8::from(
                stop.is_some() && stop != Some(libc::SIGUSR1 as usize),
            )),
        ];
        let (parts, waited_s, hidden_s) = match bucketed {
            Some(b) => {
                // Tapped parameters hand their gradients to the buckets only.
                debug_assert!(
                    grads.as_ref().is_none_or(|g| g.is_empty()),
                    "a parameter escaped the taps"
                );
                let (waited_s, summing_s) = (b.waited_s, b.comm_s);
                let mut parts = b.into_parts();
                if let Some((_, last)) = parts.last_mut() {
                    self.sum_with_extra(last, &mut extra)?;
                }
                // The thread's summing the training thread did not wait for.
                (parts, waited_s, (summing_s - waited_s).max(0.0))
            }
            None => {
                let mut v = flat_grads(&model, grads, weight, EXTRA);
                self.sum_with_extra(&mut v, &mut extra)?;
                (vec![(0, v)], 0.0, 0.0)
            }
        };
        let comm_s = waited_s + started.elapsed().as_secs_f64();
        let [global_loss, requeueing, ending] = extra;
        let g = flat::grads_from_parts(&model, parts, device);
        Ok(Stepped {
            model: optim.step(lr, model, g),
            loss: global_loss as f64,
            stop: agreed_stop(stop, requeueing, ending),
            comm_s,
            comm_hidden_s: hidden_s,
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
