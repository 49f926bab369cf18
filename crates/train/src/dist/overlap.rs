//! Gradient buckets summed while backward still runs.
//!
//! burn's `backward()` hands over every gradient at once, at the end. To learn
//! earlier that a parameter's gradient is final, the forward pass runs each layer
//! with its parameters behind a *tap* ([`GradTap::tap`]): an identity whose backward
//! step receives the finished gradient. The tap hangs on the layer's input as well,
//! so backward (which runs steps by graph depth, deepest first) reaches it right
//! after the layer's own backward step instead of at the very end.
//!
//! A tap copies its gradient, weighted, into its bucket ([`Buckets`]); a full bucket
//! goes to a communication thread, which sums buckets over the workers in a fixed
//! order (last layers first) while backward carries on with earlier layers. The
//! bucket holding the first layers — complete only when backward ends — is held
//! back and summed by [`super::Ring`]'s step together with the loss and stop flags.

use std::marker::PhantomData;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Autodiff;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};
use dlc_comm::{CommError, Communicator, Compression, ReduceOp};
use dlc_model::{LayerHook, Net};

use crate::TrainError;

/// A training backend whose parameters can be tapped for their gradients.
pub trait GradTap: AutodiffBackend {
    /// `param` as it is, with `buckets` handed its gradient (as parameter `index`)
    /// the moment backward has it; hung on `anchor`, the input of the layer using
    /// `param`, so that backward reaches the tap right after that layer.
    fn tap<const D: usize, const E: usize>(
        param: Tensor<Self, D>,
        anchor: &Tensor<Self, E>,
        buckets: &Arc<Buckets<Self::InnerBackend>>,
        index: usize,
    ) -> Tensor<Self, D>;
}

impl<B: Backend, C: CheckpointStrategy> GradTap for Autodiff<B, C> {
    fn tap<const D: usize, const E: usize>(
        param: Tensor<Self, D>,
        anchor: &Tensor<Self, E>,
        buckets: &Arc<Buckets<B>>,
        index: usize,
    ) -> Tensor<Self, D> {
        let p = param.into_primitive().tensor();
        let a = anchor.clone().into_primitive().tensor();
        let tap = Tap {
            buckets: Arc::clone(buckets),
            index,
        };
        let out = tap
            .prepare::<C>([p.node.clone(), a.node.clone()])
            .compute_bound()
            .stateless(p.primitive.clone());
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

/// The backward step of a tap: the gradient goes to its bucket, not on to the
/// parameter (nothing reads a tapped parameter's own gradient).
struct Tap<B: Backend> {
    buckets: Arc<Buckets<B>>,
    index: usize,
}

impl<B: Backend> std::fmt::Debug for Tap<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tap({})", self.index)
    }
}

impl<B: Backend> Backward<B, 2> for Tap<B> {
    type State = ();

    fn backward(self, ops: Ops<(), 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        self.buckets.deliver(self.index, grad);
    }
}

/// Where each trainable parameter's gradient lies in the flat buffer and in its
/// bucket; fixed for a model, identical on every rank.
#[derive(Debug)]
pub struct Layout {
    /// Trainable parameters in visiting order: id, offset in the flat buffer, length.
    params: Vec<(ParamId, usize, usize)>,
    /// Parameter id → index in `params`.
    index: std::collections::HashMap<ParamId, usize>,
    /// Parameter index → bucket.
    bucket_of: Vec<usize>,
    /// Each bucket's range in the flat buffer. Bucket 0 holds the last parameters
    /// (their gradients come first); the last bucket holds parameter 0.
    ranges: Vec<std::ops::Range<usize>>,
}

struct Sizes(Vec<(ParamId, usize)>);

impl<B: Backend> ModuleVisitor<B> for Sizes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if param.is_require_grad() {
            self.0.push((param.id, param.val().shape().num_elements()));
        }
    }
}

impl Layout {
    /// Buckets of at least `bucket_bytes` (but the last) of `model`'s gradients,
    /// whole parameters each, from the last parameter back.
    pub fn new<B: Backend>(model: &Net<B>, bucket_bytes: usize) -> Self {
        let mut sizes = Sizes(Vec::new());
        model.visit(&mut sizes);
        let mut params = Vec::with_capacity(sizes.0.len());
        let mut offset = 0;
        for (id, n) in sizes.0 {
            params.push((id, offset, n));
            offset += n;
        }
        let per_bucket = (bucket_bytes / 4).max(1);
        let mut bucket_of = vec![0; params.len()];
        let mut ranges = Vec::new();
        let mut end = offset;
        for (i, &(_, start, _)) in params.iter().enumerate().rev() {
            bucket_of[i] = ranges.len();
            if end - start >= per_bucket || i == 0 {
                ranges.push(start..end);
                end = start;
            }
        }
        let index = params
            .iter()
            .enumerate()
            .map(|(i, &(id, _, _))| (id, i))
            .collect();
        Self {
            params,
            index,
            bucket_of,
            ranges,
        }
    }

