//! Jobs this user submitted, remembered so that `dlc status/logs/cancel ID` find the
//! manager (and Kubernetes namespace) of a job without being told again.
//!
//! One small JSON file per job in `$DLC_STATE_DIR`, else `$XDG_STATE_HOME/dlc/jobs`,
//! else `~/.local/state/dlc/jobs`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What `dlc launch` remembers of a submitted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The scheduler's job id (Slurm: a number; Kubernetes: the Job's name).
    pub id: String,
    /// Its resource manager.
    pub manager: dlc_job::Manager,
    /// Kubernetes namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The job's name.
    pub name: String,
    /// Its run directory (as the processes see it).
    pub run_dir: PathBuf,
    /// Submission time, seconds since the Unix epoch.
    pub submitted: u64,
}

/// Where records are kept; None when no home directory is known.
pub fn state_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("DLC_STATE_DIR")
        .or_else(|| var("XDG_STATE_HOME").map(|d| d.join("dlc").join("jobs")))
        .or_else(|| var("HOME").map(|h| h.join(".local/state/dlc/jobs")))
}

/// A job id usable as a file name: what Slurm and Kubernetes ids are made of.
fn file_of(id: &str) -> Option<PathBuf> {
    let safe = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    safe.then(|| state_dir().map(|d| d.join(format!("{id}.json"))))
        .flatten()
}

/// Remembers a submitted job (replacing an older record of the same id).
pub fn save(rec: &JobRecord) -> std::io::Result<()> {
    let path = file_of(&rec.id).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot keep a record of job `{}`", rec.id),
        )
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(rec).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// The record of job `id`, if this user submitted it from this machine.
pub fn find(id: &str) -> Option<JobRecord> {
    let text = std::fs::read_to_string(file_of(id)?).ok()?;
    serde_json::from_str(&text).ok()
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_are_not_file_names_are_refused() {
        for bad in ["", "../x", ".hidden", "a/b", "a b", "x\0"] {
            assert!(file_of(bad).is_none(), "{bad:?}");
        }
        assert!(file_of("12345").is_some() || state_dir().is_none());
    }
}
