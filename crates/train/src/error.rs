//! Errors of the worker.

use std::path::PathBuf;

/// Why training or evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data could not be loaded.
    #[error(transparent)]
    Data(#[from] dlc_data::DataError),
    /// A batch could not be made.
    #[error(transparent)]
    Loader(#[from] dlc_data::LoadError),
    /// The model does not fit the data.
    #[error("model does not fit the data: {0}")]
    Model(dlc_model::ModelError),
    /// A file in the run directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A checkpoint or weights file is missing, corrupt or does not match the job.
    #[error("{path}: {message}")]
    BadState {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Communication with the other ranks failed.
    #[error(transparent)]
    Comm(#[from] dlc_comm::CommError),
    /// Options contradict each other.
    #[error("{0}")]
    Usage(String),
    /// The device failed while training (a CUDA error: out of memory, a kernel that
    /// did not compile, a lost GPU).
    #[error("training on {device} failed {at}: {message}")]
    Device {
        /// The device (`cuda:N`).
        device: String,
        /// Where the run was: `at step 12 (epoch 2)`, `while setting up`, …
        at: String,
        /// What the backend said.
        message: String,
    },
}

/// The message a caught panic carried (`panic!` with a literal or a formatted string).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> Option<String> {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
}

// Not `#[from]`: that would make the model error this one's source too, and error
// chains (`{:#}`) would print its message twice.
impl From<dlc_model::ModelError> for TrainError {
    fn from(e: dlc_model::ModelError) -> Self {
        TrainError::Model(e)
    }
}

impl TrainError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }
}