    /// Number of buckets (0 for a model without trainable parameters).
    pub fn buckets(&self) -> usize {
        self.ranges.len()
    }

    fn index_of(&self, id: ParamId) -> Option<usize> {
        self.index.get(&id).copied()
    }
}

/// One step's buckets, filled by the taps during backward (on the training thread)
/// and sent, once full, to the communication thread.
pub struct Buckets<B: Backend> {
    layout: Arc<Layout>,
    weight: f32,
    fill: Mutex<Fill>,
    _backend: PhantomData<fn() -> B>,
}

impl<B: Backend> std::fmt::Debug for Buckets<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buckets({})", self.layout.buckets())
    }
}

struct Fill {
    /// Each bucket's values until sent (`None` after).
    bufs: Vec<Option<Vec<f32>>>,
    /// Parameters still without a gradient, per bucket.
    missing: Vec<usize>,
    /// Whether each parameter has had its gradient.
    have: Vec<bool>,
    /// To the communication thread (all buckets but the last).
    to_comm: Option<Sender<(usize, Vec<f32>)>>,
}

impl<B: Backend> Buckets<B> {
    fn new(
        layout: Arc<Layout>,
        weight: f32,
        spare: usize,
        to_comm: Sender<(usize, Vec<f32>)>,
    ) -> Self {
        let last = layout.buckets() - 1;
        let bufs = layout
            .ranges
            .iter()
            .enumerate()
            .map(|(b, r)| {
                let mut v = Vec::with_capacity(r.len() + if b == last { spare } else { 0 });
                v.resize(r.len(), 0.0);
                Some(v)
            })
            .collect();
        let mut missing = vec![0; layout.buckets()];
        for &b in &layout.bucket_of {
            missing[b] += 1;
        }
        let have = vec![false; layout.params.len()];
        Self {
            layout,
            weight,
            fill: Mutex::new(Fill {
                bufs,
                missing,
                have,
                to_comm: Some(to_comm),
            }),
            _backend: PhantomData,
        }
    }

    /// Parameter `index`'s gradient, weighted into its bucket; the bucket is sent
    /// when it is the last gradient it lacked.
    fn deliver(&self, index: usize, grad: B::FloatTensorPrimitive) {
        let (_, offset, n) = self.layout.params[index];
        let b = self.layout.bucket_of[index];
        let at = offset - self.layout.ranges[b].start;
        let mut guard = self.fill.lock().unwrap_or_else(|e| e.into_inner());
        let fill = &mut *guard;
        let first = !fill.have[index];
        let Some(buf) = fill.bufs[b].as_mut() else {
            // Only a second gradient for a parameter whose bucket already left (a
            // parameter used twice) lands here; the model's layers use each once.
            debug_assert!(
                false,
                "a gradient for parameter {index} after its bucket left"
            );
            return;
        };
        let dst = &mut buf[at..at + n];
        let w = self.weight;
        super::flat::read_f32::<B>(grad, n, |src| {
            if first {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d = s * w);
            } else {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s * w);
            }
        });
        if first {
            fill.have[index] = true;
            fill.missing[b] -= 1;
            if fill.missing[b] == 0 && b + 1 < self.layout.buckets() {
                send(fill, b);
            }
        }
    }

    /// After backward: every bucket not yet sent goes (with zeros for gradients
    /// backward did not produce), but the last, which is returned.
    fn finish(&self) -> Vec<f32> {
        let mut fill = self.fill.lock().unwrap_or_else(|e| e.into_inner());
        let last = self.layout.buckets() - 1;
        for b in 0..last {
            send(&mut fill, b);
        }
        fill.to_comm = None;
        fill.bufs[last].take().unwrap_or_default()
    }
}

impl<B: Backend> Buckets<B> {
    /// Closes the channel: the communication thread ends once it has what was sent.
    fn close(&self) {
        self.fill.lock().unwrap_or_else(|e| e.into_inner()).to_comm = None;
    }
}

