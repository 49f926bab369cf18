//! Our own CPU kernels for layers where burn-flex's generic ones are slow, plugged in
//! without forking burn: a layer asks [`max_pool_2x2`] first and falls back to burn's
//! module when the kernel does not apply (another backend, another shape of pooling).
//!
//! The dispatch is by type at run time ([`std::any::Any`]), so models stay generic
//! over the backend: on `Autodiff<Flex>` (training on CPU) a kernel records its own
//! backward step; on `Flex` (evaluation) it runs forward only; any other backend
//! (CUDA) keeps burn's path.

mod maxpool;

use std::any::Any;

use burn::backend::{Autodiff, Flex};
use burn::nn::pool::MaxPool2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `pool` applied to `x` by our 2×2, stride-2 max-pool kernel when `pool` is that
/// pooling and the backend is burn-flex (with or without autodiff); `Err(x)` gives
/// the input back otherwise, for burn's own module.
pub fn max_pool_2x2<B: Backend>(
    pool: &MaxPool2d,
    x: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let plain = pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.dilation == [1, 1]
        && !pool.ceil_mode
        && matches!(
            pool.padding,
            PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0)
        );
    if !plain || x.dtype() != burn::tensor::DType::F32 {
        return Err(x);
    }
    let x = match cast::<_, Tensor<Autodiff<Flex>, 4>>(x) {
        Ok(t) => return Ok(cast(maxpool::autodiff(t)).unwrap_or_else(|_| unreachable!())),
        Err(x) => x,
    };
    match cast::<_, Tensor<Flex, 4>>(x) {
        Ok(t) => Ok(cast(maxpool::forward(t)).unwrap_or_else(|_| unreachable!())),
        Err(x) => Err(x),
    }
}

/// `v` as a `U` when `T` is `U`, else `v` back.
fn cast<T: 'static, U: 'static>(v: T) -> Result<U, T> {
    let mut slot = Some(v);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        Some(u) => Ok(u.take().expect("just filled")),
        None => Err(slot.expect("not taken")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type Ad = Autodiff<Flex>;

    fn pool2() -> MaxPool2d {
        MaxPool2dConfig::new([2, 2]).init()
    }

    /// Inputs with many ties (rounded, half of them clamped to zero as after a ReLU).
    fn input<B: Backend>(dims: [usize; 4], seed: u64) -> Tensor<B, 4> {
        B::seed(&Default::default(), seed);
        Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 2.0), &Default::default())
            .round()
            .clamp_min(0.0)
    }

    #[test]
    fn training_values_and_gradients_equal_burns_own_pooling() {
        for (i, dims) in [[2, 3, 8, 8], [3, 5, 7, 9], [1, 1, 2, 2], [4, 2, 1, 6]]
            .into_iter()
            .enumerate()
        {
            let x = input::<Ad>(dims, i as u64);
            let weights = Tensor::<Ad, 4>::random(
                [dims[0], dims[1], dims[2] / 2, dims[3] / 2],
                Distribution::Default,
                &Default::default(),
            );
            let run = |ours: bool| {
                let x = x.clone().detach().require_grad();
                let y = if ours {
                    max_pool_2x2(&pool2(), x.clone()).expect("the kernel applies")
                } else {
                    pool2().forward(x.clone())
                };
                let grads = (y.clone() * weights.clone()).sum().backward();
                (
                    y.into_data(),
                    x.grad(&grads).expect("x is tracked").into_data(),
                )
            };
            let (y, g) = run(true);
            let (y_ref, g_ref) = run(false);
            assert_eq!(y, y_ref, "{dims:?}: outputs");
            assert_eq!(g, g_ref, "{dims:?}: input gradients");
        }
    }

    #[test]
    fn evaluation_values_equal_burns_own_pooling() {
        let x = input::<Flex>([3, 4, 11, 10], 7);
        let ours = max_pool_2x2(&pool2(), x.clone()).expect("the kernel applies");
        ours.into_data()
            .assert_approx_eq::<f32>(&pool2().forward(x).into_data(), Tolerance::absolute(0.0));
    }

    #[test]
    fn a_non_contiguous_input_is_read_in_its_logical_order() {
        let x = input::<Flex>([2, 3, 6, 8], 3).swap_dims(2, 3);
        let ours = max_pool_2x2(&pool2(), x.clone()).expect("the kernel applies");
        assert_eq!(ours.into_data(), pool2().forward(x).into_data());
    }

    #[test]
    fn other_poolings_are_left_to_burn() {
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(vec![1.0f32; 16], [1, 1, 4, 4]),
            &Default::default(),
        );
        for p in [
            MaxPool2dConfig::new([2, 2]).with_strides([1, 1]).init(),
            MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).init(),
            MaxPool2dConfig::new([2, 2])
                .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
        ] {
            assert!(max_pool_2x2(&p, x.clone()).is_err(), "{p:?}");
        }
    }
}
