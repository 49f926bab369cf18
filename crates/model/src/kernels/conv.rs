//! 2-D convolution (groups 1, dilation 1, any stride and explicit padding, with bias)
//! on contiguous f32 NCHW tensors, forward and backward as one op.
//!
//! The forward pass lays each sample's receptive fields out as a column matrix
//! (`im2col`, `[Cin·Kh·Kw, OH·OW]`) and multiplies the weights by it straight into the
//! sample's output, which already holds the bias: no per-call transposes, samples in
//! parallel, one single-threaded GEMM each. In training the column matrices are kept
//! for the backward pass, which then needs no second `im2col`:
//!
//! - weight gradient: `Σ_s dY_s · col_sᵀ`, the transpose read through the GEMM's
//!   strides (burn's generic backward copies `swap_dims` views instead), summed over
//!   the batch as a tree of halves (see [`weight_and_bias_grads`]);
//! - bias gradient: the sum of `dY` over samples and positions;
//! - input gradient (only when the input is tracked, so never for a first layer):
//!   `Wᵀ · dY_s` per sample, scattered back with a `col2im` that adds whole rows.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;

/// Samples whose weight gradients are accumulated in order; larger groups are summed
/// as a tree (see [`weight_and_bias_grads`]). Fixed, so the result is the same on any
/// number of threads.
const GRAD_GROUP: usize = 8;

/// The shape of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geom {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub ci: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub co: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Padding above.
    pub pt: usize,
    /// Padding on the left.
    pub pl: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Whether a ReLU follows, fused into the output pass (and its gradient into the
    /// backward pass).
    pub relu: bool,
}

impl Geom {
    /// The geometry of convolving `[n, ci, h, w]` with `[co, ci, kh, kw]` weights at
    /// `stride`, padded by `(top, left, bottom, right)`; `None` when no output fits.
    pub fn new(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        (top, left, bottom, right): (usize, usize, usize, usize),
    ) -> Option<Self> {
        let [n, ci, h, w] = x;
        let [co, wci, kh, kw] = weight;
        let [sh, sw] = stride;
        let (hp, wp) = (h + top + bottom, w + left + right);
        // Empty inputs and kernels stay with burn: every sample below has values.
        let empty = [ci, h, w, kh, kw, sh, sw].contains(&0);
        if empty || wci != ci || hp < kh || wp < kw {
            return None;
        }
        Some(Self {
            n,
            ci,
            h,
            w,
            co,
            kh,
            kw,
            sh,
            sw,
            pt: top,
            pl: left,
            oh: (hp - kh) / sh + 1,
            ow: (wp - kw) / sw + 1,
            relu: false,
        })
    }

    /// Stride 1 and no padding read: every column-matrix row is a run of plain copies.
    fn plain(&self) -> bool {
        let (sh, sw, pt, pl) = (self.sh, self.sw, self.pt, self.pl);
        sh == 1
            && sw == 1
            && pt == 0
            && pl == 0
            && self.oh + self.kh <= self.h + 1
            && self.ow + self.kw <= self.w + 1
    }

    /// Rows of a column matrix: `ci·kh·kw`.
    fn k(&self) -> usize {
        self.ci * self.kh * self.kw
    }

    /// Output positions per channel: `oh·ow`.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// Values per input sample.
    fn sample_in(&self) -> usize {
        self.ci * self.h * self.w
    }

    /// Values per output sample.
    fn sample_out(&self) -> usize {
        self.co * self.p()
    }

    /// The output columns `lo..hi` whose input column for kernel column `j` lies
    /// inside the image (the others read padding).
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        // ox·sw + j − pl ∈ [0, w)
        let lo = if self.pl > j {
            (self.pl - j).div_ceil(self.sw)
        } else {
            0
        };
        let hi = if self.w + self.pl > j {
            ((self.w - 1 + self.pl - j) / self.sw + 1).min(self.ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// The input row that output row `oy` reads for kernel row `i`, if not padding.
    fn input_row(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.sh + i)
            .checked_sub(self.pt)
            .filter(|&r| r < self.h)
    }
}

/// Calls `f(at, src, valid)` for every output row of every column-matrix row, the walk
/// `im2col` and `col2im` share: `at` is where that row starts in the column matrix,
/// `src` where the input row it reads starts in the sample, and `valid` the output
/// columns `lo..hi` that read the image (not padding) with the first one's input
/// column; `None` when the whole row reads padding.
fn walk(g: &Geom, mut f: impl FnMut(usize, usize, Option<(usize, usize, usize)>)) {
    let p = g.p();
    for c in 0..g.ci {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = ((c * g.kh + i) * g.kw + j) * p;
                let (lo, hi) = g.valid_cols(j);
                for oy in 0..g.oh {
                    let at = row + oy * g.ow;
                    match g.input_row(oy, i) {
                        Some(iy) if lo < hi => {
                            let src = (c * g.h + iy) * g.w;
                            f(at, src, Some((lo, hi, lo * g.sw + j - g.pl)))
                        }
                        _ => f(at, 0, None),
                    }
                }
            }
        }
    }
}