/// Closes the buckets' channel when dropped during a panic.
struct CloseOnPanic<'a, B: Backend>(&'a Buckets<B>);

impl<B: Backend> Drop for CloseOnPanic<'_, B> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.close();
        }
    }
}

fn send(fill: &mut Fill, b: usize) {
    if let (Some(buf), Some(tx)) = (fill.bufs[b].take(), fill.to_comm.as_ref()) {
        // A closed channel means the communication thread has failed; its error
        // is what the step reports.
        let _ = tx.send((b, buf));
    }
}

/// The hook that puts taps on each layer's parameters for one step.
pub struct Tapper<B: GradTap> {
    buckets: Arc<Buckets<B::InnerBackend>>,
}

struct TapMapper<'a, B: GradTap, const E: usize> {
    anchor: &'a Tensor<B, E>,
    buckets: &'a Arc<Buckets<B::InnerBackend>>,
}

impl<B: GradTap, const E: usize> ModuleMapper<B> for TapMapper<'_, B, E> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match self.buckets.layout.index_of(param.id) {
            Some(i) => param.map(|t| B::tap(t, self.anchor, self.buckets, i)),
            None => param,
        }
    }
}

impl<B: GradTap> LayerHook<B> for Tapper<B> {
    fn before<M: Module<B>, const D: usize>(
        &mut self,
        layer: &M,
        input: &Tensor<B, D>,
    ) -> Option<M> {
        if layer.num_params() == 0 {
            return None;
        }
        Some(layer.clone().map(&mut TapMapper {
            anchor: input,
            buckets: &self.buckets,
        }))
    }
}

/// The gradients of a step summed while backward ran: every bucket but the last
/// summed over the workers, the last (parameter 0's) still this worker's own.
pub struct Bucketed {
    layout: Arc<Layout>,
    summed: Vec<Vec<f32>>,
    /// The last bucket, with room for the values that ride along with it.
    pub last: Vec<f32>,
    /// Seconds the training thread waited for the communication thread after
    /// backward.
    pub waited_s: f64,
    /// Seconds the communication thread spent summing.
    pub comm_s: f64,
}

impl Bucketed {
    /// Every bucket as (offset in the flat buffer, values), `last` included.
    pub fn into_parts(self) -> Vec<(usize, Vec<f32>)> {
        let Bucketed {
            layout,
            summed,
            last,
            ..
        } = self;
        let mut parts: Vec<(usize, Vec<f32>)> = summed
            .into_iter()
            .enumerate()
            .map(|(b, v)| (layout.ranges[b].start, v))
            .collect();
        parts.push((0, last));
        parts
    }
}

/// Runs `work` (this worker's forward and backward pass, given the hook to run the
/// forward pass with) while a communication thread sums the buckets it fills,
/// in bucket order, over `comm`. Returns what `work` returned and the buckets.
pub(crate) fn run_overlapped<B: GradTap, T>(
    comm: &mut Communicator,
    compression: Compression,
    layout: &Arc<Layout>,
    weight: f32,
    spare: usize,
    work: impl FnOnce(Option<&mut Tapper<B>>) -> Result<T, TrainError>,
) -> Result<(T, Bucketed), TrainError> {
    let (tx, rx) = mpsc::channel();
    let buckets = Arc::new(Buckets::<B::InnerBackend>::new(
        Arc::clone(layout),
        weight,
        spare,
        tx,
    ));
    let count = layout.buckets() - 1;
    std::thread::scope(|s| {
        let summer = std::thread::Builder::new()
            .name("dlc-buckets".into())
            .spawn_scoped(s, move || sum_in_order(comm, compression, rx, count))
            .map_err(|e| {
                TrainError::Usage(format!("cannot start the communication thread: {e}"))
            })?;
        let mut tapper = Tapper {
            buckets: Arc::clone(&buckets),
        };
        let out = {
            // A panic in `work` (a CUDA error turned panic) must not leave the thread
            // waiting for buckets: the graph's taps keep the sender alive.
            let _close = CloseOnPanic(&buckets);
            work(Some(&mut tapper))
        };
        drop(tapper);
        // Sent even when `work` failed: the thread then ends on the closed channel.
        let last = match &out {
            Ok(_) => buckets.finish(),
            Err(_) => {
                buckets.close();
                Vec::new()
            }
        };
        let waiting = Instant::now();
        let summed = summer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let waited_s = waiting.elapsed().as_secs_f64();
        let out = out?;
        let Summed {
            bufs: summed,
            seconds: comm_s,
        } = summed?.ok_or_else(|| {
            TrainError::Usage("backward ended without filling its gradient buckets".into())
        })?;
        Ok((
            out,
            Bucketed {
                layout: Arc::clone(layout),
                summed,
                last,
                waited_s,
                comm_s,
            },
        ))
    })
}

