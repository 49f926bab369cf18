//! The Ray resource manager: the job's processes as actors in a placement group of a
//! Ray cluster.
//!
//! `dlc launch --manager ray` runs a small Python driver in the foreground
//! (`python -m dlcluster.ray_launch`, shipped in `python/`): it connects to the
//! cluster, reserves one bundle per process (`{"CPU": c}`, plus `{"GPU": g}` for
//! workers; PACK on one node, SPREAD over several), starts an actor per bundle, and
//! each actor runs `dlc worker JOB …` (or `dlc exec … -- COMMAND`) with its place in
//! the job in `DLC_*` variables; rank 0's node hosts the rendezvous. A failed process
//! stops the others and is named; `--max-restarts` starts them all again from the
//! newest checkpoint (the driver's loop, the same `DLC_RESTART_*` contract as the
//! local manager and Slurm). The `dlc` binary, the job file and the run directory
//! must be at the same paths on every node (one machine, or a shared file system).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::manager::{JobStatus, ManagerError, ResourceManager};
use crate::spec::{shell_quote, LaunchSpec};

const FOREGROUND: &str = "Ray jobs run in the foreground of `dlc launch --manager ray` (its \
driver owns the actors): follow them there, and interrupt it to cancel";

/// Lines of the driver's stderr kept for the error of a failed job.
const TAIL: usize = 16;

/// Launches jobs on a Ray cluster.
#[derive(Debug, Clone, Default)]
pub struct Ray {
    /// The cluster (`HOST:6379`); None: `RAY_ADDRESS`, else the head on this machine.
    pub address: Option<String>,
    /// No relayed output.
    pub quiet: bool,
}

/// The Python that runs the driver: `DLC_PYTHON`, else `python3` (it needs `ray` and
/// the `dlcluster` package: `pip install ray ./python`).
fn python() -> String {
    std::env::var("DLC_PYTHON").unwrap_or_else(|_| "python3".into())
}

impl Ray {
    /// The driver's arguments after the Python interpreter.
    fn driver_args(&self, spec: &LaunchSpec) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-m".into(),
            "dlcluster.ray_launch".into(),
            "--processes".into(),
            spec.world().to_string(),
            "--workers".into(),
            spec.workers.to_string(),
            "--cpus".into(),
            spec.cpus_per_worker.to_string(),
            "--placement".into(),
            if spec.nodes > 1 { "SPREAD" } else { "PACK" }.into(),
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
        if let Some(addr) = &self.address {
            a.extend(["--address".into(), addr.clone()]);
        }
        a.push("--".into());
        a.push(spec.exe.display().to_string());
        a.extend(spec.process_args(&spec.job_file.display().to_string()));
        a
    }
}

