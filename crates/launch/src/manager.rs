//! The resource-manager seam: render, submit, and follow a job on a scheduler.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::spec::LaunchSpec;

/// Why a resource manager could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// A scheduler command is not installed.
    #[error("`{tool}` is not installed or not on PATH: {hint}")]
    ToolMissing {
        /// The command.
        tool: String,
        /// What to do about it.
        hint: String,
    },
    /// A scheduler command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    ToolFailed {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The request makes no sense for this manager or these resources.
    #[error("{0}")]
    Invalid(String),
    /// The scheduler does not know the job.
    #[error("{manager} does not know job `{id}`{hint}")]
    UnknownJob {
        /// Manager.
        manager: &'static str,
        /// Job id.
        id: String,
        /// Where else to look.
        hint: String,
    },
    /// Reading or writing a file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A job's state as its scheduler reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobStatus {
    /// Scheduler job id.
    pub id: String,
    /// Scheduler state, upper case (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, …).
    pub state: String,
    /// The job has ended (successfully or not).
    pub finished: bool,
    /// The job ended successfully.
    pub succeeded: bool,
    /// More detail: elapsed time, nodes, reason, exit code.
    pub detail: String,
}

/// How the processes of a distributed job are scheduled and come up.
///
/// Every manager starts the same command, `dlc worker JOB …`, once per process; the
/// worker reads its rank from the manager's environment ([`crate::env`]).
pub trait ResourceManager {
    /// `local`, `slurm`, `kubernetes`, `ray`.
    fn name(&self) -> &'static str;
    /// [`ResourceManager::submit`] runs the whole job and returns when it has ended
    /// (local processes, a Ray driver): there is nothing for status, logs or cancel.
    fn foreground(&self) -> bool {
        false
    }
    /// The processes get their CPUs from us, not from a scheduler's cgroup, and are
    /// told how many tensor threads to use (`--threads`).
    fn assigns_threads(&self) -> bool {
        false
    }
    /// Refuses what this manager cannot do for `spec` before anything is rendered or
    /// submitted. By default a job may restart (`max_restarts`) but not shrink
    /// (`min_workers`); managers that can do more or less say so.
    fn check(&self, spec: &LaunchSpec) -> Result<(), ManagerError> {
        refuse_shrinking(self.name(), spec, "")
    }
    /// What would be submitted (a batch script, manifests), for `--dry-run`.
    fn render(&self, spec: &LaunchSpec) -> Result<String, ManagerError>;
    /// Submits the job; returns the scheduler's job id.
    fn submit(&self, spec: &LaunchSpec) -> Result<String, ManagerError>;
    /// The job's state (a foreground manager has none to give).
    fn status(&self, _id: &str) -> Result<JobStatus, ManagerError> {
        Err(in_foreground(self.name()))
    }
    /// The job's output so far (a foreground manager relays it as the job runs).
    fn logs(&self, _id: &str) -> Result<String, ManagerError> {
        Err(in_foreground(self.name()))
    }
    /// Stops the job (a foreground job stops when its `dlc launch` is interrupted).
    fn cancel(&self, _id: &str) -> Result<(), ManagerError> {
        Err(in_foreground(self.name()))
    }
}

/// Refuses `min_workers` (elastic restarts) for a manager whose jobs do not shrink;
/// `aside` ends the message with what the manager does instead.
pub(crate) fn refuse_shrinking(
    manager: &str,
    spec: &LaunchSpec,
    aside: &str,
) -> Result<(), ManagerError> {
    match spec.min_workers {
        Some(_) => Err(ManagerError::Invalid(format!(
            "--min-workers (elastic restarts) works with the local manager and Slurm; \
             {manager} jobs do not shrink yet{aside}"
        ))),
        None => Ok(()),
    }
}

/// What status, logs and cancel say about a job that lives in the foreground.
fn in_foreground(manager: &str) -> ManagerError {
    ManagerError::Invalid(format!(
        "{manager} jobs run in the foreground of `dlc launch` (and local ones of `dlc train`): \
         follow them there, and interrupt it to cancel; there is nothing to query"
    ))
}

/// Runs a scheduler command (with `stdin` fed to it when given) and returns stdout.
pub(crate) fn tool(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    hint: &str,
) -> Result<String, ManagerError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ManagerError::ToolMissing {
                tool: program.to_string(),
                hint: hint.to_string(),
            },
            _ => ManagerError::Io {
                what: format!("starting `{command}`"),
                source: e,
            },
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| ManagerError::Io {
                what: format!("writing to `{command}`"),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ManagerError::Io {
            what: format!("waiting for `{command}`"),
            source,
        })?;
    if !out.status.success() {
        return Err(ManagerError::ToolFailed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