/// The communication thread: sums buckets `0..count` in that order as they arrive;
/// `None` when the channel closes first (backward failed).
fn sum_in_order(
    comm: &mut Communicator,
    compression: Compression,
    rx: Receiver<(usize, Vec<f32>)>,
    count: usize,
) -> Result<Option<Summed>, CommError> {
    let mut arrived: Vec<Option<Vec<f32>>> = vec![None; count];
    let mut summed = Vec::with_capacity(count);
    let mut busy = 0.0;
    while summed.len() < count {
        let next = summed.len();
        let Some(mut buf) = arrived[next].take() else {
            match rx.recv() {
                Ok((b, buf)) => arrived[b] = Some(buf),
                // Backward failed; its error is the step's.
                Err(_) => return Ok(None),
            }
            continue;
        };
        let started = Instant::now();
        let c = comm.named("gradients");
        match compression {
            Compression::None => c.all_reduce(&mut buf, ReduceOp::Sum)?,
            z => c.all_reduce_compressed(&mut buf, ReduceOp::Sum, z)?,
        }
        busy += started.elapsed().as_secs_f64();
        summed.push(buf);
    }
    Ok(Some(Summed {
        bufs: summed,
        seconds: busy,
    }))
}

/// What the communication thread hands back: the summed buckets in bucket order, and
/// the seconds it spent summing them.
struct Summed {
    bufs: Vec<Vec<f32>>,
    seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuTrain;
    use crate::dist::flat;
    use crate::testing::lenet;
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    #[test]
    fn buckets_hold_whole_parameters_from_the_last_back() {
        let model = lenet();
        let total = flat::params_to_flat(&model, flat::Which::Trainable).len();
        for bytes in [4, 1 << 10, 16 << 10, 1 << 30] {
            let l = Layout::new(&model, bytes);
            // Contiguous, covering the flat buffer from the end back to 0.
            assert_eq!(l.ranges[0].end, total, "{bytes}");
            assert_eq!(l.ranges.last().unwrap().start, 0, "{bytes}");
            for w in l.ranges.windows(2) {
                assert_eq!(w[0].start, w[1].end, "{bytes}");
            }
            for (i, &(_, offset, n)) in l.params.iter().enumerate() {
                let r = &l.ranges[l.bucket_of[i]];
                assert!(r.start <= offset && offset + n <= r.end, "{bytes}");
            }
            // Every bucket but the last reaches the size.
            for r in &l.ranges[..l.ranges.len() - 1] {
                assert!(r.len() * 4 >= bytes, "{bytes}: {r:?}");
            }
        }
        // 4 bytes: a bucket per trainable parameter (LeNet: 4 layers × weight, bias).
        assert_eq!(Layout::new(&model, 4).buckets(), 8);
        assert_eq!(Layout::new(&model, 1 << 30).buckets(), 1);
    }

