//! Adam in one pass per parameter on burn-flex.
//!
//! burn's Adam is a chain of tensor operations — about a dozen passes over every
//! parameter, each allocating its result (scale the moments, square the gradient,
//! add, take the square root, divide, scale by the learning rate, subtract). On a
//! small model trained on CPU that chain was a fifth of the step (the MLP example,
//! 2026-12-01). [`FusedAdam`] computes the same operations in the same order in
//! f32, element by element, in place, so the parameters and moments are the same
//! bits as burn's; on any other backend it runs burn's Adam itself. The state is
//! burn's [`AdamState`], so records, checkpoints and [`crate::optim::FlatState`] are
//! unchanged.

use burn::backend::Flex;
use burn::optim::{
    Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, SimpleOptimizer,
};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use dlc_model::kernels::cast;
use rayon::prelude::*;

/// burn's defaults for [`AdamConfig`].
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// Adam (with optional L2 weight decay added to the gradient, as burn's Adam does).
#[derive(Clone)]
pub struct FusedAdam {
    /// Weight-decay penalty, if any.
    penalty: Option<f32>,
    /// burn's Adam with the same settings, for other backends.
    burn: Adam,
}

impl FusedAdam {
    /// Adam with burn's default betas and epsilon and an optional weight decay.
    pub fn new(penalty: Option<f32>) -> Self {
        let config = AdamConfig::new()
            .with_beta_1(BETA_1)
            .with_beta_2(BETA_2)
            .with_epsilon(EPSILON)
            .with_weight_decay(penalty.map(burn::optim::decay::WeightDecayConfig::new));
        Self {
            penalty,
            burn: config.build(),
        }
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        if tensor.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return SimpleOptimizer::<B>::step(&self.burn, lr, tensor, grad, state);
        }
        match cast::<_, (Tensor<Flex, D>, Tensor<Flex, D>, Option<AdamState<Flex, D>>)>((
            tensor, grad, state,
        )) {
            Ok((tensor, grad, state)) => {
                let (t, s) = self.flex_step(lr, tensor, grad, state);
                cast((t, Some(s))).unwrap_or_else(|_| unreachable!("B is Flex"))
            }
            Err((tensor, grad, state)) => {
                SimpleOptimizer::<B>::step(&self.burn, lr, tensor, grad, state)
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <Adam as SimpleOptimizer<B>>::to_device(state, device)
    }
}

impl FusedAdam {
    /// One step on burn-flex: parameters and moments updated in place where their
    /// buffers are not shared.
    fn flex_step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<Flex, D>,
        grad: Tensor<Flex, D>,
        state: Option<AdamState<Flex, D>>,
    ) -> (Tensor<Flex, D>, AdamState<Flex, D>) {
        let shape = tensor.shape();
        let mut p = contiguous(tensor.into_primitive().tensor());
        // Read in place: a gradient may be a view into the all-reduced buffer, which
        // `contiguous` (made for the tensors updated in place) would copy.
        let g = dlc_model::kernels::readable(grad.into_primitive().tensor());
        let (time, m, v) = match state {
            Some(s) => {
                let m = s.momentum;
                (
                    m.time + 1,
                    Some(contiguous(m.moment_1.into_primitive().tensor())),
                    Some(contiguous(m.moment_2.into_primitive().tensor())),
                )
            }
            None => (1, None, None),
        };
        let first = m.is_none();
        // Zeros as an f32 `Vec` (burn-flex's `empty` zeroes a byte buffer, then copies it).
        let fresh = || dlc_model::kernels::zeros(shape.clone());
        let (mut m, mut v) = (m.unwrap_or_else(fresh), v.unwrap_or_else(fresh));

        // The scalars exactly as burn computes them (f32).
        let t = time as i32;
        let c2 = (1.0 - BETA_2.powi(t)).sqrt();
        let cf = c2 / (1.0 - BETA_1.powi(t));
        let eps = EPSILON * c2;
        let lr = lr as f32;
        let (f1, f2) = (1.0 - BETA_1, 1.0 - BETA_2);
        let penalty = self.penalty;

        const CHUNK: usize = 1 << 14;
        let k = Scalars {
            cf,
            eps,
            lr,
            f1,
            f2,
            decay: penalty.unwrap_or(0.0),
        };
        let gs: &[f32] = g.as_slice().expect("contiguous f32 gradient");
        let (pm, mm, vm): (&mut [f32], &mut [f32], &mut [f32]) =
            (p.storage_mut(), m.storage_mut(), v.storage_mut());
        pm.par_chunks_mut(CHUNK)
            .zip(mm.par_chunks_mut(CHUNK))
            .zip(vm.par_chunks_mut(CHUNK))
            .zip(gs.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| update(p, m, v, g, &k, first, penalty.is_some()));
        let wrap = |t: FlexTensor| Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(t));
        let state = AdamState::new(AdaptiveMomentumState::new(time, wrap(m), wrap(v)));
        (wrap(p), state)
    }
}

/// The per-step constants of the update.
struct Scalars {
    cf: f32,
    eps: f32,
    lr: f32,
    f1: f32,
    f2: f32,
    decay: f32,
}

/// Updates one chunk, with the widest vectors this CPU has (the arithmetic is the
/// same IEEE operations at any width, so the bits do not depend on it).
fn update(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    k: &Scalars,
    first: bool,
    decay: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { update_avx512(p, m, v, g, k, first, decay) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { update_avx2(p, m, v, g, k, first, decay) };
        }
    }
    update_with(p, m, v, g, k, first, decay)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn update_avx512(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    k: &Scalars,
    first: bool,
    decay: bool,
) {
    update_with(p, m, v, g, k, first, decay)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    k: &Scalars,
    first: bool,
    decay: bool,
) {
    update_with(p, m, v, g, k, first, decay)
}