/// Why the driver failed: its last `dlc-ray:` message and the lines it quoted after
/// it (the failed rank's last lines); without one (the driver itself broke, e.g. a
/// Python traceback), everything it said last.
fn failure(program: &str, status: std::process::ExitStatus, tail: Vec<String>) -> ManagerError {
    match tail.iter().rposition(|l| l.starts_with("dlc-ray: ")) {
        Some(i) => ManagerError::Invalid(
            std::iter::once(tail[i].trim_start_matches("dlc-ray: "))
                .chain(tail[i + 1..].iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        None => ManagerError::ToolFailed {
            command: format!("{program} -m dlcluster.ray_launch"),
            status: status.to_string(),
            stderr: tail.join("\n"),
        },
    }
}

impl ResourceManager for Ray {
    fn name(&self) -> &'static str {
        "ray"
    }

    fn foreground(&self) -> bool {
        true
    }

    fn render(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        let cmd = std::iter::once(python())
            .chain(self.driver_args(spec))
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(format!(
            "# a placement group of {} bundle(s) on the Ray cluster at {}; one actor per bundle \
             runs the process below with DLC_RANK, DLC_WORLD_SIZE, DLC_LOCAL_RANK, \
             DLC_COORDINATOR (rank 0's node), DLC_JOB_ID and a fresh DLC_JOB_TOKEN\n{cmd}\n",
            spec.world(),
            self.address
                .as_deref()
                .unwrap_or("RAY_ADDRESS (else this machine's head)"),
        ))
    }

    fn submit(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        let program = python();
        let args = self.driver_args(spec);
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(if self.quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ManagerError::ToolMissing {
                    tool: program.clone(),
                    hint: "the Ray manager runs its driver with DLC_PYTHON (else python3), \
                           which needs `pip install ray ./python`"
                        .into(),
                },
                _ => ManagerError::Io {
                    what: format!("starting {program} -m dlcluster.ray_launch"),
                    source: e,
                },
            })?;
        // Relay the driver's stderr (the ranks' lines come through it) and keep its
        // end for the error; the job id is on its `job …` line.
        let stderr = child.stderr.take().expect("stderr is piped");
        let quiet = self.quiet;
        let reader = std::thread::spawn(move || {
            let mut tail = VecDeque::with_capacity(TAIL);
            let mut id = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !quiet {
                    eprintln!("{line}");
                }
                if let Some(rest) = line.strip_prefix("dlc-ray: job ") {
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
                        what: "waiting for the Ray driver".into(),
                        source: e,
                    })
                }
            }
            if let Some(limit) = spec.time_limit {
                if !timed_out && started.elapsed() > limit {
                    // The driver's SIGTERM handler ends it; its actors (and their
                    // processes) go with it.
                    timed_out = true;
                    // SAFETY: kill(2) on our own child's pid has no memory effects.
                    unsafe {
                        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (id, tail) = reader.join().unwrap_or_default();
        if timed_out {
            return Err(ManagerError::Invalid(format!(
                "the job reached its time limit ({}) and was stopped",
                crate::spec::slurm_time(spec.time_limit.unwrap_or_default())
            )));
        }
        if !status.success() {
            return Err(failure(&program, status, tail.into_iter().collect()));
        }
        Ok(id.unwrap_or_else(|| format!("{}-ray", spec.name)))
    }

    fn status(&self, _id: &str) -> Result<JobStatus, ManagerError> {
        Err(ManagerError::Invalid(FOREGROUND.into()))
    }

    fn logs(&self, _id: &str) -> Result<String, ManagerError> {
        Err(ManagerError::Invalid(FOREGROUND.into()))
    }

    fn cancel(&self, _id: &str) -> Result<(), ManagerError> {
        Err(ManagerError::Invalid(FOREGROUND.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            name: "My Job".into(),
            exe: "/opt/dlc".into(),
            job_file: "/jobs/m.toml".into(),
            job_text: String::new(),
            worker_args: vec!["--threads".into(), "2".into()],
            workers: 3,
            servers: 1,
            nodes: 2,
            gpus_per_worker: 1,
            cpus_per_worker: 2,
            time_limit: None,
            partition: None,
            namespace: "default".into(),
            image: String::new(),
            workdir: "/work".into(),
            out: "/runs/r".into(),
            resume: false,
            port: None,
            timeout_s: 90,
            command: None,
            checkpoints: true,
            max_restarts: 2,
            min_workers: None,
            output_volume: None,
        }
    }

    #[test]
    fn a_failed_job_is_the_drivers_last_word_and_the_lines_it_quoted() {
        use std::os::unix::process::ExitStatusExt;
        let st = std::process::ExitStatus::from_raw(1 << 8);
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = failure(
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
        let e = failure(
            "python3",
            st,
            lines(&["Traceback (most recent call last):", "X"]),
        );
        assert!(e.to_string().contains("Traceback"), "{e}");
    }

    #[test]
    fn the_driver_gets_the_job_shape_and_every_process_its_command() {
        let r = Ray {
            address: Some("10.0.0.1:6379".into()),
            quiet: true,
        };
        let a = r.driver_args(&spec()).join(" ");
        assert!(
            a.starts_with(
                "-m dlcluster.ray_launch --processes 4 --workers 3 --cpus 2 --placement SPREAD"
            ),
            "{a}"
        );
        assert!(
            a.contains("--max-restarts 2 --timeout 90 --workdir /work --gpus 1 --address 10.0.0.1:6379 -- /opt/dlc worker /jobs/m.toml --threads 2 --out /runs/r"),
            "{a}"
        );
        let text = r.render(&spec()).unwrap();
        assert!(
            text.contains("4 bundle(s) on the Ray cluster at 10.0.0.1:6379"),
            "{text}"
        );
        assert!(r
            .status("x")
            .unwrap_err()
            .to_string()
            .contains("foreground"));
    }
}
