//! What a job learns: the labels as tensors, the training loss, and the test metrics
//! of classification (cross-entropy, accuracy) and regression (mean squared error,
//! RMSE and MAE in the target's own units).

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use dlc_data::{Batch, Standardizer};

/// A batch's labels on the device.
pub enum Target<B: Backend> {
    /// Class indices `[n]`.
    Classes(Tensor<B, 1, Int>),
    /// Regression targets `[n]` (standardised when the features are).
    Values(Tensor<B, 1>),
}

/// The input tensor `[n, c, h, w]` (a table row is `[features, 1, 1]`) and the labels
/// of a batch of samples of `shape` `[c, h, w]`.
pub fn to_tensors<B: Backend>(
    batch: Batch,
    shape: [usize; 3],
    device: &B::Device,
) -> (Tensor<B, 4>, Target<B>) {
    let n = batch.len();
    let [c, h, w] = shape;
    let inputs = Tensor::from_data(TensorData::new(batch.inputs, [n, c, h, w]), device);
    let target = if batch.targets.is_empty() {
        Target::Classes(Tensor::from_data(
            TensorData::new(batch.labels, [n]),
            device,
        ))
    } else {
        Target::Values(Tensor::from_data(
            TensorData::new(batch.targets, [n]),
            device,
        ))
    };
    (inputs, target)
}

/// The mean training loss of `output` (`[n, classes]` logits, or `[n, 1]`
/// predictions) against `target`: cross-entropy, or mean squared error.
pub fn loss<B: Backend>(output: Tensor<B, 2>, target: Target<B>) -> Tensor<B, 1> {
    match target {
        Target::Classes(y) => {
            let device = output.device();
            CrossEntropyLossConfig::new()
                .init(&device)
                .forward(output, y)
        }
        Target::Values(y) => {
            let diff = output.flatten::<1>(0, 1) - y;
            (diff.clone() * diff).mean()
        }
    }
}

/// Sums over evaluation batches, turned into metrics by [`Totals::finish`].
#[derive(Debug, Default)]
pub struct Totals {
    loss: f64,
    correct: i64,
    squared: f64,
    absolute: f64,
    samples: usize,
    regression: bool,
}

impl Totals {
    /// Adds a batch: its model `output` and `target`; `scale` maps standardised
    /// regression targets back to the target's units.
    pub fn add<B: Backend>(
        &mut self,
        output: Tensor<B, 2>,
        target: Target<B>,
        scale: Option<&Standardizer>,
    ) {
        let n = output.dims()[0];
        self.samples += n;
        match target {
            Target::Classes(y) => {
                let pred = output.clone().argmax(1).flatten::<1>(0, 1);
                self.correct += pred
                    .equal(y.clone())
                    .int()
                    .sum()
                    .into_scalar()
                    .elem::<i64>();
                let l: f64 = loss(output, Target::Classes(y)).into_scalar().elem();
                self.loss += l * n as f64;
            }
            Target::Values(y) => {
                self.regression = true;
                let l: f64 = loss(output.clone(), Target::Values(y.clone()))
                    .into_scalar()
                    .elem();
                self.loss += l * n as f64;
                let to_units = |t: Tensor<B, 1>| -> Vec<f32> {
                    let v = t.into_data().into_vec::<f32>().unwrap_or_default();
                    v.into_iter()
                        .map(|z| scale.map_or(z, |s| s.target_value(z)))
                        .collect()
                };
                let pred = to_units(output.flatten::<1>(0, 1));
                let truth = to_units(y);
                for (p, t) in pred.iter().zip(&truth) {
                    let e = f64::from(p - t);
                    self.squared += e * e;
                    self.absolute += e.abs();
                }
            }
        }
    }

    /// Mean loss, and accuracy or RMSE and MAE.
    pub fn finish(&self) -> crate::eval::EvalResult {
        let n = self.samples.max(1) as f64;
        let (accuracy, rmse, mae) = if self.regression {
            (
                None,
                Some((self.squared / n).sqrt()),
                Some(self.absolute / n),
            )
        } else {
            (Some(self.correct as f64 / n), None, None)
        };
        crate::eval::EvalResult {
            loss: self.loss / n,
            accuracy,
            rmse,
            mae,
            samples: self.samples,
        }
    }
}
