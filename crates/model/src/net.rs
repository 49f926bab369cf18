//! The burn module built from a layer plan.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig, PaddingConfig2d, Relu,
};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use dlc_job::{LayerSpec, Padding};

use crate::shape::{LayerPlan, Shape};

/// Flattens `[batch, c, h, w]` into `[batch, c*h*w]`. Has no parameters.
#[derive(Module, Clone, Debug, Default)]
pub struct Flatten;

/// Means each channel over height and width: `[batch, c, h, w]` → `[batch, c]`.
#[derive(Module, Clone, Debug, Default)]
pub struct GlobalAvgpool;

/// One layer of a [`Net`].
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Layer<B: Backend> {
    /// Fully connected.
    Dense(Linear<B>),
    /// 2-D convolution.
    Conv2d(Conv2d<B>),
    /// 2-D max pooling.
    Maxpool2d(MaxPool2d),
    /// 2-D average pooling.
    Avgpool2d(AvgPool2d),
    /// Global average pooling.
    GlobalAvgpool(GlobalAvgpool),
    /// Flatten.
    Flatten(Flatten),
    /// ReLU.
    Relu(Relu),
    /// Dropout (active only when autodiff is on, i.e. in training).
    Dropout(Dropout),
    /// Batch normalisation.
    Batchnorm(BatchNorm<B>),
    /// Layer normalisation.
    Layernorm(LayerNorm<B>),
}

/// A sequential network of [`Layer`]s taking `[batch, c, h, w]` images and producing
/// `[batch, classes]` logits.
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    /// The layers, in order.
    pub layers: Vec<Layer<B>>,
}

struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Activation between layers: images or feature vectors.
enum Act<B: Backend> {
    Spatial(Tensor<B, 4>),
    Flat(Tensor<B, 2>),
}

impl<B: Backend> Net<B> {
    /// Builds the network for a checked plan (see [`crate::plan`]), with freshly
    /// initialised parameters drawn from the backend's RNG (seed it first for
    /// reproducible weights).
    pub fn new(plan: &[LayerPlan], device: &B::Device) -> Self {
        let layers = plan
            .iter()
            .map(|lp| match (lp.spec, lp.input) {
                (LayerSpec::Dense { units }, Shape::Flat(f)) => {
                    Layer::Dense(LinearConfig::new(f, units).init(device))
                }
                (
                    LayerSpec::Conv2d {
                        filters,
                        kernel,
                        stride,
                        padding,
                    },
                    Shape::Spatial { c, .. },
                ) => {
                    let pad = match padding {
                        Padding::Valid => 0,
                        Padding::Same => (kernel - 1) / 2,
                    };
                    Layer::Conv2d(
                        Conv2dConfig::new([c, filters], [kernel, kernel])
                            .with_stride([stride, stride])
                            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                            .init(device),
                    )
                }
                (LayerSpec::Maxpool2d { size, stride }, _) => {
                    let s = stride.unwrap_or(size);
                    Layer::Maxpool2d(
                        MaxPool2dConfig::new([size, size])
                            .with_strides([s, s])
                            .init(),
                    )
                }
                (LayerSpec::Avgpool2d { size, stride }, _) => {
                    let s = stride.unwrap_or(size);
                    Layer::Avgpool2d(
                        AvgPool2dConfig::new([size, size])
                            .with_strides([s, s])
                            .init(),
                    )
                }
                (LayerSpec::GlobalAvgpool, _) => Layer::GlobalAvgpool(GlobalAvgpool),
                (LayerSpec::Layernorm, Shape::Flat(f)) => {
                    Layer::Layernorm(LayerNormConfig::new(f).init(device))
                }
                (LayerSpec::Flatten, _) => Layer::Flatten(Flatten),
                (LayerSpec::Relu, _) => Layer::Relu(Relu::new()),
                (LayerSpec::Dropout { rate }, _) => Layer::Dropout(DropoutConfig::new(rate).init()),
                (LayerSpec::Batchnorm, s) => {
                    let ch = match s {
                        Shape::Spatial { c, .. } => c,
                        Shape::Flat(f) => f,
                    };
                    Layer::Batchnorm(BatchNormConfig::new(ch).init(device))
                }
                (spec, input) => unreachable!("plan() rejects {spec:?} on {input}"),
            })
            .collect();
        let net = Self { layers };
        // burn initialises parameters lazily, on first use, from whatever the RNG holds
        // then. Touch them now so that the weights depend on the seed set before
        // `new`, not on what ran in between.
        net.visit(&mut Materialize);
        net
    }

    /// Forward pass: `[batch, c, h, w]` → `[batch, classes]` logits. Feature vectors
    /// (tables) come as `[batch, features, 1, 1]`; element-wise layers and batch norm
    /// treat that like a flat vector, and dense layers flatten it.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = Act::Spatial(images);
        for layer in &self.layers {
            x = match (layer, x) {
                (Layer::Dense(l), Act::Flat(t)) => Act::Flat(l.forward(t)),
                // A feature vector arrives as `[batch, features, 1, 1]`.
                (Layer::Dense(l), Act::Spatial(t)) => Act::Flat(l.forward(t.flatten(1, 3))),
                (Layer::Conv2d(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
                (Layer::Maxpool2d(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
                (Layer::Avgpool2d(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
                (Layer::GlobalAvgpool(_), Act::Spatial(t)) => {
                    Act::Flat(t.mean_dim(3).mean_dim(2).flatten(1, 3))
                }
                (Layer::Layernorm(l), Act::Flat(t)) => Act::Flat(l.forward(t)),
                // A feature vector arrives as `[batch, features, 1, 1]`.
                (Layer::Layernorm(l), Act::Spatial(t)) => Act::Flat(l.forward(t.flatten(1, 3))),
                (Layer::Flatten(_), Act::Spatial(t)) => Act::Flat(t.flatten(1, 3)),
                (Layer::Flatten(_), Act::Flat(t)) => Act::Flat(t),
                (Layer::Relu(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
                (Layer::Relu(l), Act::Flat(t)) => Act::Flat(l.forward(t)),
                (Layer::Dropout(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
                (Layer::Dropout(l), Act::Flat(t)) => Act::Flat(l.forward(t)),
                (Layer::Batchnorm(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
                (Layer::Batchnorm(l), Act::Flat(t)) => Act::Flat(l.forward(t)),
                (_, _) => panic!("layer does not match its input; build Net from crate::plan"),
            };
        }
        match x {
            Act::Flat(t) => t,
            Act::Spatial(t) => t.flatten(1, 3),
        }
    }
}