/// One loop per case, so that each is a straight vectorisable loop.
#[inline(always)]
fn update_with(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    k: &Scalars,
    first: bool,
    decay: bool,
) {
    match (first, decay) {
        (true, false) => update_case::<true, false>(p, m, v, g, k),
        (true, true) => update_case::<true, true>(p, m, v, g, k),
        (false, false) => update_case::<false, false>(p, m, v, g, k),
        (false, true) => update_case::<false, true>(p, m, v, g, k),
    }
}

/// burn's Adam, element by element, in its order of operations.
#[inline(always)]
fn update_case<const FIRST: bool, const DECAY: bool>(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    k: &Scalars,
) {
    let n = p.len();
    let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
    for i in 0..n {
        // burn: tensor.mul_scalar(penalty).add(grad)
        let gi = if DECAY { p[i] * k.decay + g[i] } else { g[i] };
        let (mi, vi) = if FIRST {
            (gi * k.f1, gi * gi * k.f2)
        } else {
            (m[i] * BETA_1 + gi * k.f1, v[i] * BETA_2 + gi * gi * k.f2)
        };
        m[i] = mi;
        v[i] = vi;
        let u = (mi * k.cf) / (vi.sqrt() + k.eps);
        p[i] -= u * k.lr;
    }
}

/// `t` with its values in one contiguous block from offset 0 (a copy only when a view).
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>()
        .is_some_and(|s| s.len() == t.layout().shape().num_elements())
        && t.bytes().len() == t.layout().shape().num_elements() * 4
    {
        t
    } else {
        t.to_contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    fn bits<const D: usize>(t: &Tensor<Flex, D>) -> Vec<u32> {
        t.to_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    /// Five steps of ours and of burn's Adam from the same start: the same bits in
    /// the parameters and both moments, with and without weight decay, for a size
    /// that is no multiple of the chunk or of a SIMD width, and for a gradient that
    /// is a transposed view.
    #[test]
    fn the_same_bits_as_burns_adam() {
        let dev = Default::default();
        for penalty in [None, Some(0.01)] {
            let ours = FusedAdam::new(penalty);
            let theirs = AdamConfig::new()
                .with_weight_decay(penalty.map(burn::optim::decay::WeightDecayConfig::new))
                .build();
            Flex::seed(&dev, 7);
            let start = Tensor::<Flex, 2>::random([129, 257], Distribution::Normal(0.0, 1.0), &dev);
            let (mut a, mut b) = (start.clone(), start);
            let (mut sa, mut sb) = (None, None);
            for step in 0..5 {
                let g = Tensor::<Flex, 2>::random([257, 129], Distribution::Normal(0.0, 0.1), &dev)
                    .mul_scalar(step as f32 + 1.0)
                    .transpose();
                let lr = 0.002 / (step as f64 + 1.0);
                let (na, nsa) = SimpleOptimizer::<Flex>::step(&ours, lr, a, g.clone(), sa);
                let (nb, nsb) = SimpleOptimizer::<Flex>::step(&theirs, lr, b, g, sb);
                assert_eq!(bits(&na), bits(&nb), "parameters, step {step}, {penalty:?}");
                let (ma, mb) = (
                    &nsa.as_ref().unwrap().momentum,
                    &nsb.as_ref().unwrap().momentum,
                );
                assert_eq!(ma.time, mb.time);
                assert_eq!(bits(&ma.moment_1), bits(&mb.moment_1), "m, step {step}");
                assert_eq!(bits(&ma.moment_2), bits(&mb.moment_2), "v, step {step}");
                (a, b, sa, sb) = (na, nb, nsa, nsb);
            }
        }
    }

    fn address<const D: usize>(t: &Tensor<Flex, D>) -> usize {
        t.clone().into_primitive().tensor().bytes().as_ptr() as usize
    }

    /// On burn-flex the generic step takes the fused path: a parameter nobody else
    /// holds is updated in its own buffer.
    #[test]
    fn flex_parameters_are_updated_in_place() {
        let dev = Default::default();
        let p = Tensor::<Flex, 1>::from_data(TensorData::from([1.0f32, 2.0, 3.0]), &dev);
        let before = address(&p);
        let g = Tensor::<Flex, 1>::from_data(TensorData::from([0.5f32, -0.5, 0.0]), &dev);
        let (next, state) =
            SimpleOptimizer::<Flex>::step(&FusedAdam::new(None), 0.1, p, g.clone(), None);
        assert_eq!(address(&next), before);
        let m = state.unwrap().momentum;
        let (m1, m2) = (address(&m.moment_1), address(&m.moment_2));
        let state = Some(AdamState::new(m));
        let (next, state) =
            SimpleOptimizer::<Flex>::step(&FusedAdam::new(None), 0.1, next, g, state);
        assert_eq!(address(&next), before);
        let m = state.unwrap().momentum;
        assert_eq!((address(&m.moment_1), address(&m.moment_2)), (m1, m2));
    }

    /// A parameter shared elsewhere (a clone kept by the caller) is not changed.
    #[test]
    fn a_shared_parameter_is_copied_not_overwritten() {
        let dev = Default::default();
        let p = Tensor::<Flex, 1>::from_data(TensorData::from([1.0f32, 2.0, 3.0]), &dev);
        let kept = p.clone();
        let g = Tensor::<Flex, 1>::from_data(TensorData::from([0.5f32, -0.5, 0.0]), &dev);
        let (next, _) = SimpleOptimizer::<Flex>::step(&FusedAdam::new(None), 0.1, p, g, None);
        assert_eq!(kept.to_data().to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        assert_ne!(next.to_data().to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    }
}