/// [`walk`] when [`Geom::plain`]: no row reads padding, so `f(at, src)` gets only
/// where each `ow`-long row starts in the column matrix and in the sample.
fn walk_plain(g: &Geom, mut f: impl FnMut(usize, usize)) {
    let mut at = 0;
    for c in 0..g.ci {
        for i in 0..g.kh {
            for j in 0..g.kw {
                for oy in 0..g.oh {
                    f(at, (c * g.h + oy + i) * g.w + j);
                    at += g.ow;
                }
            }
        }
    }
}

/// One sample's column matrix (`k × p`, row-major) from its input (`ci × h × w`);
/// every value of `col` is written.
fn im2col(g: &Geom, x: &[f32], col: &mut [MaybeUninit<f32>]) {
    let (ow, sw) = (g.ow, g.sw);
    if g.plain() {
        return walk_plain(g, |at, src| copy(&mut col[at..][..ow], &x[src..][..ow]));
    }
    walk(g, |at, src, valid| {
        let dst = &mut col[at..][..ow];
        match valid {
            None => fill(dst, 0.0),
            Some((lo, hi, ix)) => {
                fill(&mut dst[..lo], 0.0);
                fill(&mut dst[hi..], 0.0);
                let src = &x[src + ix..];
                if sw == 1 {
                    copy(&mut dst[lo..hi], &src[..hi - lo]);
                } else {
                    for (d, s) in dst[lo..hi].iter_mut().zip(src.iter().step_by(sw)) {
                        d.write(*s);
                    }
                }
            }
        }
    });
}

/// Writes `v` to every value of `dst`.
fn fill(dst: &mut [MaybeUninit<f32>], v: f32) {
    for d in dst {
        d.write(v);
    }
}

/// Copies `src` into `dst` (same length) in blocks of 8 values, the last block
/// overlapping its predecessor instead of a tail loop. Rows here are short (8–30
/// values), and a library `memcpy` call per row costs more than the row, so rows up
/// to 32 values are straight-line code: a loop of blocks is what LLVM turns back into
/// a `memcpy` call of unknown length (4 % of the CNN step when it did).
fn copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let block = |dst: &mut [MaybeUninit<f32>], at: usize| {
        let s: &[f32; 8] = src[at..at + 8].try_into().expect("8 values");
        let d: &mut [MaybeUninit<f32>; 8] = (&mut dst[at..at + 8]).try_into().expect("8 values");
        for (d, s) in d.iter_mut().zip(s) {
            d.write(*s);
        }
    };
    match n {
        0..8 => {
            for (d, s) in dst.iter_mut().zip(src) {
                d.write(*s);
            }
        }
        8..=16 => {
            block(dst, 0);
            block(dst, n - 8);
        }
        17..=32 => {
            block(dst, 0);
            block(dst, 8);
            block(dst, n - 16);
            block(dst, n - 8);
        }
        _ => {
            let mut at = 0;
            while at + 8 <= n {
                block(dst, at);
                at += 8;
            }
            if at < n {
                block(dst, n - 8);
            }
        }
    }
}

/// `s` as initialised values.
///
/// # Safety
/// Every value of `s` has been written.
unsafe fn assume_init(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller vouches that
    // every value is initialised.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Adds one sample's column-matrix gradient (`k × p`) into its input gradient.
fn col2im(g: &Geom, col: &[f32], dx: &mut [f32]) {
    let (ow, sw) = (g.ow, g.sw);
    if g.plain() {
        return walk_plain(g, |at, dst| {
            for (d, s) in dx[dst..][..ow].iter_mut().zip(&col[at..][..ow]) {
                *d += *s;
            }
        });
    }
    walk(g, |at, dst, valid| {
        if let Some((lo, hi, ix)) = valid {
            let src = &col[at + lo..at + hi];
            let dst = &mut dx[dst + ix..];
            if sw == 1 {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += *s;
                }
            } else {
                for (d, s) in dst.iter_mut().step_by(sw).zip(src) {
                    *d += *s;
                }
            }
        }
    });
}

