//! `metrics.jsonl`: one JSON object per line, appended as training goes.
//!
//! Step lines: `{"kind":"step","epoch","step","loss","samples_per_sec","compute_s","comm_s"}`
//! (every `log_every` steps; `step` counts from the start of training; the times are
//! per-step means over the window).
//! Epoch lines: `{"kind":"epoch","epoch","train_loss","test_loss","test_accuracy","seconds"}`
//! (`epoch` is 1-based: the number of epochs completed).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// Progress within an epoch.
    Step {
        /// Epoch in progress (1-based).
        epoch: usize,
        /// Steps done since the start of training.
        step: usize,
        /// Training loss of this step.
        loss: f64,
        /// Job-wide training throughput since the previous step line.
        samples_per_sec: f64,
        /// Mean seconds per step spent computing (forward, backward, optimizer).
        compute_s: f64,
        /// Mean seconds per step spent exchanging gradients/parameters (0 for one worker).
        comm_s: f64,
    },
    /// End of an epoch.
    Epoch {
        /// Epochs completed.
        epoch: usize,
        /// Mean training loss over the epoch's steps (run since the last resume).
        train_loss: f64,
        /// Mean test loss.
        test_loss: f64,
        /// Fraction of test samples classified correctly.
        test_accuracy: f64,
        /// Wall time of the epoch's training and evaluation.
        seconds: f64,
    },
}

/// Appends [`Record`]s to a JSONL file, flushing each line.
pub struct MetricsSink {
    out: BufWriter<File>,
    path: PathBuf,
}

impl MetricsSink {
    /// Opens `path` for appending (created if missing).
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(TrainError::io(path))?;
        Ok(Self {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
        })
    }

    /// Writes one line.
    pub fn write(&mut self, rec: &Record) -> Result<(), TrainError> {
        let line = serde_json::to_string(rec).expect("metrics serialise");
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(TrainError::io(&self.path))
    }
}
