//! What to launch, independent of the resource manager that launches it.

use std::path::PathBuf;
use std::time::Duration;

/// A distributed job as every resource manager sees it: how many processes of which
/// kind, with what resources, running `dlc worker JOB …`.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    /// Job name (used for scheduler job names; managers make it safe for their syntax).
    pub name: String,
    /// The `dlc` binary as the nodes see it (Slurm: a path on a shared file system;
    /// Kubernetes: the command in the image).
    pub exe: PathBuf,
    /// The job file, absolute.
    pub job_file: PathBuf,
    /// The job file's text (shipped to Kubernetes in a ConfigMap).
    pub job_text: String,
    /// Arguments after `dlc worker JOB` (strategy, steps, …), identical for every process.
    pub worker_args: Vec<String>,
    /// Training workers.
    pub workers: usize,
    /// Parameter-server processes (0 with the ring strategy).
    pub servers: usize,
    /// Machines.
    pub nodes: usize,
    /// GPUs per worker (0: CPU).
    pub gpus_per_worker: usize,
    /// CPU cores per process.
    pub cpus_per_worker: usize,
    /// Wall-clock limit of the whole job.
    pub time_limit: Option<Duration>,
    /// Slurm partition.
    pub partition: Option<String>,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Container image holding `dlc` and the data (Kubernetes).
    pub image: String,
    /// Directory the processes start in (Slurm `--chdir`).
    pub workdir: PathBuf,
    /// Run directory rank 0 writes.
    pub out: PathBuf,
    /// `out` holds a run to continue from its checkpoint (`dlc launch --resume`).
    pub resume: bool,
    /// Port of the coordinator rank 0 hosts (None: derived from the scheduler's job id).
    pub port: Option<u16>,
    /// Seconds every rank may take to start and join the coordinator rank 0 hosts.
    pub timeout_s: u64,
    /// A foreign command run by `dlc exec` in every process instead of `dlc worker`.
    pub command: Option<ForeignCommand>,
    /// The job's processes stop on SIGTERM/SIGUSR1 with a checkpoint and resume from
    /// it (a job file's job, unless its parameter servers are asynchronous; a foreign
    /// command handles signals its own way).
    pub checkpoints: bool,
    /// Restarts of the whole job after a failure (0: a failure ends it).
    pub max_restarts: usize,
    /// Elastic restarts: continue without failed workers while at least this many
    /// remain (the local manager; None: restart all).
    pub min_workers: Option<usize>,
    /// Where the run directory is kept when the processes' file systems are not (a
    /// Kubernetes volume mounted in every pod).
    pub output_volume: Option<OutputVolume>,
}

/// A volume that keeps a job's run directory (Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputVolume {
    /// A PersistentVolumeClaim by name.
    Claim(String),
    /// A directory on the node (hostPath).
    HostPath(PathBuf),
}

/// The user's own command, run under `dlc exec` in every process of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignCommand {
    /// Options of `dlc exec` (framework, strategy, join timeout, …), identical for
    /// every process.
    pub exec_args: Vec<String>,
    /// The command and its arguments.
    pub argv: Vec<String>,
}

impl LaunchSpec {
    /// What follows `dlc` in every process: `worker JOB … --out DIR` (`--resume DIR`
    /// when continuing a run), or
    /// `exec … --out DIR -- COMMAND…`; `job_file` is the job file as the process
    /// sees it.
    pub fn process_args(&self, job_file: &str) -> Vec<String> {
        let out = self.out.display().to_string();
        match &self.command {
            None => {
                let mut a = vec!["worker".to_string(), job_file.to_string()];
                a.extend(self.worker_args.iter().cloned());
                let flag = if self.resume { "--resume" } else { "--out" };
                a.extend([flag.into(), out]);
                a
            }
            Some(c) => {
                let mut a = vec!["exec".to_string()];
                a.extend(c.exec_args.iter().cloned());
                a.extend(["--out".into(), out, "--".into()]);
                a.extend(c.argv.iter().cloned());
                a
            }
        }
    }

    /// Processes in the job: workers plus servers.
    pub fn world(&self) -> usize {
        self.workers + self.servers
    }

    /// Workers on each node, rounded up (the last node may hold fewer).
    pub fn workers_per_node(&self) -> usize {
        self.workers.div_ceil(self.nodes.max(1))
    }
}

/// `[a-z0-9-]`, starting with a letter, at most `max` characters, no trailing `-`:
/// valid as a DNS label (Kubernetes names) and harmless in a shell.
pub fn dns_label(name: &str, max: usize) -> String {
    let mut s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let mut s = s.trim_matches('-').to_string();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s = format!("dlc-{s}");
    }
    s.truncate(max);
    s.trim_end_matches('-').to_string()
}

/// Formats a duration as Slurm's `D-HH:MM:SS` (rounded up to a whole minute, at least one).
pub fn slurm_time(d: Duration) -> String {
    let mins = d.as_secs().div_ceil(60).max(1);
    let (days, h, m) = (mins / 1440, (mins / 60) % 24, mins % 60);
    if days > 0 {
        format!("{days}-{h:02}:{m:02}:00")
    } else {
        format!("{h:02}:{m:02}:00")
    }
}

/// Quotes a word for a POSIX shell (single quotes; `'` as `'\''`).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert_eq!(dns_label("fashion-mnist-mlp", 63), "fashion-mnist-mlp");
        assert_eq!(dns_label("My_Job.v2", 63), "my-job-v2");
        assert_eq!(dns_label("9lives", 63), "dlc-9lives");
        assert_eq!(dns_label("--a--b--", 63), "a-b");
        assert_eq!(dns_label("abcdef-ghi", 7), "abcdef");
        assert_eq!(dns_label("", 63), "dlc");
    }

    #[test]
    fn slurm_times() {
        assert_eq!(slurm_time(Duration::from_secs(90)), "00:02:00");
        assert_eq!(slurm_time(Duration::from_secs(3600)), "01:00:00");
        assert_eq!(slurm_time(Duration::from_secs(0)), "00:01:00");
        assert_eq!(
            slurm_time(Duration::from_secs(26 * 3600 + 60)),
            "1-02:01:00"
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("runs/a-1"), "runs/a-1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
