//! The optimizer a job names, behind one type.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::{MomentumConfig, MomentumState};
use burn::optim::record::AdaptorRecord;
use burn::optim::{
    AdamState, AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsParams, Optimizer,
    Sgd, SgdConfig, SgdState, SimpleOptimizer,
};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use dlc_job::{OptimizerKind, TrainSpec};

use crate::adam::FusedAdam;
use crate::TrainError;

/// One of the supported optimizers for a module `M` (a `Net`, or a parameter
/// server's shard).
pub enum AnyOptim<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// SGD with momentum.
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
    /// Adam (burn's, fused into one pass per parameter on burn-flex).
    Adam(OptimizerAdaptor<FusedAdam, M, B>),
    /// AdamW.
    AdamW(OptimizerAdaptor<AdamW, M, B>),
}

/// The optimizer of a worker's model.
pub type NetOptim<B> = AnyOptim<B, dlc_model::Net<B>>;

impl<B: AutodiffBackend, M: AutodiffModule<B>> AnyOptim<B, M> {
    /// The optimizer `[train]` describes, with fresh state.
    pub fn new(spec: &TrainSpec) -> Self {
        let decay =
            (spec.weight_decay > 0.0).then(|| WeightDecayConfig::new(spec.weight_decay as f32));
        match spec.optimizer {
            OptimizerKind::Sgd => {
                let momentum = (spec.momentum > 0.0).then_some(MomentumConfig {
                    momentum: spec.momentum,
                    dampening: 0.0,
                    nesterov: false,
                });
                AnyOptim::Sgd(
                    SgdConfig::new()
                        .with_momentum(momentum)
                        .with_weight_decay(decay)
                        .init(),
                )
            }
            OptimizerKind::Adam => AnyOptim::Adam(OptimizerAdaptor::from(FusedAdam::new(
                (spec.weight_decay > 0.0).then_some(spec.weight_decay as f32),
            ))),
            OptimizerKind::Adamw => AnyOptim::AdamW(
                AdamWConfig::new()
                    .with_weight_decay(spec.weight_decay as f32)
                    .init(),
            ),
        }
    }

    /// One optimizer step.
    pub fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        match self {
            AnyOptim::Sgd(o) => o.step(lr, model, grads),
            AnyOptim::Adam(o) => o.step(lr, model, grads),
            AnyOptim::AdamW(o) => o.step(lr, model, grads),
        }
    }
}

/// The per-parameter state slots the job's optimizer keeps, in [`FlatState`] order.
pub fn slot_names(spec: &TrainSpec) -> &'static [&'static str] {
    match spec.optimizer {
        OptimizerKind::Sgd if spec.momentum > 0.0 => &["velocity"],
        OptimizerKind::Sgd => &[],
        OptimizerKind::Adam | OptimizerKind::Adamw => &["moment_1", "moment_2"],
    }
}

/// Optimizer state independent of how parameters are held: each slot (Adam's moments,
/// SGD's velocity) flattened in the module's trainable-parameter order, the same order
/// as [`crate::dist::flat`] uses. A whole model's state, a parameter server's shard of
/// it (a contiguous range) and the concatenation of all servers' shards are the same
/// thing, so a checkpoint taken by ring workers resumes on parameter servers and back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FlatState {
    /// Optimizer steps taken (Adam's bias correction); 0 for SGD.
    pub time: usize,
    /// One buffer per slot, each as long as the parameters; none before the first
    /// step (and never for SGD without momentum).
    pub slots: Vec<Vec<f32>>,
}

impl FlatState {
    /// The part of the state for parameters `range` (a server's shard).
    pub fn slice(&self, range: std::ops::Range<usize>) -> FlatState {
        FlatState {
            time: self.time,
            slots: self
                .slots
                .iter()
                .map(|s| s[range.clone()].to_vec())
                .collect(),
        }
    }

    /// Joins shards' states in shard order.
    pub fn concat(parts: Vec<FlatState>) -> Result<FlatState, String> {
        let mut out = FlatState::default();
        let fresh = parts.iter().all(|p| p.slots.is_empty());
        if fresh {
            return Ok(out);
        }
        for (i, p) in parts.into_iter().enumerate() {
            if i == 0 {
                out = p;
                continue;
            }
            if p.time != out.time || p.slots.len() != out.slots.len() {
                return Err(format!(
                    "shard {i} is at optimizer step {} with {} slot(s), shard 0 at step {} with {}",
                    p.time,
                    p.slots.len(),
                    out.time,
                    out.slots.len()
                ));
            }
            for (o, s) in out.slots.iter_mut().zip(p.slots) {
                o.extend(s);
            }
        }
        Ok(out)
    }

