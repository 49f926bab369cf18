//! The dlcluster worker: loads a job's data, builds its model, trains it, evaluates it,
//! and writes metrics, checkpoints and the final weights to a run directory.
//!
//! Training code is generic over the burn backend; [`backend`] names the concrete
//! ones. Keep monomorphised code here, not in the binary, so it compiles once.

pub mod adam;
pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod progress;
pub mod task;
pub mod tensorboard;
#[cfg(test)]
mod testing;
pub mod trainer;
pub mod worker;

pub use error::TrainError;
pub use eval::{evaluate_file, EvalResult};
pub use trainer::{train, train_distributed, TrainOptions, TrainSummary};
