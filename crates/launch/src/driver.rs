//! What the managers of engines that run a Python driver of ours share (Ray, Spark):
//! the driver's command line, running it in the foreground with its stderr relayed,
//! and turning its last word into the error.
//!
//! The drivers live in `python/dlcluster/` (`ray_launch.py`, `spark_launch.py`, with
//! `_driver.py` for what they share) and run under `DLC_PYTHON`, else `python3`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::manager::ManagerError;
use crate::spec::{shell_quote, LaunchSpec};

/// Lines of the driver's stderr kept for the error of a failed job.
const TAIL: usize = 16;

/// A Python driver module and how it speaks.
pub(crate) struct Driver {
    /// `dlcluster.ray_launch`.
    pub module: &'static str,
    /// The prefix of the driver's own lines (`dlc-ray`).
    pub prefix: &'static str,
    /// What to install for it, for the error when Python cannot start.
    pub needs: &'static str,
}

/// The Python that runs the drivers: `DLC_PYTHON`, else `python3`.
pub(crate) fn python() -> String {
    std::env::var("DLC_PYTHON").unwrap_or_else(|_| "python3".into())
}

impl Driver {
    /// `-m MODULE` and the options every driver takes; `extra` (the engine's own)
    /// goes before the process's command line.
    pub fn args(&self, spec: &LaunchSpec, extra: &[String]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-m".into(),
            self.module.into(),
            "--processes".into(),
            spec.world().to_string(),
            "--workers".into(),
            spec.workers.to_string(),
            "--cpus".into(),
            spec.cpus_per_worker.to_string(),
            "--name".into(),
            crate::spec::dns_label(&spec.name, 40),
            "--max-restarts".into(),
            spec.max_restarts.to_string(),
            "--timeout".into(),
            spec.timeout_s.to_string(),
            "--workdir".into(),
            spec.workdir.display().to_string(),
        ];
        if spec.gpus_per_worker > 0 {
            a.extend(["--gpus".into(), spec.gpus_per_worker.to_string()]);
        }
        a.extend(extra.iter().cloned());
        a.push("--".into());
        a.push(spec.exe.display().to_string());
        a.extend(spec.process_args(&spec.job_file.display().to_string()));
        a
    }

    /// `--dry-run`: a comment, then the driver's command line.
    pub fn render(&self, comment: &str, args: &[String]) -> String {
        let cmd = std::iter::once(python())
            .chain(args.iter().cloned())
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        format!("# {comment}\n{cmd}\n")
    }

    /// Runs the driver to the job's end, relaying its output (unless `quiet`) and
    /// stopping it at `time_limit`; returns the job id from its `job ID: …` line.
    pub fn run(
        &self,
        args: &[String],
        quiet: bool,
        time_limit: Option<Duration>,
    ) -> Result<String, ManagerError> {
        let program = python();
        let mut child = Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(if quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ManagerError::ToolMissing {
                    tool: program.clone(),
                    hint: format!(
                        "the driver runs under DLC_PYTHON (else python3), which needs {}",
                        self.needs
                    ),
                },
                _ => ManagerError::Io {
                    what: format!("starting {program} -m {}", self.module),
                    source: e,
                },
            })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let job_line = format!("{}: job ", self.prefix);
        let reader = std::thread::spawn(move || {
            let mut tail = VecDeque::with_capacity(TAIL);
            let mut id = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !quiet {
                    eprintln!("{line}");
                }
                if let Some(rest) = line.strip_prefix(&job_line) {
                    id = id.or_else(|| rest.split(':').next().map(str::to_string));
                }
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            (id, tail)
        });
        let started = Instant::now();
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => {
                    return Err(ManagerError::Io {
                        what: format!("waiting for {program} -m {}", self.module),
                        source: e,
                    })
                }
            }
            if time_limit.is_some_and(|limit| !timed_out && started.elapsed() > limit) {
                // The driver's SIGTERM ends it, and its workers go with it.
                timed_out = true;
                // SAFETY: kill(2) on our own child's pid has no memory effects.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (id, tail) = reader.join().unwrap_or_default();
        if timed_out {
            return Err(ManagerError::Invalid(format!(
                "the job reached its time limit ({}) and was stopped",
                crate::spec::slurm_time(time_limit.unwrap_or_default())
            )));
        }
        if !status.success() {
            return Err(self.failure(&program, status, tail.into_iter().collect()));
        }
        Ok(id.unwrap_or_else(|| self.prefix.to_string()))
    }

    /// Why the driver failed: its last own message and the lines it quoted after it
    /// (the failed rank's last lines); without one (the driver itself broke, e.g. a
    /// Python traceback), everything it said last.
    fn failure(
        &self,
        program: &str,
        status: std::process::ExitStatus,
        tail: Vec<String>,
    ) -> ManagerError {
        let own = format!("{}: ", self.prefix);
        match tail.iter().rposition(|l| l.starts_with(&own)) {
            Some(i) => ManagerError::Invalid(
                std::iter::once(tail[i].trim_start_matches(own.as_str()))
                    .chain(tail[i + 1..].iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            None => ManagerError::ToolFailed {
                command: format!("{program} -m {}", self.module),
                status: status.to_string(),
                stderr: tail.join("\n"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_is_the_drivers_last_word_and_the_lines_it_quoted() {
        use std::os::unix::process::ExitStatusExt;
        let d = Driver {
            module: "dlcluster.ray_launch",
            prefix: "dlc-ray",
            needs: "ray",
        };
        let st = std::process::ExitStatus::from_raw(1 << 8);
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = d.failure(
            "python3",
            st,
            lines(&[
                "dlc-ray: job j: 2 process(es) placed",
                "(Rank pid=1) [rank 0] error: …",
                "dlc-ray: rank 1 failed (exit code 3); the other processes were stopped:",
                "  bad data",
            ]),
        );
        assert_eq!(
            e.to_string(),
            "rank 1 failed (exit code 3); the other processes were stopped:\n  bad data"
        );
        let e = d.failure(
            "python3",
            st,
            lines(&["Traceback (most recent call last):", "X"]),
        );
        assert!(e.to_string().contains("Traceback"), "{e}");
    }
}
