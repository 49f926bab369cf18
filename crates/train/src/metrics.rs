//! `metrics.jsonl`: one JSON object per line, appended as training goes.
//!
//! Step lines: `{"kind":"step","epoch","step","loss","samples_per_sec","compute_s","comm_s","comm_hidden_s","data_s"}`
//! (every `log_every` steps; `step` counts from the start of training; the times are
//! per-step means over the window).
//! Epoch lines: `{"kind":"epoch","epoch","train_loss","test_loss","test_accuracy","seconds"}`
//! (`epoch` is 1-based: the number of epochs completed); a regression job has
//! `test_rmse` and `test_mae` instead of `test_accuracy`.
//!
//! World lines: `{"kind":"world","workers","addrs","links"}` (a distributed job's
//! start, and each restart: the address every rank listens on, in rank order, servers
//! after workers; what carries rank 0's link to each rank: `"shm"`, `"tcp"`, or null
//! for itself and ranks it has no link to).
//! Restart lines: `{"kind":"restart","restart","reason","workers_before","workers_after","step","steps_lost"}`
//! (written when a job continues after a failure, `--max-restarts`); stop lines:
//! `{"kind":"stop","reason","step"}` (a signal stopped training after a checkpoint).
//!
//! The same values go to a TensorBoard event file next to it (see [`crate::tensorboard`]):
//! step lines as `train/loss`, `train/samples_per_sec`, `train/compute_s`,
//! `train/comm_s`, `train/comm_hidden_s` and `train/data_s` at the global step; epoch lines as `epoch/train_loss`,
//! `epoch/test_loss`, `epoch/test_accuracy` (or `epoch/test_rmse` and
//! `epoch/test_mae`) and `epoch/seconds` at the epoch number.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::tensorboard::EventWriter;
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
        /// Mean seconds per step spent exchanging gradients/parameters, or waiting for
        /// the exchange (0 for one worker).
        comm_s: f64,
        /// Mean seconds per step of gradient summing that ran while backward did
        /// (not in `comm_s`: hidden behind compute).
        comm_hidden_s: f64,
        /// Mean seconds per step the loop waited for its batch (the loader fell behind).
        data_s: f64,
    },
    /// End of an epoch.
    Epoch {
        /// Epochs completed.
        epoch: usize,
        /// Mean training loss over the epoch's steps (run since the last resume).
        train_loss: f64,
        /// Mean test loss.
        test_loss: f64,
        /// Fraction of test samples classified correctly (classification).
        #[serde(skip_serializing_if = "Option::is_none")]
        test_accuracy: Option<f64>,
        /// Root mean squared test error in the target's units (regression).
        #[serde(skip_serializing_if = "Option::is_none")]
        test_rmse: Option<f64>,
        /// Mean absolute test error in the target's units (regression).
        #[serde(skip_serializing_if = "Option::is_none")]
        test_mae: Option<f64>,
        /// Wall time of the epoch's training and evaluation.
        seconds: f64,
    },
    /// Who takes part: written when a distributed job starts (or restarts).
    World {
        /// Workers (ranks `0..workers`; parameter servers follow).
        workers: usize,
        /// The address each rank listens on for peer links, in rank order.
        addrs: Vec<String>,
        /// What carries this rank's link to each rank (`shm`, `tcp`; null: none).
        links: Vec<Option<&'static str>>,
    },
    /// The job was restarted after a failure and continues from a checkpoint.
    Restart {
        /// Restarts so far (1 for the first).
        restart: usize,
        /// Why the previous attempt ended (its first failure).
        reason: String,
        /// Workers before the failure.
        workers_before: usize,
        /// Workers now.
        workers_after: usize,
        /// The global step training continues from (0: from the start).
        step: usize,
        /// Steps trained before the failure and done again (from the last step line,
        /// so at `log_every` resolution).
        steps_lost: usize,
    },
    /// Training stopped on a signal after writing a checkpoint.
    Stop {
        /// The signal (`SIGTERM`, `SIGUSR1`).
        reason: String,
        /// Steps done; `--resume` continues from here.
        step: usize,
    },
}

/// Appends [`Record`]s to `metrics.jsonl` (flushing each line) and to a TensorBoard
/// event file in the same run directory.
pub struct MetricsSink {
    out: BufWriter<File>,
    path: PathBuf,
    events: EventWriter,
}

impl MetricsSink {
    /// Opens `run_dir/metrics.jsonl` for appending (created if missing) and starts a new
    /// event file in `run_dir`.
    pub fn open(run_dir: &Path) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(TrainError::io(&path))?;
        Ok(Self {
            out: BufWriter::new(file),
            path,
            events: EventWriter::create(run_dir)?,
        })
    }

    /// Writes one line.
    pub fn write(&mut self, rec: &Record) -> Result<(), TrainError> {
        let line = serde_json::to_string(rec).expect("metrics serialise");
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(TrainError::io(&self.path))?;
        match *rec {
            Record::Step {
                step,
                loss,
                samples_per_sec,
                compute_s,
                comm_s,
                comm_hidden_s,
                data_s,
                ..
            } => self.events.scalars(
                step as u64,
                &[
                    ("train/loss", loss),
                    ("train/samples_per_sec", samples_per_sec),
                    ("train/compute_s", compute_s),
                    ("train/comm_s", comm_s),
                    ("train/comm_hidden_s", comm_hidden_s),
                    ("train/data_s", data_s),
                ],
            ),
            Record::Epoch {
                epoch,
                train_loss,
                test_loss,
                test_accuracy,
                test_rmse,
                test_mae,
                seconds,
            } => {
                let optional = [
                    ("epoch/test_accuracy", test_accuracy),
                    ("epoch/test_rmse", test_rmse),
                    ("epoch/test_mae", test_mae),
                ];
                let values: Vec<(&str, f64)> = [
                    ("epoch/train_loss", train_loss),
                    ("epoch/test_loss", test_loss),
                    ("epoch/seconds", seconds),
                ]
                .into_iter()
                .chain(optional.into_iter().filter_map(|(k, v)| Some((k, v?))))
                .collect();
                self.events.scalars(epoch as u64, &values)
            }
            Record::Restart {
                restart,
                workers_before,
                workers_after,
                step,
                steps_lost,
                ..
            } => self.events.scalars(
                step as u64,
                &[
                    ("restart/count", restart as f64),
                    ("restart/workers_before", workers_before as f64),
                    ("restart/workers_after", workers_after as f64),
                    ("restart/steps_lost", steps_lost as f64),
                ],
            ),
            Record::World { .. } => Ok(()),
            Record::Stop { step, .. } => self
                .events
                .scalars(step as u64, &[("stop/step", step as f64)]),
        }
    }
}
