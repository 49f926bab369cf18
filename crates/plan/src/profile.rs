//! What a job needs, measured on one device by `dlc profile`.

use serde::{Deserialize, Serialize};

/// A job's measured needs (`profile.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Job name.
    pub job: String,
    /// Device measured on (`cpu`, `cuda:N`).
    pub device: String,
    /// CPU model of the machine.
    pub cpu_model: String,
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
}

impl Profile {
    /// Achieved FLOP/s per tensor thread (the per-core rate on CPU).
    pub fn flops_per_thread(&self) -> f64 {
        self.achieved_flops / self.threads.max(1) as f64
    }
}
