//! One worker: the optimizer steps on its own gradients.

use burn::tensor::backend::AutodiffBackend;
use dlc_comm::{CommError, Communicator};
use dlc_model::Net;

use super::{with_restored, GradSync, Step, Stepped};
use crate::optim::{FlatState, NetOptim};
use crate::TrainError;

/// A single worker: nothing to combine.
pub struct Local;

impl GradSync for Local {
    fn workers(&self) -> usize {
        1
    }

    fn describe(&self) -> String {
        "1 worker".into()
    }

    fn comm(&self) -> Option<&Communicator> {
        None
    }

    fn comm_mut(&mut self) -> Option<&mut Communicator> {
        None
    }

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
        Ok((model, optim))
    }

    fn step<B: AutodiffBackend>(&mut self, s: Step<'_, B>) -> Result<Stepped<B>, CommError> {
        let Step {
            model,
            grads,
            loss,
            lr,
            stop,
            optim,
            ..
        } = s;
        Ok(Stepped {
            model: optim.step(lr, model, grads.unwrap_or_default()),
            loss,
            stop,
            comm_s: 0.0,
            comm_hidden_s: 0.0,
        })
    }
}
