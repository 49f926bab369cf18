//! The burn module built from a layer plan.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig, PaddingConfig2d, Relu,
};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use dlc_job::{LayerSpec, Padding};

use crate::norm::BatchNorm;
use crate::shape::{LayerPlan, Projection, Shape};

/// Flattens `[batch, c, h, w]` into `[batch, c*h*w]`. Has no parameters.
#[derive(Module, Clone, Debug, Default)]
pub struct Flatten;

/// Means each channel over height and width: `[batch, c, h, w]` → `[batch, c]`.
#[derive(Module, Clone, Debug, Default)]
pub struct GlobalAvgpool;

/// Means a sequence's vectors: `[batch, tokens, dim]` → `[batch, dim]`.
#[derive(Module, Clone, Debug, Default)]
pub struct MeanPool;

/// One layer of a [`Net`]: an operation or a residual block of operations.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Layer<B: Backend> {
    /// An operation.
    Op(Op<B>),
    /// A residual block.
    Residual(Residual<B>),
}

/// An operation (every layer kind but the residual block, which holds operations;
/// blocks do not nest, which keeps burn's record types finite).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Op<B: Backend> {
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
    /// Token embedding.
    Embedding(Embedding<B>),
    /// Mean over a sequence.
    MeanPool(MeanPool),
}

/// A residual block: its layers' output plus its input, projected to the output's
/// shape when the two differ.
#[derive(Module, Debug)]
pub struct Residual<B: Backend> {
    /// The block's layers, in order.
    pub layers: Vec<Op<B>>,
    /// The input's projection, when the layers change the shape.
    pub projection: Option<Shortcut<B>>,
}

/// The learned projection on a residual block's skip path.
#[derive(Module, Debug)]
pub enum Shortcut<B: Backend> {
    /// 1×1 convolution (images).
    Conv(Conv2d<B>),
    /// Dense layer (feature vectors).
    Dense(Linear<B>),
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

/// Activation between layers: images, feature vectors or sequences of vectors.
enum Act<B: Backend> {
    Spatial(Tensor<B, 4>),
    Flat(Tensor<B, 2>),
    Seq(Tensor<B, 3>),
}

impl<B: Backend> Net<B> {
    /// Builds the network for a checked plan (see [`crate::plan`]), with freshly
    /// initialised parameters drawn from the backend's RNG (seed it first for
    /// reproducible weights).
    pub fn new(plan: &[LayerPlan], device: &B::Device) -> Self {
        let net = Self {
            layers: build(plan, device),
        };
        // burn initialises parameters lazily, on first use, from whatever the RNG holds
        // then. Touch them now so that the weights depend on the seed set before
        // `new`, not on what ran in between.
        net.visit(&mut Materialize);
        net
    }

    /// The number of token ids the first layer takes when it is an `embedding`: inputs
    /// must then be integers in `0..vocab` (see [`Net::check_tokens`]).
    pub fn vocab(&self) -> Option<usize> {
        match self.layers.first() {
            Some(Layer::Op(Op::Embedding(e))) => Some(e.weight.dims()[0]),
            _ => None,
        }
    }

    /// Checks that `inputs` (a batch's feature values) are token ids the first-layer
    /// embedding knows, so a bad id is an error, not an out-of-bounds lookup. Every
    /// input passes when the net does not start with an embedding.
    pub fn check_tokens(&self, inputs: &[f32]) -> Result<(), String> {
        let Some(vocab) = self.vocab() else {
            return Ok(());
        };
        match inputs
            .iter()
            .find(|&&v| !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < vocab))
        {
            Some(v) => Err(format!(
                "a sample holds {v}, which is not a token id of the first layer (`embedding` \
                 takes integers 0 to {}): check the feature columns, or raise `vocab`",
                vocab - 1
            )),
            None => Ok(()),
        }
    }

    /// Forward pass: `[batch, c, h, w]` → `[batch, classes]` logits. Feature vectors
    /// (tables) come as `[batch, features, 1, 1]`; element-wise layers and batch norm
    /// treat that like a flat vector, and dense layers flatten it.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        run(&self.layers, Act::Spatial(images), &mut NoHook).flat()
    }

    /// [`Net::forward`], with `hook` asked before each layer runs whether to run a
    /// replacement (the same layer with its parameters swapped) in its place.
    pub fn forward_hooked<H: LayerHook<B>>(
        &self,
        images: Tensor<B, 4>,
        hook: &mut H,
    ) -> Tensor<B, 2> {
        run(&self.layers, Act::Spatial(images), hook).flat()
    }
}

/// Asked by [`Net::forward_hooked`] just before each layer runs, with the layer's
/// input at hand: what data-parallel training uses to tap each parameter's gradient
/// the moment backward has it (the tap hangs on the input so that backward reaches
/// it right after the layer, not at the very end).
pub trait LayerHook<B: Backend> {
    /// The layer to run on `input` in place of `layer`, or `None` to run `layer`.
    fn before<M: Module<B>, const D: usize>(
        &mut self,
        layer: &M,
        input: &Tensor<B, D>,
    ) -> Option<M>;
}

