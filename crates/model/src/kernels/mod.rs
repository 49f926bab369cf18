//! Our own CPU kernels for layers where burn-flex's generic ones are slow, plugged in
//! without forking burn: a layer asks [`conv2d`] or [`max_pool_2x2`] first and falls
//! back to burn's module when the kernel does not apply (another backend, another
//! shape of layer).
//!
//! The dispatch is by type at run time ([`std::any::Any`]), so models stay generic
//! over the backend: on `Autodiff<Flex>` (training on CPU) a kernel records its own
//! backward step; on `Flex` (evaluation) it runs forward only; any other backend
//! (CUDA) keeps burn's path.

mod conv;
mod maxpool;

use std::any::Any;

use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

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
    if !plain || x.dtype() != DType::F32 {
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

/// `conv` applied to `x` (followed by a ReLU when `relu`) by our convolution kernel
/// when the layer has a bias, one group, no dilation and explicit (or no) padding, and
/// the backend is burn-flex (with or without autodiff); `Err(x)` gives the input back
/// otherwise, for burn's own module.
pub fn conv2d<B: Backend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    relu: bool,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Explicit(top, left, bottom, right) => (top, left, bottom, right),
        PaddingConfig2d::Same => return Err(x),
    };
    let Some(bias) = &conv.bias else {
        return Err(x);
    };
    let geom = conv::Geom::new(x.dims(), conv.weight.dims(), conv.stride, padding);
    let (Some(geom), true, [1, 1], true) = (
        geom,
        conv.groups == 1,
        conv.dilation,
        x.dtype() == DType::F32 && conv.weight.dtype() == DType::F32,
    ) else {
        return Err(x);
    };
    let geom = conv::Geom { relu, ..geom };
    let (w, b) = (conv.weight.val(), bias.val());
    let x = match cast::<_, Tensor<Autodiff<Flex>, 4>>(x) {
        Ok(x) => {
            let (w, b) = on_backend(w, b);
            return Ok(cast(conv::autodiff(geom, x, w, b)).unwrap_or_else(|_| unreachable!()));
        }
        Err(x) => x,
    };
    match cast::<_, Tensor<Flex, 4>>(x) {
        Ok(x) => {
            let (w, b) = on_backend(w, b);
            Ok(cast(conv::forward(geom, x, w, b)).unwrap_or_else(|_| unreachable!()))
        }
        Err(x) => Err(x),
    }
}

/// A layer's weight and bias as tensors of the backend `C` its input was found on.
fn on_backend<B: Backend, C: Backend>(
    w: Tensor<B, 4>,
    b: Tensor<B, 1>,
) -> (Tensor<C, 4>, Tensor<C, 1>) {
    match (cast(w), cast(b)) {
        (Ok(w), Ok(b)) => (w, b),
        _ => unreachable!("the layer's parameters live on the input's backend"),
    }
}

/// A contiguous f32 tensor of `shape` holding `v`, without a copy.
///
/// burn-flex's `FlexTensor::empty`/`zeros` build a `Vec<u8>`, which cubecl's `Bytes`
/// then copies into a 16-byte-aligned allocation (a `u8` buffer reports alignment 1):
/// a zeroing pass and a copy of every output buffer. A `Vec<f32>` handed over through
/// `TensorData` is kept as it is.
pub fn f32_tensor(v: Vec<f32>, shape: burn::tensor::Shape) -> burn_flex::FlexTensor {
    burn_flex::FlexTensor::from_data(burn::tensor::TensorData::new(v, shape))
}

/// A contiguous f32 tensor of `shape` filled with zeros (one pass, no copy).
pub fn zeros(shape: burn::tensor::Shape) -> burn_flex::FlexTensor {
    f32_tensor(vec![0.0; shape.num_elements()], shape)
}

/// `t` itself when its f32 values can be read as one slice (a view into a larger
/// buffer included), else a contiguous copy: how a kernel reads an input in place.
pub fn readable(t: burn_flex::FlexTensor) -> burn_flex::FlexTensor {
    match t.as_slice::<f32>() {
        Some(_) => t,
        None => t.to_contiguous(),
    }
}