    /// Values per slot (0 when there are no slots yet).
    pub fn len(&self) -> usize {
        self.slots.first().map_or(0, Vec::len)
    }

    /// Whether no state was kept yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Moving one parameter's optimizer state in and out of flat slots.
trait Slots<B: Backend>: SimpleOptimizer<B> {
    /// The state's step count and slot tensors.
    fn export<const D: usize>(
        state: Self::State<D>,
        device: &B::Device,
    ) -> (usize, Vec<Tensor<B, D>>);
    /// The state from a step count and slot tensors.
    fn import<const D: usize>(time: usize, slots: Vec<Tensor<B, D>>) -> Self::State<D>;
}

impl<B: Backend> Slots<B> for FusedAdam {
    fn export<const D: usize>(s: AdamState<B, D>, _: &B::Device) -> (usize, Vec<Tensor<B, D>>) {
        let m = s.momentum;
        (m.time, vec![m.moment_1, m.moment_2])
    }
    fn import<const D: usize>(time: usize, mut slots: Vec<Tensor<B, D>>) -> AdamState<B, D> {
        let (m2, m1) = (
            slots.pop().expect("two slots"),
            slots.pop().expect("two slots"),
        );
        AdamState::new(AdaptiveMomentumState::new(time, m1, m2))
    }
}

impl<B: Backend> Slots<B> for AdamW {
    fn export<const D: usize>(s: AdamWState<B, D>, _: &B::Device) -> (usize, Vec<Tensor<B, D>>) {
        let m = s.momentum;
        (m.time, vec![m.moment_1, m.moment_2])
    }
    fn import<const D: usize>(time: usize, mut slots: Vec<Tensor<B, D>>) -> AdamWState<B, D> {
        let (m2, m1) = (
            slots.pop().expect("two slots"),
            slots.pop().expect("two slots"),
        );
        AdamWState::new(AdaptiveMomentumState::new(time, m1, m2))
    }
}

/// A record with the layout of burn's `MomentumState`, whose velocity field is
/// private: the state is read through its record bytes (a unit test pins the layout).
#[derive(burn::record::Record)]
struct Velocity<B: Backend, const D: usize> {
    velocity: Tensor<B, D>,
}

impl<B: Backend> Slots<B> for Sgd<B> {
    fn export<const D: usize>(s: SgdState<B, D>, device: &B::Device) -> (usize, Vec<Tensor<B, D>>) {
        let Some(m) = s.momentum else {
            return (0, Vec::new());
        };
        let rec = BinBytesRecorder::<FullPrecisionSettings>::new();
        let v = Recorder::<B>::record(&rec, m, ())
            .and_then(|bytes| Recorder::<B>::load::<Velocity<B, D>>(&rec, bytes, device))
            .expect("burn's MomentumState has the layout of Velocity");
        (0, vec![v.velocity])
    }
    fn import<const D: usize>(_: usize, mut slots: Vec<Tensor<B, D>>) -> SgdState<B, D> {
        SgdState::new(slots.pop().map(MomentumState::new))
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> AnyOptim<B, M> {
    /// The state as [`FlatState`] over `module`'s trainable parameters.
    pub fn export(&self, module: &M, device: &B::Device) -> Result<FlatState, TrainError> {
        let r = match self {
            AnyOptim::Sgd(o) => export_with(o.to_record(), module, device),
            AnyOptim::Adam(o) => export_with(o.to_record(), module, device),
            AnyOptim::AdamW(o) => export_with(o.to_record(), module, device),
        };
        r.map_err(|message| TrainError::BadState {
            path: "optimizer state".into(),
            message,
        })
    }

    /// Replaces the state with `state` (from [`AnyOptim::export`], possibly of another
    /// strategy's module with the same parameters in the same order).
    pub fn import(
        self,
        module: &M,
        state: &FlatState,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let bad = |message| TrainError::BadState {
            path: "optimizer state".into(),
            message,
        };
        Ok(match self {
            AnyOptim::Sgd(o) => {
                let r = import_with(module, state, device).map_err(bad)?;
                AnyOptim::Sgd(o.load_record(r))
            }
            AnyOptim::Adam(o) => {
                let r = import_with(module, state, device).map_err(bad)?;
                AnyOptim::Adam(o.load_record(r))
            }
            AnyOptim::AdamW(o) => {
                let r = import_with(module, state, device).map_err(bad)?;
                AnyOptim::AdamW(o.load_record(r))
            }
        })
    }
}

/// What burn's optimizer adaptor keeps: one record per parameter.
type Records<O, B> = hashbrown::HashMap<ParamId, AdaptorRecord<O, B>>;

fn export_with<B, M, O>(
    records: Records<O, B>,
    module: &M,
    device: &B::Device,
) -> Result<FlatState, String>
where
    B: AutodiffBackend,
    M: Module<B>,
    O: Slots<B::InnerBackend>,
{
    struct Reader<'a, B: AutodiffBackend, O: SimpleOptimizer<B::InnerBackend>> {
        records: Records<O, B>,
        device: &'a B::Device,
        params: usize,
        missing: usize,
        times: Vec<usize>,
        slots: Vec<Vec<Tensor<B::InnerBackend, 1>>>,
    }
    impl<B: AutodiffBackend, O: Slots<B::InnerBackend>> ModuleVisitor<B> for Reader<'_, B, O> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            if !t.is_require_grad() {
                return;
            }
            self.params += 1;
            let Some(r) = self.records.remove(&param.id) else {
                self.missing += 1;
                return;
            };
            let (time, slots) = O::export::<D>(r.into_state::<D>(), self.device);
            self.times.push(time);
            if self.slots.len() < slots.len() {
                self.slots.resize_with(slots.len(), Vec::new);
            }
            for (all, s) in self.slots.iter_mut().zip(slots) {
                let n = s.shape().num_elements();
                all.push(s.reshape([n]));
            }
        }
    }
    let mut r = Reader::<B, O> {
        records,
        device,
        params: 0,
        missing: 0,
        times: Vec::new(),
        slots: Vec::new(),
    };
    module.visit(&mut r);
    if r.missing == r.params {
        return Ok(FlatState::default());
    }
    if r.missing > 0 || r.slots.iter().any(|s| s.len() != r.params) {
        return Err(format!(
            "{} of {} parameters have no optimizer state yet; a checkpoint needs all or none",
            r.params - r.slots.first().map_or(0, Vec::len),
            r.params
        ));
    }
    let time = r.times.first().copied().unwrap_or(0);
    if r.times.iter().any(|&t| t != time) {
        return Err(format!(
            "parameters are at different optimizer steps ({:?}…)",
            &r.times[..r.times.len().min(4)]
        ));
    }
    let slots = r
        .slots
        .into_iter()
        .map(|parts| {
            Tensor::cat(parts, 0)
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| format!("optimizer state is not f32: {e:?}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(FlatState { time, slots })
}

fn import_with<B, M, O>(
    module: &M,
    state: &FlatState,
    device: &B::Device,
) -> Result<Records<O, B>, String>
where
    B: AutodiffBackend,
    M: Module<B>,
    O: Slots<B::InnerBackend>,
{
    struct Writer<'a, B: AutodiffBackend, O: SimpleOptimizer<B::InnerBackend>> {
        state: &'a FlatState,
        device: &'a B::Device,
        offset: usize,
        short: bool,
        records: Records<O, B>,
    }
    impl<B: AutodiffBackend, O: Slots<B::InnerBackend>> ModuleVisitor<B> for Writer<'_, B, O> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            if !t.is_require_grad() {
                return;
            }
            let shape = t.shape();
            let n = shape.num_elements();
            let range = self.offset..self.offset + n;
            self.offset += n;
            if self.state.slots.iter().any(|s| s.len() < range.end) {
                self.short = true;
                return;
            }
            let slots = self
                .state
                .slots
                .iter()
                .map(|s| {
                    Tensor::<B::InnerBackend, D>::from_data(
                        TensorData::new(s[range.clone()].to_vec(), shape.clone()),
                        self.device,
                    )
                })
                .collect();
            self.records.insert(
                param.id,
                AdaptorRecord::from_state::<D>(O::import::<D>(self.state.time, slots)),
            );
        }
    }
    if state.slots.is_empty() {
        return Ok(Records::default());
    }
    let mut w = Writer::<B, O> {
        state,
        device,
        offset: 0,
        short: false,
        records: Records::default(),
    };
    module.visit(&mut w);
    if w.short || w.offset != state.len() {
        return Err(format!(
            "the optimizer state holds {} values per slot, the model has {} trainable parameters",
            state.len(),
            w.offset
        ));
    }
    Ok(w.records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuTrain;
    use crate::dist::flat::{self, Which};
    use crate::dist::ps::Shard;
    use crate::testing::lenet;
    use burn::module::Param;
    use burn::tensor::Distribution;
    use dlc_model::Net;

    type B = CpuTrain;

    fn grads(model: &Net<B>, seed: u64) -> GradientsParams {
        <B as Backend>::seed(&Default::default(), seed);
        let x = Tensor::<B, 4>::random([2, 1, 28, 28], Distribution::Default, &Default::default());
        GradientsParams::from_grads(model.forward(x).powi_scalar(2).sum().backward(), model)
    }

    fn flat(model: &Net<B>) -> Vec<f32> {
        flat::params_to_flat(model, Which::Trainable)
    }

    fn specs() -> Vec<TrainSpec> {
        let mut out = Vec::new();
        for (optimizer, momentum) in [
            (OptimizerKind::Adam, 0.0),
            (OptimizerKind::Adamw, 0.0),
            (OptimizerKind::Sgd, 0.9),
            (OptimizerKind::Sgd, 0.0),
        ] {
            out.push(TrainSpec {
                optimizer,
                momentum,
                weight_decay: 1e-3,
                ..TrainSpec::default()
            });
        }
        out
    }

    /// Exported and imported state continues exactly; the same state loaded into a
    /// parameter server's flat module takes the same step.
    #[test]
    fn flat_state_moves_between_optimizers_and_strategies() {
        let dev = Default::default();
        for spec in specs() {
            let mut model = lenet();
            let mut optim = AnyOptim::<B, Net<B>>::new(&spec);
            let fresh = optim.export(&model, &dev).unwrap();
            assert!(fresh.is_empty(), "{:?}", spec.optimizer);
            for seed in 0..2 {
                let g = grads(&model, seed);
                model = optim.step(1e-2, model, g);
            }
            let state = optim.export(&model, &dev).unwrap();
            assert_eq!(
                state.slots.len(),
                slot_names(&spec).len(),
                "{:?}",
                spec.optimizer
            );
            assert!(state.slots.iter().all(|s| s.len() == flat(&model).len()));
            if !state.is_empty() && spec.optimizer != OptimizerKind::Sgd {
                assert_eq!(state.time, 2);
            }

            // The same state in a fresh optimizer: bit-identical next step.
            let g = grads(&model, 7);
            let expected = optim.step(1e-2, model.clone(), g);
            let restored = AnyOptim::<B, Net<B>>::new(&spec)
                .import(&model, &state, &dev)
                .unwrap();
            let mut restored = restored;
            let g = grads(&model, 7);
            let got = restored.step(1e-2, model.clone(), g);
            assert_eq!(flat(&got), flat(&expected), "{:?}", spec.optimizer);
            assert_eq!(
                restored.export(&got, &dev).unwrap(),
                optim.export(&expected, &dev).unwrap()
            );

            // The same state on a parameter server's flat module: the same step.
            let values = flat(&model);
            let n = values.len();
            let shard = Shard::<B> {
                values: Param::from_tensor(Tensor::from_data(TensorData::new(values, [n]), &dev)),
            };
            let mut server = AnyOptim::<B, Shard<B>>::new(&spec)
                .import(&shard, &state, &dev)
                .unwrap();
            let g = flat::grads_to_flat(&model, &grads(&model, 7), 1.0, 0);
            let mut gp = GradientsParams::new();
            gp.register::<<B as AutodiffBackend>::InnerBackend, 1>(
                shard.values.id,
                Tensor::from_data(TensorData::new(g, [n]), &dev),
            );
            let stepped = server.step(1e-2, shard, gp);
            let (a, b) = (
                flat::params_to_flat(&stepped, Which::Trainable),
                flat(&expected),
            );
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-6, "{:?}: {worst}", spec.optimizer);
            // And back: the server's state is the model's state.
            let back = server.export(&stepped, &dev).unwrap();
            assert_eq!(back.slots.len(), state.slots.len());
        }
    }

    #[test]
    fn state_of_another_size_is_refused() {
        let dev = Default::default();
        let spec = &specs()[0];
        let model = lenet();
        let n = flat(&model).len();
        let state = FlatState {
            time: 3,
            slots: vec![vec![0.0; n - 1], vec![0.0; n - 1]],
        };
        let e = AnyOptim::<B, Net<B>>::new(spec)
            .import(&model, &state, &dev)
            .err()
            .unwrap();
        assert!(e.to_string().contains("trainable parameters"), "{e}");
    }

    #[test]
    fn shards_concatenate_back_into_the_whole() {
        let whole = FlatState {
            time: 4,
            slots: vec![(0..10).map(|x| x as f32).collect(), vec![1.0; 10]],
        };
        let parts = (0..3)
            .map(|s| whole.slice(crate::dist::ps::shard(10, s, 3)))
            .collect();
        assert_eq!(FlatState::concat(parts).unwrap(), whole);
        let mut bad = vec![whole.slice(0..5), whole.slice(5..10)];
        bad[1].time = 5;
        assert!(FlatState::concat(bad).is_err());
    }
}