/// The hook of a plain forward pass: every layer runs as it is.
struct NoHook;

impl<B: Backend> LayerHook<B> for NoHook {
    fn before<M: Module<B>, const D: usize>(&mut self, _: &M, _: &Tensor<B, D>) -> Option<M> {
        None
    }
}

/// `hook`'s replacement for `layer` before it runs on `x`.
fn hooked<B: Backend, M: Module<B>, H: LayerHook<B>>(
    hook: &mut H,
    layer: &M,
    x: &Act<B>,
) -> Option<M> {
    match x {
        Act::Spatial(t) => hook.before(layer, t),
        Act::Flat(t) => hook.before(layer, t),
        Act::Seq(t) => hook.before(layer, t),
    }
}

/// The layers of a checked plan, parameters freshly initialised.
fn build<B: Backend>(plan: &[LayerPlan], device: &B::Device) -> Vec<Layer<B>> {
    plan.iter()
        .map(|lp| match &lp.block {
            Some(block) => Layer::Residual(Residual {
                layers: block.layers.iter().map(|l| op(l, device)).collect(),
                projection: block.projection.map(|p| match p {
                    Projection::Conv { from, to, stride } => Shortcut::Conv(
                        Conv2dConfig::new([from, to], [1, 1])
                            .with_stride([stride, stride])
                            .init(device),
                    ),
                    Projection::Dense { from, to } => {
                        Shortcut::Dense(LinearConfig::new(from, to).init(device))
                    }
                }),
            }),
            None => Layer::Op(op(lp, device)),
        })
        .collect()
}