/// `v` as a `U` when `T` is `U`, else `v` back: how a kernel written for one
/// backend is chosen inside code generic over the backend.
pub fn cast<T: 'static, U: 'static>(v: T) -> Result<U, T> {
    let mut slot = Some(v);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        Some(u) => Ok(u.take().expect("just filled")),
        None => Err(slot.expect("not taken")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
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

    /// A convolution layer as the model builds it (weights from burn's initialiser).
    fn conv_layer<B: Backend>(
        channels: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: PaddingConfig2d,
        seed: u64,
    ) -> Conv2d<B> {
        B::seed(&Default::default(), seed);
        Conv2dConfig::new(channels, kernel)
            .with_stride(stride)
            .with_padding(padding)
            .init(&Default::default())
    }

    /// Input dims, output channels, kernel, stride, padding.
    type ConvCase = ([usize; 4], usize, [usize; 2], [usize; 2], PaddingConfig2d);

    /// Shapes of the example models and the corners of the index arithmetic: odd sizes,
    /// strides that do not divide, asymmetric padding, rows that read only padding, 1×1
    /// projections.
    fn conv_cases() -> Vec<ConvCase> {
        use PaddingConfig2d::{Explicit, Valid};
        vec![
            ([3, 1, 28, 28], 4, [5, 5], [1, 1], Valid),
            ([2, 3, 12, 12], 5, [5, 5], [1, 1], Explicit(2, 2, 2, 2)),
            ([2, 3, 9, 7], 4, [3, 3], [2, 2], Explicit(1, 0, 2, 1)),
            ([1, 2, 5, 6], 3, [2, 3], [1, 2], Valid),
            ([4, 6, 8, 8], 2, [1, 1], [2, 2], Valid),
            ([2, 2, 3, 3], 2, [3, 3], [1, 1], Explicit(3, 3, 3, 3)),
            ([17, 2, 4, 5], 3, [3, 2], [3, 1], Explicit(0, 2, 1, 0)),
            ([2, 2, 5, 5], 3, [3, 3], [1, 1], Explicit(0, 0, 1, 2)),
        ]
    }

    /// burn's own convolution, and ReLU when asked.
    fn reference<B: Backend>(layer: &Conv2d<B>, x: Tensor<B, 4>, relu: bool) -> Tensor<B, 4> {
        let y = layer.forward(x);
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }

    #[test]
    fn convolution_values_and_gradients_match_burns_own() {
        for (i, (dims, co, kernel, stride, padding)) in conv_cases().into_iter().enumerate() {
            for relu in [false, true] {
                let layer =
                    conv_layer::<Ad>([dims[1], co], kernel, stride, padding.clone(), i as u64);
                let x = Tensor::<Ad, 4>::random(
                    dims,
                    Distribution::Uniform(-1.0, 1.0),
                    &Default::default(),
                );
                let y = reference(&layer, x.clone(), false);
                let weights =
                    Tensor::<Ad, 4>::random(y.dims(), Distribution::Default, &Default::default());
                let run = |mine: bool| {
                    let x = x.clone().detach().require_grad();
                    let y = if mine {
                        conv2d(&layer, x.clone(), relu).expect("the kernel applies")
                    } else {
                        reference(&layer, x.clone(), relu)
                    };
                    let grads = (y.clone() * weights.clone()).sum().backward();
                    let bias = layer.bias.as_ref().expect("a bias");
                    let weight = layer.weight.val();
                    [
                        y.into_data(),
                        x.grad(&grads).expect("x is tracked").into_data(),
                        weight.grad(&grads).expect("tracked").into_data(),
                        bias.val().grad(&grads).expect("tracked").into_data(),
                    ]
                };
                let tol = Tolerance::<f32>::rel_abs(1e-4, 1e-5);
                for (name, (a, b)) in ["output", "input grad", "weight grad", "bias grad"]
                    .iter()
                    .zip(run(true).into_iter().zip(run(false)))
                {
                    assert_eq!(a.shape, b.shape, "case {i} {dims:?} relu {relu}: {name}");
                    a.assert_approx_eq::<f32>(&b, tol);
                }
            }
        }
    }

    #[test]
    fn convolution_in_evaluation_matches_burns_own_also_on_a_strided_input() {
        for (i, (dims, co, kernel, stride, padding)) in conv_cases().into_iter().enumerate() {
            let layer = conv_layer::<Flex>([dims[1], co], kernel, stride, padding, i as u64);
            let [n, c, h, w] = dims;
            let x = Tensor::<Flex, 4>::random(
                [n, c, w, h],
                Distribution::Uniform(-1.0, 1.0),
                &Default::default(),
            )
            .swap_dims(2, 3);
            for relu in [false, true] {
                let ours = conv2d(&layer, x.clone(), relu).expect("the kernel applies");
                ours.into_data().assert_approx_eq::<f32>(
                    &reference(&layer, x.clone(), relu).into_data(),
                    Tolerance::<f32>::rel_abs(1e-4, 1e-5),
                );
            }
        }
    }

    #[test]
    fn a_first_layer_gets_weight_gradients_without_an_input_gradient() {
        let layer = conv_layer::<Ad>([1, 3], [3, 3], [1, 1], PaddingConfig2d::Valid, 5);
        let x = Tensor::<Ad, 4>::random([2, 1, 6, 6], Distribution::Default, &Default::default());
        let grads = conv2d(&layer, x.clone(), false)
            .expect("applies")
            .sum()
            .backward();
        assert!(x.grad(&grads).is_none());
        let ours = layer
            .weight
            .val()
            .grad(&grads)
            .expect("tracked")
            .into_data();
        let grads = layer.forward(x).sum().backward();
        let theirs = layer
            .weight
            .val()
            .grad(&grads)
            .expect("tracked")
            .into_data();
        ours.assert_approx_eq::<f32>(&theirs, Tolerance::<f32>::rel_abs(1e-4, 1e-5));
    }

    #[test]
    fn a_batchs_weight_gradient_is_the_exact_sum_of_its_halves() {
        // What keeps 2 (or 4) workers, whose all-reduce adds the halves, equal to one.
        for n in [60, 17, 128] {
            let layer = conv_layer::<Ad>([3, 4], [3, 3], [1, 1], PaddingConfig2d::Valid, 2);
            let dev = Default::default();
            let x = Tensor::<Ad, 4>::random([n, 3, 10, 10], Distribution::Default, &dev);
            let dy = Tensor::<Ad, 4>::random([n, 4, 8, 8], Distribution::Normal(0.0, 1e-3), &dev);
            let grads = |a: usize, b: usize| {
                let y = conv2d(&layer, x.clone().narrow(0, a, b - a), true).expect("applies");
                let g = (y * dy.clone().narrow(0, a, b - a)).sum().backward();
                let bias = layer.bias.as_ref().expect("a bias").val().grad(&g);
                let weight = layer.weight.val().grad(&g).expect("tracked");
                [weight.flatten::<1>(0, 3), bias.expect("tracked")]
            };
            let mid = n / 2;
            let (full, (left, right)) = (grads(0, n), (grads(0, mid), grads(mid, n)));
            for ((f, l), r) in full.into_iter().zip(left).zip(right) {
                assert_eq!(f.into_data(), (l + r).into_data(), "batch of {n}");
            }
        }
    }

    #[test]
    fn other_convolutions_are_left_to_burn() {
        let x = Tensor::<Flex, 4>::ones([1, 2, 6, 6], &Default::default());
        let dev = Default::default();
        for c in [
            Conv2dConfig::new([2, 2], [3, 3])
                .with_bias(false)
                .init::<Flex>(&dev),
            Conv2dConfig::new([2, 2], [3, 3]).with_groups(2).init(&dev),
            Conv2dConfig::new([2, 2], [3, 3])
                .with_dilation([2, 2])
                .init(&dev),
            Conv2dConfig::new([2, 2], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(&dev),
        ] {
            assert!(conv2d(&c, x.clone(), false).is_err(), "{c:?}");
        }
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
