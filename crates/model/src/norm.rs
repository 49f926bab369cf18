//! Batch normalisation computed without transposes.
//!
//! burn's `BatchNorm` gathers each channel's values with `swap_dims(0, 1)` and a
//! reshape, which on the CPU backend is a strided copy of the whole activation in the
//! forward pass and again in the backward pass: measured 2026-11-30 on
//! Fashion-MNIST, it took two thirds of `resnet-small`'s training time (46 samples/s,
//! 148 without batch norm; 75 with this module). This module keeps burn's parameters, running
//! statistics and their names (`gamma`, `beta`, `running_mean`, `running_var`), and
//! reduces over the batch first (`mean_dim(0)`, contiguous), then over the plane of
//! a `[1, c, h·w]` view that needs no copy; the normalisation is one scale and one
//! shift per channel.

use burn::module::{Module, Param, RunningState};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Batch normalisation over channels (`[batch, c, h, w]`) or features (`[batch, f]`).
#[derive(Module, Debug)]
pub struct BatchNorm<B: Backend> {
    /// Scale per channel.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift per channel.
    pub beta: Param<Tensor<B, 1>>,
    /// Running mean, used in evaluation.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (biased) variance, used in evaluation.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Weight of the newest batch in the running statistics.
    pub momentum: f64,
    /// Added to the variance before the square root.
    pub epsilon: f64,
}

impl<B: Backend> BatchNorm<B> {
    /// A batch norm of `channels` with burn's defaults (momentum 0.1, epsilon 1e-5):
    /// scale one, shift zero, running mean zero and variance one.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    /// Normalises `x` (`[batch, c, h, w]`; a feature vector as `[batch, f, 1, 1]`):
    /// with the batch's statistics when autodiff is on (training, updating the
    /// running ones), else with the running statistics.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, c, h, w] = x.dims();
        let (mean, var) = if B::ad_enabled(&x.device()) {
            let channel_mean = |t: Tensor<B, 4>| {
                t.mean_dim(0)
                    .reshape([1, c, h * w])
                    .mean_dim(2)
                    .reshape([c])
            };
            let mean = channel_mean(x.clone());
            let centred = x.clone() - mean.clone().reshape([1, c, 1, 1]);
            let var = channel_mean(centred.square());
            let m = self.momentum;
            let device = x.device();
            let running = |state: &RunningState<Tensor<B, 1>>, batch: &Tensor<B, 1>| {
                let old = state.value_sync().to_device(&device);
                state.update((old * (1.0 - m) + batch.clone().detach() * m).detach());
                // `update` parks the value per thread until the next sync; fold it in
                // now, so that module visitors and mappers (the ranks' averaging of
                // running statistics) see and set the current value, and a later
                // `valid()` does not replace their result with the parked one.
                state.value_sync();
            };
            running(&self.running_mean, &mean);
            running(&self.running_var, &var);
            (mean, var)
        } else {
            let device = x.device();
            (
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
            )
        };
        let scale = self.gamma.val() / (var + self.epsilon).sqrt();
        let shift = self.beta.val() - mean * scale.clone();
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::{AutodiffModule, ModuleMapper, Param};
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Distribution, Tolerance};

    type B = Autodiff<Flex>;

    /// Same outputs, gradients and running statistics as burn's `BatchNorm`, in
    /// training and in evaluation.
    #[test]
    fn matches_burns_batch_norm() {
        let device = Default::default();
        <B as Backend>::seed(&device, 7);
        let ours = BatchNorm::<B>::new(3, &device);
        let theirs = BatchNormConfig::new(3).init::<B>(&device);
        // The two sum in different orders: γ's gradient, a sum of 120 products, differs
        // in the fourth digit (1.5e-4 relative seen); a wrong formula differs in the first.
        let tol = Tolerance::<f32>::rel_abs(1e-3, 1e-4);
        for step in 0..2 {
            let x = Tensor::<B, 4>::random([4, 3, 5, 6], Distribution::Normal(1.0, 2.0), &device);
            let weights = Tensor::<B, 4>::random([4, 3, 5, 6], Distribution::Default, &device);
            let data = x.into_data();
            let xa = Tensor::<B, 4>::from_data(data.clone(), &device).require_grad();
            let xb = Tensor::<B, 4>::from_data(data, &device).require_grad();
            let a = ours.forward(xa.clone());
            let b = theirs.forward(xb.clone());
            a.to_data().assert_approx_eq(&b.to_data(), tol);
            let ga = (a * weights.clone()).sum().backward();
            let gb = (b * weights).sum().backward();
            let grad = |t: &Tensor<B, 4>, g| t.grad(g).unwrap().to_data();
            grad(&xa, &ga).assert_approx_eq(&grad(&xb, &gb), tol);
            let pa = ours.gamma.val().grad(&ga).unwrap().to_data();
            pa.assert_approx_eq(&theirs.gamma.val().grad(&gb).unwrap().to_data(), tol);
            let pa = ours.beta.val().grad(&ga).unwrap().to_data();
            pa.assert_approx_eq(&theirs.beta.val().grad(&gb).unwrap().to_data(), tol);
            let stats = |m: &RunningState<Tensor<B, 1>>| m.value_sync().to_data();
            stats(&ours.running_mean).assert_approx_eq(&stats(&theirs.running_mean), tol);
            stats(&ours.running_var).assert_approx_eq(&stats(&theirs.running_var), tol);
            assert!(step > 0 || stats(&ours.running_mean).as_slice::<f32>().unwrap()[0] > 0.05);
        }
        let x = Tensor::random([2, 3, 5, 6], Distribution::Default, &device);
        let a = ours.valid().forward(x.clone());
        let b = theirs.valid().forward(x);
        a.to_data().assert_approx_eq(&b.to_data(), tol);
    }

    /// Sets every tensor that does not require a gradient (the running statistics)
    /// to a constant, as the ranks' averaging writes them.
    struct SetBuffers(f32);

    impl ModuleMapper<B> for SetBuffers {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|t| {
                if t.is_require_grad() {
                    t
                } else {
                    Tensor::full(t.shape(), self.0, &t.device())
                }
            })
        }
    }

    /// Running statistics written by a mapper after a training step are what
    /// evaluation and the saved model use (burn's `update` alone would let the parked
    /// batch statistics overwrite them at the next sync).
    #[test]
    fn mapped_running_statistics_survive_into_evaluation() {
        let device = Default::default();
        let bn = BatchNorm::<B>::new(2, &device);
        bn.forward(Tensor::random(
            [4, 2, 3, 3],
            Distribution::Normal(3.0, 1.0),
            &device,
        ));
        let bn = bn.map(&mut SetBuffers(0.5));
        let eval = bn.valid();
        let mean = eval.running_mean.value().into_data();
        assert_eq!(mean.as_slice::<f32>().unwrap(), &[0.5, 0.5]);
        let var = eval.running_var.value().into_data();
        assert_eq!(var.as_slice::<f32>().unwrap(), &[0.5, 0.5]);
    }
}