    #[test]
    fn taps_fill_buckets_during_backward_with_the_weighted_gradients() {
        let model = lenet();
        CpuTrain::seed(&Default::default(), 7);
        let x = Tensor::<CpuTrain, 4>::random(
            [3, 1, 28, 28],
            Distribution::Default,
            &Default::default(),
        );
        let loss = |y: Tensor<CpuTrain, 2>| y.powi_scalar(2).sum();
        let plain = GradientsParams::from_grads(loss(model.forward(x.clone())).backward(), &model);
        let want = flat::grads_to_flat(&model, &plain, 0.25, 0);

        // One bucket per parameter: the order buckets are sent in is the order backward
        // reached the taps.
        let layout = Arc::new(Layout::new(&model, 4));
        let (tx, rx) = mpsc::channel();
        let buckets = Arc::new(Buckets::new(Arc::clone(&layout), 0.25, 3, tx));
        let mut tap = Tapper::<CpuTrain> {
            buckets: Arc::clone(&buckets),
        };
        let grads = loss(model.forward_hooked(x, &mut tap)).backward();
        let sent: Vec<(usize, Vec<f32>)> = rx.try_iter().collect();
        assert_eq!(
            sent.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
            (0..layout.buckets() - 1).collect::<Vec<_>>(),
            "buckets complete last layer first, while backward runs"
        );
        let last = buckets.finish();
        assert!(last.capacity() >= last.len() + 3, "room for the extras");
        // A tapped parameter's gradient goes to its bucket only.
        assert!(GradientsParams::from_grads(grads, &model).is_empty());
        let mut got = vec![0.0; want.len()];
        for (b, v) in sent.into_iter().chain([(layout.buckets() - 1, last)]) {
            got[layout.ranges[b].clone()].copy_from_slice(&v);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn a_panic_during_the_pass_ends_the_step_instead_of_hanging() {
        // The graph's taps keep the buckets' sender alive after a panic; the thread
        // summing buckets must still learn that no more will come.
        let key = dlc_comm::auth::JobKey::new("j", "t");
        let coord = dlc_comm::Coordinator::start(
            "127.0.0.1:0",
            key.clone(),
            1,
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        let cfg = dlc_comm::CommConfig::new(coord.addr().to_string(), key, 0, 1);
        let mut comm = Communicator::connect(cfg).unwrap();
        let model = lenet();
        let layout = Arc::new(Layout::new(&model, 4));
        let (done, ended) = mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_overlapped::<CpuTrain, ()>(
                    &mut comm,
                    Compression::None,
                    &layout,
                    1.0,
                    0,
                    |tap| {
                        let x = Tensor::<CpuTrain, 4>::zeros([1, 1, 28, 28], &Default::default());
                        let _ = model.forward_hooked(x, tap.expect("several buckets"));
                        panic!("the device was lost");
                    },
                )
            }));
            let _ = done.send(r.is_err());
        });
        assert_eq!(
            ended.recv_timeout(std::time::Duration::from_secs(20)),
            Ok(true),
            "the panic reached the caller"
        );
    }

    /// Sends a marker down a bucket channel when backward reaches it.
    #[derive(Debug)]
    struct Probe(Mutex<Sender<(usize, Vec<f32>)>>);

    impl Backward<burn::backend::Flex, 1> for Probe {
        type State = ();

        fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let _ = self.0.lock().unwrap().send((usize::MAX, Vec::new()));
            burn::backend::autodiff::ops::unary::<burn::backend::Flex, _>(
                ops.parents,
                ops.node,
                grads,
                |g| g,
            );
        }
    }

    #[test]
    fn a_layers_gradients_leave_before_backward_reaches_the_layers_below() {
        use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
        use dlc_model::{Layer, Op};
        // LeNet cut after its flatten: the dense layers on top, a probe between.
        let mut model = lenet();
        let cut = 1 + model
            .layers
            .iter()
            .position(|l| matches!(l, Layer::Op(Op::Flatten(_))))
            .unwrap();
        let top = Net {
            layers: model.layers.split_off(cut),
        };
        let x = Tensor::<CpuTrain, 4>::random(
            [2, 1, 28, 28],
            Distribution::Default,
            &Default::default(),
        );
        let (tx, rx) = mpsc::channel();
        let tapper = |net: &Net<CpuTrain>| Tapper::<CpuTrain> {
            buckets: Arc::new(Buckets::new(
                Arc::new(Layout::new(net, 4)),
                1.0,
                0,
                tx.clone(),
            )),
        };
        let (mut below, mut above) = (tapper(&model), tapper(&top));
        let h = model.forward_hooked(x, &mut below);
        let p = h.into_primitive().tensor();
        let probed = Probe(Mutex::new(tx.clone()))
            .prepare::<NoCheckpointing>([p.node.clone()])
            .compute_bound()
            .stateless(p.primitive.clone());
        let h = Tensor::<CpuTrain, 2>::from_primitive(TensorPrimitive::Float(probed));
        let [b, n] = h.dims();
        let y = top.forward_hooked(h.reshape([b, n, 1, 1]), &mut above);
        let _ = y.powi_scalar(2).sum().backward();
        let order: Vec<usize> = rx.try_iter().map(|(b, _)| b).collect();
        let probe = order.iter().position(|&b| b == usize::MAX).unwrap();
        // The top's buckets (but its last, held back) left before backward reached
        // the cut; the bottom's after.
        assert_eq!(probe, above.buckets.layout.buckets() - 1, "{order:?}");
        assert_eq!(
            order.len() - probe - 1,
            below.buckets.layout.buckets() - 1,
            "{order:?}"
        );
    }
}
