//! What a job needs, measured on one device by `dlc profile`.

use serde::{Deserialize, Serialize};

/// A job's measured needs (`profile.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Job name.
    pub job: String,
    /// Device measured on (`cpu`, `cuda:N`).
    pub device: String,
    /// CPU model of the machine (optional in a GPU profile).
    #[serde(default)]
    pub cpu_model: String,
    /// The GPU's name as `dlc devices` reports it (`Tesla V100-SXM2-16GB`), in a
    /// profile measured on `cuda:N`; matched to the catalog's GPU models by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// Tensor threads used for the measurement.
    pub threads: usize,
    /// Trainable parameters.
    pub params: usize,
    /// Bytes of gradients exchanged per step as they travel: 4 per parameter (f32), 2
    /// with `[distributed] compression` bf16 or fp16.
    pub grad_bytes: usize,
    /// Training FLOPs per sample: forward from the layer list, ×3 for forward+backward.
    pub flops_per_sample: f64,
    /// Measured training throughput (samples/s) on this device.
    pub samples_per_sec: f64,
    /// 1 / samples_per_sec.
    pub seconds_per_sample: f64,
    /// flops_per_sample × samples_per_sec.
    pub achieved_flops: f64,
    /// Bytes of input data per sample (as stored: u8 pixels + label).
    pub data_bytes_per_sample: usize,
    /// Global batch size of the job.
    pub batch_size: usize,
    /// Training samples per epoch.
    pub train_samples: usize,
    /// Epochs in the job file.
    pub epochs: usize,
    /// Steps timed.
    pub steps_measured: usize,
    /// Seconds of a step that do not shrink with the batch (the optimizer's update of
    /// every parameter, per-step allocation): the intercept of t(b) = t0 + b × t1
    /// fitted to steps at the full and at half the batch. A data-parallel worker
    /// pays it whatever its share of the batch. 0 in profiles written before it was
    /// measured.
    #[serde(default)]
    pub step_overhead_s: f64,
}

impl Profile {
    /// Measured on a GPU (`device = "cuda:N"`).
    pub fn on_gpu(&self) -> bool {
        self.device.starts_with("cuda")
    }

    /// FLOP/s of the whole device at the margin: FLOPs per sample ÷ t1.
    pub fn marginal_flops(&self) -> f64 {
        self.flops_per_sample / self.seconds_per_extra_sample().max(1e-15)
    }

    /// Achieved FLOP/s per tensor thread (the per-core rate on CPU).
    pub fn flops_per_thread(&self) -> f64 {
        self.achieved_flops / self.threads.max(1) as f64
    }

    /// Seconds each further sample adds to a step (t1): the step at the full batch
    /// less [`Self::step_overhead_s`], per sample.
    pub fn seconds_per_extra_sample(&self) -> f64 {
        let b = self.batch_size.max(1) as f64;
        (b * self.seconds_per_sample - self.step_overhead_s).max(0.0) / b
    }

    /// FLOP/s per tensor thread at the margin: FLOPs per sample ÷ t1 ÷ threads. With
    /// no fixed overhead this is [`Self::flops_per_thread`].
    pub fn marginal_flops_per_thread(&self) -> f64 {
        self.marginal_flops() / self.threads.max(1) as f64
    }
}

/// Fits t(b) = t0 + b × t1 to one step's seconds at two batch sizes: (t0, t1). A
/// noisy pair (the smaller batch no faster per step) gives no overhead: (0, t/b) of
/// the larger batch.
pub fn fit_step_overhead(small: (usize, f64), large: (usize, f64)) -> (f64, f64) {
    let ((b0, t0), (b1, t1)) = (small, large);
    if b1 > b0 && t1 > t0 && t0 > 0.0 {
        let per = (t1 - t0) / (b1 - b0) as f64;
        let fixed = t1 - b1 as f64 * per;
        if fixed >= 0.0 {
            return (fixed, per);
        }
    }
    (0.0, t1 / b1.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_overhead_is_the_intercept_of_two_batch_sizes() {
        // 1.25 ms at 64, 1.75 ms at 128: 0.75 ms fixed + 7.8125 µs per sample.
        let (t0, t1) = fit_step_overhead((64, 1.25e-3), (128, 1.75e-3));
        assert!((t0 - 0.75e-3).abs() < 1e-12 && (t1 - 0.5e-3 / 64.0).abs() < 1e-15);
        // Noise that makes the half batch slower, or the line pass below zero: none.
        assert_eq!(
            fit_step_overhead((64, 2e-3), (128, 1.6e-3)),
            (0.0, 1.6e-3 / 128.0)
        );
        assert_eq!(
            fit_step_overhead((64, 0.1e-3), (128, 1e-3)),
            (0.0, 1e-3 / 128.0)
        );
    }
}
