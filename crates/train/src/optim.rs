//! The optimizer a job names, behind one type.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig,
};
use burn::record::{BinBytesRecorder, BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use dlc_job::{OptimizerKind, TrainSpec};

use crate::TrainError;

type Rec = BinFileRecorder<FullPrecisionSettings>;

/// One of the supported optimizers for a module `M` (a `Net`, or a parameter
/// server's shard).
pub enum AnyOptim<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// SGD with momentum.
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
    /// Adam.
    Adam(OptimizerAdaptor<Adam, M, B>),
    /// AdamW.
    AdamW(OptimizerAdaptor<AdamW, M, B>),
}

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
            OptimizerKind::Adam => {
                AnyOptim::Adam(AdamConfig::new().with_weight_decay(decay).init())
            }
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

    /// The optimizer state (moments, step counts) in the format of a `.bin` file that
    /// [`AnyOptim::load`] reads.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let rec = BinBytesRecorder::<FullPrecisionSettings>::new();
        let res = match self {
            AnyOptim::Sgd(o) => Recorder::<B>::record(&rec, o.to_record(), ()),
            AnyOptim::Adam(o) => Recorder::<B>::record(&rec, o.to_record(), ()),
            AnyOptim::AdamW(o) => Recorder::<B>::record(&rec, o.to_record(), ()),
        };
        res.map_err(|e| TrainError::BadState {
            path: "optim.bin".into(),
            message: format!("cannot copy the optimizer state: {e}"),
        })
    }

    /// Restores the state written from [`AnyOptim::to_bytes`] into `path` (`.bin` is
    /// appended); the optimizer kind must match.
    pub fn load(self, path: &Path, device: &B::Device) -> Result<Self, TrainError> {
        let rec = Rec::new();
        let bad = |e: burn::record::RecorderError| TrainError::BadState {
            path: path.to_path_buf(),
            message: format!(
                "cannot load optimizer state (was it saved with another optimizer?): {e}"
            ),
        };
        let p = path.to_path_buf();
        Ok(match self {
            AnyOptim::Sgd(o) => AnyOptim::Sgd(o.load_record(rec.load(p, device).map_err(bad)?)),
            AnyOptim::Adam(o) => AnyOptim::Adam(o.load_record(rec.load(p, device).map_err(bad)?)),
            AnyOptim::AdamW(o) => AnyOptim::AdamW(o.load_record(rec.load(p, device).map_err(bad)?)),
        })
    }
}