/// A matrix operand: its values and its row and column strides.
#[derive(Clone, Copy)]
struct Mat<'a> {
    v: &'a [f32],
    rs: usize,
    cs: usize,
}

impl Mat<'_> {
    /// Row-major with rows `rs` apart.
    fn rows(v: &[f32], rs: usize) -> Mat<'_> {
        Mat { v, rs, cs: 1 }
    }

    /// Checks that an `r × c` matrix read through these strides stays inside `v`.
    fn fits(&self, r: usize, c: usize) -> bool {
        fits(self.v.len(), [self.rs, self.cs], r, c)
    }
}

/// A matrix result: its values and its row and column strides.
struct Out<'a> {
    v: &'a mut [f32],
    rs: usize,
    cs: usize,
}

impl Out<'_> {
    /// Row-major with rows `rs` apart.
    fn rows(v: &mut [f32], rs: usize) -> Out<'_> {
        Out { v, rs, cs: 1 }
    }
}

/// Whether an `r × c` matrix with strides `[rs, cs]` stays inside `len` values.
fn fits(len: usize, [rs, cs]: [usize; 2], r: usize, c: usize) -> bool {
    r == 0 || c == 0 || (r - 1) * rs + (c - 1) * cs < len
}

/// `dst (m × n) = [dst +] a (m × k) · b (k × n)`, single-threaded (the callers run
/// samples in parallel). Strides choose the layouts: the GEMM packs (copies) an
/// operand whose values are not contiguous along its rows of the result's columns,
/// so callers pick the cheaper one to be copied.
fn matmul([m, n, k]: [usize; 3], dst: Out, acc: bool, a: Mat, b: Mat) {
    assert!(
        a.fits(m, k) && b.fits(k, n) && fits(dst.v.len(), [dst.rs, dst.cs], m, n),
        "matmul operands out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for r in 0..m {
                for c in 0..n {
                    dst.v[r * dst.rs + c * dst.cs] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: the assertion above keeps every index the GEMM reads or writes inside
    // the slices, and `dst` is borrowed mutably while `a` and `b` are shared borrows,
    // so they do not alias it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.v.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            acc,
            a.v.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.v.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The values of a contiguous f32 tensor (after `to_contiguous`).
fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice().expect("contiguous f32 tensor")
}

/// The forward pass, and with `keep` every sample's column matrix (`n × k × p`).
fn forward_pass(
    g: &Geom,
    x: &FlexTensor,
    w: &FlexTensor,
    b: &FlexTensor,
    keep: bool,
) -> (FlexTensor, Option<Vec<f32>>) {
    let (x, w, b) = (x.to_contiguous(), w.to_contiguous(), b.to_contiguous());
    let (xv, wv, bv) = (values(&x), values(&w), values(&b));
    let (k, p) = (g.k(), g.p());
    let shape = Shape::new([g.n, g.co, g.oh, g.ow]);
    if g.n == 0 || g.sample_out() == 0 {
        return (super::zeros(shape), keep.then(Vec::new));
    }
    // Written in full below (bias, then accumulated products), so never zeroed first.
    let mut out = Box::<[f32]>::new_uninit_slice(g.n * g.sample_out());
    let sample = |xs: &[f32], col: &mut [MaybeUninit<f32>], o: &mut [MaybeUninit<f32>]| {
        im2col(g, xs, col);
        for (row, &bias) in o.chunks_exact_mut(p).zip(bv) {
            fill(row, bias);
        }
        // SAFETY: `im2col` wrote all of `col`, and the loop above all of `o` (`co`
        // rows of `p`).
        let (col, o) = unsafe { (assume_init(col), assume_init(o)) };
        matmul(
            [g.co, p, k],
            Out::rows(o, p),
            true,
            Mat::rows(wv, k),
            Mat::rows(col, p),
        );
        if g.relu {
            for v in o.iter_mut() {
                *v = v.max(0.0);
            }
        }
    };
    let per_in = g.sample_in();
    assert_eq!(xv.len(), g.n * per_in, "input of the planned shape");
    let cols = if keep {
        let mut all = Box::<[f32]>::new_uninit_slice(g.n * k * p);
        out.par_chunks_mut(g.sample_out())
            .zip(xv.par_chunks(per_in))
            .zip(all.par_chunks_mut(k * p))
            .for_each(|((o, xs), col)| sample(xs, col, o));
        // SAFETY: every sample's `im2col` wrote its whole chunk.
        Some(unsafe { all.assume_init() }.into_vec())
    } else {
        out.par_chunks_mut(g.sample_out())
            .zip(xv.par_chunks(per_in))
            .for_each_init(
                || Box::<[f32]>::new_uninit_slice(k * p),
                |col, (o, xs)| sample(xs, col, o),
            );
        None
    };
    // SAFETY: every sample's chunk was written in full by `sample`.
    let out = unsafe { out.assume_init() }.into_vec();
    (super::f32_tensor(out, shape), cols)
}

/// What the backward pass needs from the forward pass.
#[derive(Debug, Clone)]
struct Saved {
    g: Geom,
    /// Every sample's column matrix, `n × k × p` (shared: burn may clone a state).
    cols: Arc<Vec<f32>>,
    /// The weights, `co × k`.
    weight: FlexTensor,
    /// The output, when a ReLU is fused in (its gradient passes where it is > 0).
    out: Option<FlexTensor>,
}

/// The weight and bias gradients, summed over the batch as a balanced binary tree
/// split at the middle: a batch split over 2, 4, … workers, whose all-reduce adds
/// the halves, sums in the same order as one worker, so their weights stay equal to
/// the last bits (as with burn's own kernel). Adam magnifies rounding differences in
/// gradients near zero (`g / (|g| + ε)`), so the order matters beyond one step.
fn weight_and_bias_grads(s: &Saved, dy: &[f32]) -> (FlexTensor, FlexTensor) {
    let g = &s.g;
    let (k, co) = (g.k(), g.co);
    let mut dw = super::zeros(Shape::new([co, g.ci, g.kh, g.kw]));
    let mut db = super::zeros(Shape::new([co]));
    if g.n == 0 || k * g.p() * co == 0 {
        return (dw, db);
    }
    let (wt, b) = grad_tree(s, dy, 0..g.n);
    let dwv: &mut [f32] = dw.storage_mut();
    for (c, row) in dwv.chunks_exact_mut(k).enumerate() {
        for (kk, d) in row.iter_mut().enumerate() {
            *d = wt[kk * co + c];
        }
    }
    db.storage_mut::<f32>().copy_from_slice(&b);
    (dw, db)
}

/// The weight gradient, transposed (`k × co`), and the bias gradient of `samples`:
/// up to [`GRAD_GROUP`] samples accumulated in order, more as the sum of the two
/// halves (in parallel).
fn grad_tree(s: &Saved, dy: &[f32], samples: Range<usize>) -> (Vec<f32>, Vec<f32>) {
    let g = &s.g;
    let (k, p, co) = (g.k(), g.p(), g.co);
    if samples.len() > GRAD_GROUP {
        let mid = samples.start + samples.len() / 2;
        let ((mut w, mut b), (w2, b2)) = rayon::join(
            || grad_tree(s, dy, samples.start..mid),
            || grad_tree(s, dy, mid..samples.end),
        );
        for (a, v) in w.iter_mut().zip(&w2) {
            *a += v;
        }
        for (a, v) in b.iter_mut().zip(&b2) {
            *a += v;
        }
        return (w, b);
    }
    // dWᵀ (k × co), so that the GEMM reads the column matrices as they lie and
    // copies only dY (co·p values a sample, not k·p).
    let mut w = vec![0.0; k * co];
    let mut b = vec![0.0; co];
    for (i, n) in samples.enumerate() {
        let (col, dy) = (&s.cols[n * k * p..][..k * p], &dy[n * co * p..][..co * p]);
        // dW += dY_n (co × p) · col_nᵀ (p × k), both transposes by strides.
        let colt = Mat {
            v: col,
            rs: 1,
            cs: p,
        };
        let dwt = Out {
            v: &mut w,
            rs: 1,
            cs: co,
        };
        matmul([co, k, p], dwt, i > 0, Mat::rows(dy, p), colt);
        for (b, row) in b.iter_mut().zip(dy.chunks_exact(p)) {
            *b += row.iter().sum::<f32>();
        }
    }
    (w, b)
}

/// The input gradient: `Wᵀ · dY_s` per sample, scattered back by `col2im`.
fn input_grad(s: &Saved, dy: &[f32]) -> FlexTensor {
    let g = &s.g;
    let (k, p, co) = (g.k(), g.p(), g.co);
    let mut dx = super::zeros(Shape::new([g.n, g.ci, g.h, g.w]));
    if g.n == 0 {
        return dx;
    }
    let w = s.weight.to_contiguous();
    let wt = Mat {
        v: values(&w),
        rs: 1,
        cs: k,
    };
    let dst: &mut [f32] = dx.storage_mut();
    dst.par_chunks_mut(g.sample_in())
        .zip(dy.par_chunks(co * p))
        .for_each_init(
            || vec![0.0; k * p],
            |dcol, (dxs, dys)| {
                matmul([k, p, co], Out::rows(dcol, p), false, wt, Mat::rows(dys, p));
                col2im(g, dcol, dxs);
            },
        );
    dx
}

/// `dy` where the fused ReLU's output `out` is positive, 0 elsewhere (burn-flex's
/// `relu_backward`), in place when `dy` is not shared.
fn relu_grad(out: &FlexTensor, mut dy: FlexTensor) -> FlexTensor {
    let out = out.to_contiguous();
    let ov = values(&out);
    let dv: &mut [f32] = dy.storage_mut();
    dv.par_chunks_mut(1 << 14)
        .zip(ov.par_chunks(1 << 14))
        .for_each(|(d, o)| {
            // A select, not a conditional store, so that it vectorises.
            for (d, &o) in d.iter_mut().zip(o) {
                *d = if o <= 0.0 { 0.0 } else { *d };
            }
        });
    dy
}

/// Forward only (evaluation on burn-flex).
pub(super) fn forward(
    g: Geom,
    x: Tensor<Flex, 4>,
    w: Tensor<Flex, 4>,
    b: Tensor<Flex, 1>,
) -> Tensor<Flex, 4> {
    let (x, w, b) = (
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
        b.into_primitive().tensor(),
    );
    let (out, _) = forward_pass(&g, &x, &w, &b, false);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The backward step of [`autodiff`].
#[derive(Debug)]
struct Conv2dOp;

impl Backward<Flex, 3> for Conv2dOp {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw, pb] = ops.parents;
        let saved = ops.state;
        let mut dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        if let Some(out) = &saved.out {
            dy = relu_grad(out, dy);
        }
        let dyv = values(&dy);
        if pw.is_some() || pb.is_some() {
            let (dw, db) = weight_and_bias_grads(&saved, dyv);
            if let Some(node) = pw {
                grads.register::<Flex>(node.id, dw);
            }
            if let Some(node) = pb {
                grads.register::<Flex>(node.id, db);
            }
        }
        if let Some(node) = px {
            grads.register::<Flex>(node.id, input_grad(&saved, dyv));
        }
    }
}

/// Forward with its backward step recorded (training on burn-flex).
pub(super) fn autodiff(
    g: Geom,
    x: Tensor<Autodiff<Flex>, 4>,
    w: Tensor<Autodiff<Flex>, 4>,
    b: Tensor<Autodiff<Flex>, 1>,
) -> Tensor<Autodiff<Flex>, 4> {
    let (x, w, b) = (
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
        b.into_primitive().tensor(),
    );
    let out = match Conv2dOp
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, cols) = forward_pass(&g, &x.primitive, &w.primitive, &b.primitive, true);
            let saved = Saved {
                g,
                cols: Arc::new(cols.unwrap_or_default()),
                weight: w.primitive.clone(),
                out: g.relu.then(|| out.clone()),
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward_pass(&g, &x.primitive, &w.primitive, &b.primitive, false).0)
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_copy_writes_every_value_of_every_length() {
        let src: Vec<f32> = (0..80).map(|i| i as f32 + 0.5).collect();
        for n in 0..=80 {
            let mut dst = vec![MaybeUninit::new(-1.0f32); n + 3];
            copy(&mut dst[..n], &src[..n]);
            // SAFETY: every value was initialised above.
            let got = unsafe { assume_init(&mut dst) };
            assert_eq!(&got[..n], &src[..n], "length {n}");
            assert_eq!(&got[n..], &[-1.0; 3], "length {n}: wrote past the end");
        }
    }
}
