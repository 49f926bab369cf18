//! 2×2, stride-2 max pooling on contiguous f32 NCHW tensors: one pass over row pairs
//! per plane, planes in parallel, the argmax kept as one byte per output (which of
//! the four inputs won) instead of burn-flex's i64 index, and a backward pass that
//! writes each plane's gradient in place.
//!
//! Semantics are burn's (and PyTorch's): the output is `⌊H/2⌋ × ⌊W/2⌋` (a last odd
//! row or column is dropped), the winner is the first maximum in the order top-left,
//! top-right, bottom-left, bottom-right, and the gradient goes to the winner only.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// The planes (`N·C`) and the input height and width of `x`.
fn dims(x: &FlexTensor) -> (usize, usize, usize) {
    let s = x.shape();
    (s[0] * s[1], s[2], s[3])
}

/// Pools `x`; with `codes`, records each output's winner (0–3) there.
fn pool(x: &FlexTensor, codes: Option<&mut Vec<u8>>) -> FlexTensor {
    let x = x.to_contiguous();
    let s = x.shape();
    let (planes, h, w) = dims(&x);
    let (oh, ow) = (h / 2, w / 2);
    let shape = Shape::new([s[0], s[1], oh, ow]);
    let src: &[f32] = x.as_slice().expect("contiguous f32");
    let mut out = vec![0.0; shape.num_elements()];
    let dst = &mut out[..];
    let per = oh * ow;
    if per == 0 {
        return super::f32_tensor(out, shape);
    }
    let work = |(p, o): (usize, &mut [f32]), code: Option<&mut [u8]>| {
        let plane = &src[p * h * w..(p + 1) * h * w];
        pool_plane(plane, w, oh, ow, o, code);
    };
    match codes {
        Some(c) => {
            c.clear();
            c.resize(planes * per, 0);
            dst.par_chunks_mut(per)
                .zip(c.par_chunks_mut(per))
                .enumerate()
                .with_min_len(4)
                .for_each(|(p, (o, c))| work((p, o), Some(c)));
        }
        None => dst
            .par_chunks_mut(per)
            .enumerate()
            .with_min_len(4)
            .for_each(|(p, o)| work((p, o), None)),
    }
    super::f32_tensor(out, shape)
}

/// One plane: `out` is `oh × ow`, the input rows are `w` wide.
fn pool_plane(x: &[f32], w: usize, oh: usize, ow: usize, out: &mut [f32], code: Option<&mut [u8]>) {
    match code {
        Some(code) => {
            for r in 0..oh {
                let (top, bottom) = (&x[2 * r * w..][..2 * ow], &x[(2 * r + 1) * w..][..2 * ow]);
                let o = &mut out[r * ow..][..ow];
                let c = &mut code[r * ow..][..ow];
                for j in 0..ow {
                    let (a, b) = (top[2 * j], top[2 * j + 1]);
                    let (d, e) = (bottom[2 * j], bottom[2 * j + 1]);
                    // First maximum wins: a later one must be strictly greater.
                    let (mut m, mut k) = (a, 0u8);
                    if b > m {
                        (m, k) = (b, 1);
                    }
                    if d > m {
                        (m, k) = (d, 2);
                    }
                    if e > m {
                        (m, k) = (e, 3);
                    }
                    o[j] = m;
                    c[j] = k;
                }
            }
        }
        None => {
            for r in 0..oh {
                let (top, bottom) = (&x[2 * r * w..][..2 * ow], &x[(2 * r + 1) * w..][..2 * ow]);
                let o = &mut out[r * ow..][..ow];
                for j in 0..ow {
                    let mut m = top[2 * j];
                    for v in [top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]] {
                        if v > m {
                            m = v;
                        }
                    }
                    o[j] = m;
                }
            }
        }
    }
}

/// The input gradient: each output's gradient at its winner, zeros elsewhere.
fn backward(grad: &FlexTensor, codes: &[u8], input: &Shape) -> FlexTensor {
    let grad = grad.to_contiguous();
    let g: &[f32] = grad.as_slice().expect("contiguous f32");
    let (h, w) = (input[2], input[3]);
    let (oh, ow) = (h / 2, w / 2);
    let mut out = super::zeros(input.clone());
    let per = oh * ow;
    if per == 0 {
        return out;
    }
    let dst: &mut [f32] = out.storage_mut();
    dst.par_chunks_mut(h * w)
        .zip(g.par_chunks(per).zip(codes.par_chunks(per)))
        .with_min_len(4)
        .for_each(|(plane, (g, c))| {
            for r in 0..oh {
                for j in 0..ow {
                    let k = c[r * ow + j] as usize;
                    let (dr, dc) = (k / 2, k % 2);
                    plane[(2 * r + dr) * w + 2 * j + dc] = g[r * ow + j];
                }
            }
        });
    out
}

/// Forward only (evaluation on burn-flex).
pub(super) fn forward(x: Tensor<Flex, 4>) -> Tensor<Flex, 4> {
    let x = x.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(pool(&x, None)))
}

/// The backward step of [`autodiff`]: the winners and the input's shape.
#[derive(Debug)]
struct MaxPool2x2;

impl Backward<Flex, 1> for MaxPool2x2 {
    type State = (Vec<u8>, Shape);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = parent {
            let (codes, shape) = ops.state;
            grads.register::<Flex>(node.id, backward(&grad, &codes, &shape));
        }
    }
}

/// Forward with its backward step recorded (training on burn-flex).
pub(super) fn autodiff(x: Tensor<Autodiff<Flex>, 4>) -> Tensor<Autodiff<Flex>, 4> {
    let x = x.into_primitive().tensor();
    let out = match MaxPool2x2
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let mut codes = Vec::new();
            let out = pool(&x.primitive, Some(&mut codes));
            prep.finish((codes, x.primitive.shape()), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(pool(&x.primitive, None)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
