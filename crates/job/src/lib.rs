//! The dlcluster job file.
//!
//! A job file is TOML with the sections `[model]`, `[data]`, `[train]` and the
//! optional `[distributed]` and `[resources]`, plus an optional top-level `name`; or,
//! for the user's own program, `[command]` instead of `[model]` and `[data]`. Unknown keys and bad values are rejected with the key,
//! the line and what is allowed. See the README's job-file reference.

mod spec;
mod validate;

use std::path::{Path, PathBuf};

pub use spec::{
    parse_duration, CheckpointEvery, ColumnSpec, CommandSpec, Compression, DataFormat, DataSpec,
    DeviceSpec, DistributedSpec, Framework, LayerSpec, LrSchedule, Manager, ModelSpec,
    OptimizerKind, Padding, Preset, PsMode, ResourcesSpec, Strategy, Task, TrainSpec, Transport,
};

/// Why a job file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file could not be read.
    #[error("cannot read job file {path}: {source}")]
    Io {
        /// Job file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// The parser's message (with line, column and what is allowed).
        message: String,
    },
    /// A value parsed but is out of range or inconsistent.
    #[error("{origin}{}: `{key}` {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// Dotted key, e.g. `train.learning_rate`.
        key: String,
        /// 1-based line of the key, when it appears in the file.
        line: Option<usize>,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// A parsed and validated job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job name (default: the file's stem). Used for run directories.
    #[serde(default)]
    pub name: Option<String>,
    /// What to train (absent when `[command]` is given).
    #[serde(default, skip_serializing_if = "ModelSpec::is_empty")]
    pub model: ModelSpec,
    /// On what (absent when `[command]` is given).
    #[serde(default, skip_serializing_if = "DataSpec::is_empty")]
    pub data: DataSpec,
    /// The user's own program instead of `[model]` and `[data]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandSpec>,
    /// How.
    #[serde(default)]
    pub train: TrainSpec,
    /// Over how many workers.
    #[serde(default)]
    pub distributed: DistributedSpec,
    /// Where the processes run.
    #[serde(default)]
    pub resources: ResourcesSpec,
}

impl JobSpec {
    /// Reads, parses and validates a job file. Relative data paths are resolved against
    /// the file's directory; a missing `name` becomes the file's stem.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, JobError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut job = Self::from_toml_str(&text, &path.display().to_string())?;
        if job.name.is_none() {
            job.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        if let Some(base) = path.parent().filter(|b| !b.as_os_str().is_empty()) {
            job.data.resolve_relative(base);
            if let Some(c) = &mut job.command {
                c.workdir = Some(match c.workdir.take() {
                    Some(w) if w.is_relative() => base.join(w),
                    Some(w) => w,
                    None => base.to_path_buf(),
                });
            }
        }
        Ok(job)
    }

    /// Parses and validates job text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, JobError> {
        let job: JobSpec = toml::from_str(text).map_err(|e| JobError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        validate::check(&job).map_err(|(key, message)| JobError::Invalid {
            origin: origin.to_string(),
            line: validate::line_of(text, &key),
            key,
            message,
        })?;
        Ok(job)
    }

    /// A job that runs the user's own command (`dlc launch -- COMMAND`): no model or
    /// data of ours; `[train]`, `[distributed]` and `[resources]` at their defaults.
    pub fn for_command(name: impl Into<String>) -> Self {
        JobSpec {
            name: Some(name.into()),
            model: ModelSpec {
                preset: None,
                layers: None,
            },
            data: DataSpec::default(),
            command: None,
            train: TrainSpec::default(),
            distributed: DistributedSpec::default(),
            resources: ResourcesSpec::default(),
        }
    }

    /// The job's name, or `job` when it has none.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or("job")
    }

    /// Re-checks `[distributed]` after command-line overrides.
    pub fn check_distributed(&self) -> Result<(), JobError> {
        validate::check_distributed(&self.distributed, self.train.batch_size).map_err(
            |(key, message)| JobError::Invalid {
                origin: "command line".into(),
                key,
                line: None,
                message,
            },
        )
    }

    /// Serialises the job back to TOML (written into run directories).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
