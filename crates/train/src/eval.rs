//! Evaluation: test loss, and accuracy or RMSE and MAE.

use std::path::Path;

use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::Backend;
use dlc_data::{Batch, Samples, Standardizer};
use dlc_job::JobSpec;
use dlc_model::Net;
use serde::Serialize;

use crate::backend::{Cpu, Gpu, GpuDevice};
use crate::data::{DataInfo, JobData};
use crate::device::Device;
use crate::task::{to_tensors, Totals};
use crate::TrainError;

/// Samples per evaluation batch.
const EVAL_BATCH: usize = 1000;

/// Loss and accuracy (classification) or RMSE and MAE (regression) over a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    /// Mean training loss (cross-entropy, or squared error of the standardised target).
    pub loss: f64,
    /// Fraction classified correctly (classification).
    pub accuracy: Option<f64>,
    /// Root mean squared error in the target's units (regression).
    pub rmse: Option<f64>,
    /// Mean absolute error in the target's units (regression).
    pub mae: Option<f64>,
    /// Samples evaluated.
    pub samples: usize,
}

impl EvalResult {
    /// No evaluation (a rank other than 0).
    pub fn none() -> Self {
        Self {
            loss: f64::NAN,
            accuracy: None,
            rmse: None,
            mae: None,
            samples: 0,
        }
    }

    /// `test accuracy 84.30%`, or `test RMSE 3.2100, MAE 2.4000`.
    pub fn describe(&self) -> String {
        match (self.accuracy, self.rmse, self.mae) {
            (Some(a), _, _) => format!("test accuracy {:.2}%", 100.0 * a),
            (None, Some(r), Some(m)) => format!("test RMSE {r:.4}, MAE {m:.4}"),
            _ => "no test metrics".into(),
        }
    }
}

/// Evaluates `model` on every sample of `ds`; `scale` maps standardised regression
/// targets back to their units. Fails on inputs the model cannot take (token ids
/// outside an embedding's vocabulary) and on image files that cannot be decoded
/// (samples read on demand).
pub fn evaluate<B: Backend>(
    model: &Net<B>,
    ds: &dyn Samples,
    scale: Option<&Standardizer>,
    device: &B::Device,
) -> Result<EvalResult, TrainError> {
    let mut totals = Totals::default();
    let all: Vec<usize> = (0..ds.len()).collect();
    for chunk in all.chunks(EVAL_BATCH) {
        let mut batch = Batch::default();
        ds.gather(chunk, &mut batch)?;
        model
            .check_tokens(&batch.inputs)
            .map_err(|m| TrainError::Usage(format!("test samples {}..: {m}", chunk[0])))?;
        let (x, y) = to_tensors::<B>(batch, ds.shape(), device);
        totals.add(model.forward(x), y, scale);
    }
    Ok(totals.finish())
}

/// Loads `model.safetensors` written by training into the job's model and evaluates
/// it on the job's test set on `device` (`auto`: a GPU when one works, with a notice
/// when it falls back), mapping classes and standardising features as training did
/// when the weights' directory holds the run's `data.json`. Returns the result and
/// the device it ran on.
pub fn evaluate_file(
    job: &JobSpec,
    weights: &Path,
    device: dlc_job::DeviceSpec,
) -> Result<(EvalResult, Device), TrainError> {
    let (device, notice) = crate::device::resolve(device, 0)?;
    if let Some(n) = notice {
        eprintln!("{n}");
    }
    let r = match device {
        Device::Cpu => evaluate_on::<Cpu>(job, weights, &Default::default())?,
        Device::Cuda(i) => evaluate_on::<Gpu>(job, weights, &GpuDevice::new(i))?,
    };
    Ok((r, device))
}

fn evaluate_on<B: Backend>(
    job: &JobSpec,
    weights: &Path,
    device: &B::Device,
) -> Result<EvalResult, TrainError> {
    // The run's class mapping and standardisation, when it saved them (data.json).
    let saved = match weights.parent() {
        Some(dir) => DataInfo::load(dir)?,
        None => None,
    };
    let data = JobData::load_as(&job.data, job.train.seed, saved.as_ref())?;
    let plan = data.model_plan(&job.model)?;
    let mut model = Net::<B>::new(&plan, device);
    load_safetensors(&mut model, weights)?;
    evaluate(
        &model,
        data.test.as_ref(),
        data.standardizer.as_ref(),
        device,
    )
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
