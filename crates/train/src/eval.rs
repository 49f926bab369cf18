//! Evaluation: test loss and accuracy.

use std::path::Path;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;
use dlc_data::Samples;
use dlc_job::JobSpec;
use dlc_model::Net;
use serde::Serialize;

use crate::backend::Cpu;
use crate::data::{Batcher, JobData};
use crate::TrainError;

/// Samples per evaluation batch.
const EVAL_BATCH: usize = 1000;

/// Loss and accuracy over a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Samples evaluated.
    pub samples: usize,
}

/// Evaluates `model` on every sample of `ds`.
pub fn evaluate<B: Backend>(model: &Net<B>, ds: &dyn Samples, device: &B::Device) -> EvalResult {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut batcher = Batcher::default();
    let (mut loss_sum, mut correct) = (0.0f64, 0i64);
    let all: Vec<usize> = (0..ds.len()).collect();
    for chunk in all.chunks(EVAL_BATCH) {
        let (x, y) = batcher.batch::<B>(ds, chunk, device);
        let logits = model.forward(x);
        let loss: f64 = loss_fn
            .forward(logits.clone(), y.clone())
            .into_scalar()
            .elem();
        loss_sum += loss * chunk.len() as f64;
        let pred = logits.argmax(1).flatten::<1>(0, 1);
        correct += pred.equal(y).int().sum().into_scalar().elem::<i64>();
    }
    let n = ds.len().max(1) as f64;
    EvalResult {
        loss: loss_sum / n,
        accuracy: correct as f64 / n,
        samples: ds.len(),
    }
}

/// Loads `model.safetensors` written by training into the job's model and evaluates
/// it on the job's test set (CPU).
pub fn evaluate_file(job: &JobSpec, weights: &Path) -> Result<EvalResult, TrainError> {
    let data = JobData::load(&job.data, job.train.seed)?;
    let plan = data.model_plan(&job.model)?;
    let device = Default::default();
    let mut model = Net::<Cpu>::new(&plan, &device);
    load_safetensors(&mut model, weights)?;
    Ok(evaluate(&model, data.test.as_ref(), &device))
}

/// Writes the model's parameters to `path` with stable names (see [`dlc_model`]).
pub fn save_safetensors<B: Backend>(model: &Net<B>, path: &Path) -> Result<(), TrainError> {
    let mut store = SafetensorsStore::from_file(path)
        .skip_enum_variants(true)
        .overwrite(true)
        .metadata("producer", "dlcluster");
    model
        .save_into(&mut store)
        .map_err(|e| TrainError::BadState {
            path: path.to_path_buf(),
            message: format!("cannot write weights: {e}"),
        })
}

/// Loads parameters written by [`save_safetensors`]; every tensor must match.
pub fn load_safetensors<B: Backend>(model: &mut Net<B>, path: &Path) -> Result<(), TrainError> {
    if !path.exists() {
        return Err(TrainError::BadState {
            path: path.to_path_buf(),
            message: "no such weights file".into(),
        });
    }
    let mut store = SafetensorsStore::from_file(path).skip_enum_variants(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| TrainError::BadState {
            path: path.to_path_buf(),
            message: format!("cannot read weights: {e}"),
        })?;
    if !result.is_success() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(TrainError::BadState {
            path: path.to_path_buf(),
            message: format!("weights do not match the job's model: {result}"),
        });
    }
    Ok(())
}