/// The operation of a checked plan's (non-residual) layer.
fn op<B: Backend>(lp: &LayerPlan, device: &B::Device) -> Op<B> {
    match (&lp.spec, lp.input) {
        (&LayerSpec::Dense { units }, Shape::Flat(f)) => {
            Op::Dense(LinearConfig::new(f, units).init(device))
        }
        (
            &LayerSpec::Conv2d {
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
            Op::Conv2d(
                Conv2dConfig::new([c, filters], [kernel, kernel])
                    .with_stride([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                    .init(device),
            )
        }
        (&LayerSpec::Maxpool2d { size, stride }, _) => {
            let s = stride.unwrap_or(size);
            Op::Maxpool2d(
                MaxPool2dConfig::new([size, size])
                    .with_strides([s, s])
                    .init(),
            )
        }
        (&LayerSpec::Avgpool2d { size, stride }, _) => {
            let s = stride.unwrap_or(size);
            Op::Avgpool2d(
                AvgPool2dConfig::new([size, size])
                    .with_strides([s, s])
                    .init(),
            )
        }
        (LayerSpec::GlobalAvgpool, _) => Op::GlobalAvgpool(GlobalAvgpool),
        (LayerSpec::Layernorm, Shape::Flat(f)) => {
            Op::Layernorm(LayerNormConfig::new(f).init(device))
        }
        (LayerSpec::Flatten, _) => Op::Flatten(Flatten),
        (LayerSpec::Relu, _) => Op::Relu(Relu::new()),
        (&LayerSpec::Dropout { rate }, _) => Op::Dropout(DropoutConfig::new(rate).init()),
        (LayerSpec::Batchnorm, Shape::Spatial { c: ch, .. } | Shape::Flat(ch)) => {
            Op::Batchnorm(BatchNorm::new(ch, device))
        }
        (&LayerSpec::Embedding { vocab, dim }, _) => {
            Op::Embedding(EmbeddingConfig::new(vocab, dim).init(device))
        }
        (LayerSpec::MeanPool, _) => Op::MeanPool(MeanPool),
        (spec, input) => unreachable!("plan() rejects {spec:?} on {input}"),
    }
}

/// Runs `layers` in order on `x`.
fn run<B: Backend, H: LayerHook<B>>(layers: &[Layer<B>], mut x: Act<B>, hook: &mut H) -> Act<B> {
    let mut rest = layers;
    while let Some((layer, tail)) = rest.split_first() {
        rest = tail;
        x = match layer {
            Layer::Op(op) => {
                let next = match tail.first() {
                    Some(Layer::Op(next)) => Some(next),
                    _ => None,
                };
                let swapped = hooked(hook, op, &x);
                let (y, fused) = apply_fusing(swapped.as_ref().unwrap_or(op), next, x);
                if fused {
                    rest = &tail[1..];
                }
                y
            }
            Layer::Residual(r) => {
                let swapped = r.projection.as_ref().and_then(|p| hooked(hook, p, &x));
                let projection = swapped.as_ref().or(r.projection.as_ref());
                let y = run_ops(&r.layers, x.clone(), hook);
                let skip = match (projection, x) {
                    (None, x) => x,
                    (Some(Shortcut::Conv(c)), Act::Spatial(t)) => Act::Spatial(conv(c, t, false)),
                    (Some(Shortcut::Dense(l)), x) => Act::Flat(l.forward(x.flat())),
                    (Some(Shortcut::Conv(_)), Act::Flat(_) | Act::Seq(_)) => {
                        panic!("a convolution shortcut on a flat input; build Net from crate::plan")
                    }
                };
                match (y, skip) {
                    (Act::Spatial(a), Act::Spatial(b)) => Act::Spatial(a + b),
                    (Act::Seq(a), Act::Seq(b)) => Act::Seq(a + b),
                    (a, b) => Act::Flat(a.flat() + b.flat()),
                }
            }
        };
    }
    x
}

/// Runs a residual block's operations in order on `x`.
fn run_ops<B: Backend, H: LayerHook<B>>(ops: &[Op<B>], mut x: Act<B>, hook: &mut H) -> Act<B> {
    let mut rest = ops;
    while let Some((op, tail)) = rest.split_first() {
        let swapped = hooked(hook, op, &x);
        let (y, fused) = apply_fusing(swapped.as_ref().unwrap_or(op), tail.first(), x);
        rest = if fused { &tail[1..] } else { tail };
        x = y;
    }
    x
}

/// Applies `op`, or `op` and `next` as one step where our kernels fuse the pair (a
/// convolution and the ReLU after it: the same values and gradients, one pass fewer);
/// says whether `next` was applied too.
fn apply_fusing<B: Backend>(op: &Op<B>, next: Option<&Op<B>>, x: Act<B>) -> (Act<B>, bool) {
    match (op, next, x) {
        (Op::Conv2d(l), Some(Op::Relu(_)), Act::Spatial(t)) => {
            (Act::Spatial(conv(l, t, true)), true)
        }
        (op, _, x) => (apply(op, x), false),
    }
}

/// Applies one operation. A feature vector arrives as `[batch, features, 1, 1]`;
/// element-wise layers and batch norm treat that like a flat vector, and dense and
/// layer-norm layers flatten it.
fn apply<B: Backend>(op: &Op<B>, x: Act<B>) -> Act<B> {
    match (op, x) {
        (Op::Dense(l), x) => Act::Flat(l.forward(x.flat())),
        (Op::Conv2d(l), Act::Spatial(t)) => Act::Spatial(conv(l, t, false)),
        (Op::Maxpool2d(l), Act::Spatial(t)) => {
            Act::Spatial(crate::kernels::max_pool_2x2(l, t).unwrap_or_else(|t| l.forward(t)))
        }
        (Op::Avgpool2d(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
        (Op::GlobalAvgpool(_), Act::Spatial(t)) => {
            Act::Flat(t.mean_dim(3).mean_dim(2).flatten(1, 3))
        }
        (Op::Layernorm(l), x) => Act::Flat(l.forward(x.flat())),
        (Op::Flatten(_), x) => Act::Flat(x.flat()),
        (Op::Relu(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
        (Op::Relu(l), Act::Flat(t)) => Act::Flat(l.forward(t)),
        (Op::Dropout(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
        (Op::Dropout(l), Act::Flat(t)) => Act::Flat(l.forward(t)),
        (Op::Batchnorm(l), Act::Spatial(t)) => Act::Spatial(l.forward(t)),
        (Op::Embedding(l), x) => Act::Seq(l.forward(x.flat().int())),
        (Op::MeanPool(_), Act::Seq(t)) => {
            let [b, _, d] = t.dims();
            Act::Flat(t.mean_dim(1).reshape([b, d]))
        }
        (Op::Relu(l), Act::Seq(t)) => Act::Seq(l.forward(t)),
        (Op::Dropout(l), Act::Seq(t)) => Act::Seq(l.forward(t)),
        (Op::Batchnorm(l), Act::Flat(t)) => {
            let [b, f] = t.dims();
            Act::Flat(l.forward(t.reshape([b, f, 1, 1])).reshape([b, f]))
        }
        (_, _) => panic!("layer does not match its input; build Net from crate::plan"),
    }
}

/// A convolution (and the ReLU after it, when `relu`) by our kernel where it applies,
/// else by burn's modules.
fn conv<B: Backend>(l: &Conv2d<B>, t: Tensor<B, 4>, relu: bool) -> Tensor<B, 4> {
    crate::kernels::conv2d(l, t, relu).unwrap_or_else(|t| {
        let y = l.forward(t);
        if relu {
            Relu::new().forward(y)
        } else {
            y
        }
    })
}

impl<B: Backend> Act<B> {
    /// The activation as `[batch, features]`.
    fn flat(self) -> Tensor<B, 2> {
        match self {
            Act::Flat(t) => t,
            Act::Spatial(t) => t.flatten(1, 3),
            Act::Seq(t) => t.flatten(1, 2),
        }
    }
}

impl<B: Backend> Clone for Act<B> {
    fn clone(&self) -> Self {
        match self {
            Act::Spatial(t) => Act::Spatial(t.clone()),
            Act::Flat(t) => Act::Flat(t.clone()),
            Act::Seq(t) => Act::Seq(t.clone()),
        }
    }
}
