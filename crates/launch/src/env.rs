//! Who am I in this job? A worker's identity, read from whatever launcher started it.
//!
//! | launcher | rank / world | local rank | coordinator | job id |
//! |---|---|---|---|---|
//! | dlcluster (`dlc train --workers`, Kubernetes manifests) | `DLC_RANK` (or `JOB_COMPLETION_INDEX` + `DLC_RANK_OFFSET`) / `DLC_WORLD_SIZE` | `DLC_LOCAL_RANK` | `DLC_COORDINATOR` | `DLC_JOB_ID` |
//! | Slurm (`srun`) | `SLURM_PROCID` / `SLURM_NTASKS` | `SLURM_LOCALID` | first host of `SLURM_STEP_NODELIST` (else `SLURM_JOB_NODELIST`) | `slurm-$SLURM_JOB_ID` |
//! | Open MPI (`mpirun`) | `OMPI_COMM_WORLD_RANK` / `_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | `MASTER_ADDR`, or 127.0.0.1 when every rank is on this host | `mpi-$OMPI_MCA_ess_base_jobid` |
//! | MPICH / Intel MPI | `PMI_RANK` / `PMI_SIZE` | `MPI_LOCALRANKID` | `MASTER_ADDR`, or 127.0.0.1 | `mpi-<MASTER_ADDR:port>` |
//! | torchrun | `RANK` / `WORLD_SIZE` | `LOCAL_RANK` | `MASTER_ADDR` | `torchrun-$TORCHELASTIC_RUN_ID` |
//!
//! `DLC_COORDINATOR`, `DLC_JOB_ID`, `DLC_JOB_TOKEN` and `DLC_PORT` override what a
//! foreign launcher implies. The coordinator port, unless given, is
//! `DLC_PORT`, else `MASTER_PORT` (+1 when torchrun's agent already listens there),
//! else 29400 + (job id mod 1000) so that two jobs sharing a node do not collide.
//!
//! Under a foreign launcher rank 0 hosts the coordinator itself
//! ([`Identity::hosts_coordinator`]), listening on every interface at the
//! coordinator's port. Without `DLC_JOB_TOKEN` the job key is derived from the job
//! id and the job file's text: peers still prove they run the same job, but anyone
//! who can read the job file could join; [`Identity::notes`] says so.

/// Where the identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// dlcluster's own variables (local launcher, Kubernetes manifests).
    Dlc,
    /// A Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`).
    Kubernetes,
    /// Slurm's `srun`.
    Slurm,
    /// Open MPI's `mpirun`.
    OpenMpi,
    /// MPICH / Intel MPI (`PMI_*`).
    Pmi,
    /// PyTorch's torchrun.
    Torchrun,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Dlc => "dlcluster",
            Source::Kubernetes => "kubernetes",
            Source::Slurm => "slurm",
            Source::OpenMpi => "open-mpi",
            Source::Pmi => "pmi",
            Source::Torchrun => "torchrun",
        })
    }
}

/// A process's place in its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Global rank.
    pub rank: usize,
    /// Number of processes in the job (workers and parameter servers).
    pub world: usize,
    /// Rank among the processes on this host (for choosing a GPU).
    pub local_rank: usize,
    /// Coordinator address, `host:port`.
    pub coordinator: String,
    /// Job id (the same on every rank).
    pub job_id: String,
    /// Job token (secret shared by the ranks).
    pub token: String,
    /// Which launcher's variables were used.
    pub source: Source,
    /// This process must run the coordinator (rank 0 under a foreign launcher).
    pub hosts_coordinator: bool,
    /// CPUs the launcher gave this process (`SLURM_CPUS_PER_TASK`), if it said.
    pub cpus: Option<usize>,
    /// Things the user should know (e.g. a derived token).
    pub notes: Vec<String>,
}

/// Why no identity could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// No launcher's variables are present.
    #[error(
        "no launcher environment found: `dlc worker` is one process of a distributed job and \
         learns its rank from its launcher. Start it with `dlc train --workers N`, \
         `dlc launch --manager slurm|kubernetes`, srun, mpirun or torchrun, or set \
         DLC_RANK, DLC_WORLD_SIZE, DLC_COORDINATOR, DLC_JOB_ID and DLC_JOB_TOKEN"
    )]
    NoLauncher,
    /// A variable is missing or malformed.
    #[error("{0}")]
    Bad(String),
}

/// Reads the identity from this process's environment; `job_text` (the job file)
/// seeds the key when no `DLC_JOB_TOKEN` is set.
pub fn from_process_env(job_text: &str) -> Result<Identity, EnvError> {
    detect(&|k| std::env::var(k).ok(), job_text)
}

/// Reads the identity through `var` (an environment lookup; tests pass a map).
pub fn detect(var: &dyn Fn(&str) -> Option<String>, job_text: &str) -> Result<Identity, EnvError> {
    let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    let num = |k: &str| -> Result<Option<usize>, EnvError> {
        get(k)
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| EnvError::Bad(format!("{k}={v} is not a non-negative integer")))
            })
            .transpose()
    };
    let need = |k: &str, source: Source| -> Result<String, EnvError> {
        get(k).ok_or_else(|| {
            EnvError::Bad(format!("{k} is not set (reading a {source} environment)"))
        })
    };
    let need_num = |k: &str, source: Source| -> Result<usize, EnvError> {
        need(k, source)?;
        Ok(num(k)?.unwrap_or_default())
    };

    // Which launcher? The innermost one: `mpirun` or `torchrun` inside an sbatch
    // script inherit the batch step's `SLURM_PROCID` (0 everywhere), so their own
    // variables come first. When an inner launcher agrees with Slurm on rank and size
    // (`srun --mpi=pmi2` sets `PMI_*` too), Slurm's richer view (node lists) is used.
    let slurm = get("SLURM_PROCID").is_some() && get("SLURM_NTASKS").is_some();
    let agrees_with_slurm = |rank: &str, size: &str| {
        slurm && get(rank) == get("SLURM_PROCID") && get(size) == get("SLURM_NTASKS")
    };
    let torchrun_agent = get("TORCHELASTIC_RUN_ID").is_some() || get("GROUP_RANK").is_some();
    let source = if get("DLC_RANK").is_some() {
        Source::Dlc
    } else if get("JOB_COMPLETION_INDEX").is_some() && get("DLC_WORLD_SIZE").is_some() {
        Source::Kubernetes
    } else if get("OMPI_COMM_WORLD_RANK").is_some()
        && !agrees_with_slurm("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")
    {
        Source::OpenMpi
    } else if get("PMI_RANK").is_some()
        && get("PMI_SIZE").is_some()
        && !agrees_with_slurm("PMI_RANK", "PMI_SIZE")
    {
        Source::Pmi
    } else if torchrun_agent
        && get("RANK").is_some()
        && get("WORLD_SIZE").is_some()
        && !agrees_with_slurm("RANK", "WORLD_SIZE")
    {
        Source::Torchrun
    } else if slurm {
        Source::Slurm
    } else if get("RANK").is_some() && get("WORLD_SIZE").is_some() {
        Source::Torchrun
    } else {
        return Err(EnvError::NoLauncher);
    };

    // (rank, world, local rank) from the launcher's three variables.
    let ids = |rank: &str, world: &str, local: &str| -> Result<_, EnvError> {
        Ok((
            need_num(rank, source)?,
            need_num(world, source)?,
            num(local)?,
        ))
    };
    let (rank, world, local_rank) = match source {
        Source::Dlc => ids("DLC_RANK", "DLC_WORLD_SIZE", "DLC_LOCAL_RANK")?,
        Source::Kubernetes => (
            need_num("JOB_COMPLETION_INDEX", source)? + num("DLC_RANK_OFFSET")?.unwrap_or(0),
            need_num("DLC_WORLD_SIZE", source)?,
            Some(0),
        ),
        Source::Slurm => ids("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")?,
        Source::OpenMpi => ids(
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
        )?,
        Source::Pmi => ids("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID")?,
        Source::Torchrun => ids("RANK", "WORLD_SIZE", "LOCAL_RANK")?,
    };
    if world == 0 {
        return Err(EnvError::Bad(format!(
            "the {source} environment says the job has 0 processes"
        )));
    }
    if rank >= world {
        return Err(EnvError::Bad(format!(
            "the {source} environment gives rank {rank}, out of range for {world} process(es)"
        )));
    }
    let local_rank = local_rank.unwrap_or(rank);

    // The launcher's own notion of a job, for the job id and a default port.
    let launcher_job = match source {
        Source::Dlc | Source::Kubernetes => None,
        Source::Slurm => get("SLURM_JOB_ID").map(|j| format!("slurm-{j}")),
        Source::OpenMpi => get("OMPI_MCA_ess_base_jobid")
            .or_else(|| get("PMIX_NAMESPACE"))
            .map(|j| format!("mpi-{j}")),
        Source::Pmi => get("PMI_JOBID").map(|j| format!("mpi-{j}")),
        Source::Torchrun => get("TORCHELASTIC_RUN_ID").map(|j| format!("torchrun-{j}")),
    };
    let port_of = |addr: &str| -> Result<u16, EnvError> {
        addr.rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| {
                EnvError::Bad(format!(
                    "coordinator address `{addr}` has no port (want host:port)"
                ))
            })
    };
    let explicit_port = get("DLC_PORT")
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| EnvError::Bad(format!("DLC_PORT={p} is not a port number")))
        })
        .transpose()?;
    let default_port = |id: Option<&str>| -> u16 {
        let h = id.map_or(0, |s| {
            s.bytes().fold(0u64, |acc, b| {
                if b.is_ascii_digit() {
                    (acc * 10 + u64::from(b - b'0')) % 1000
                } else {
                    acc
                }
            })
        });
        29400 + h as u16
    };

    let coordinator = match get("DLC_COORDINATOR") {
        Some(c) => {
            port_of(&c)?;
            c
        }
        None => {
            let master_port = || -> Result<Option<u16>, EnvError> {
                get("MASTER_PORT")
                    .map(|p| {
                        p.trim().parse::<u16>().map_err(|_| {
                            EnvError::Bad(format!("MASTER_PORT={p} is not a port number"))
                        })
                    })
                    .transpose()
            };
            let (host, port) = match source {
                Source::Dlc | Source::Kubernetes => {
                    return Err(EnvError::Bad("DLC_COORDINATOR is not set".into()))
                }
                Source::Slurm => {
                    let list = get("SLURM_STEP_NODELIST")
                        .or_else(|| get("SLURM_JOB_NODELIST"))
                        .ok_or_else(|| {
                            EnvError::Bad(
                                "SLURM_JOB_NODELIST is not set (reading a slurm environment)"
                                    .into(),
                            )
                        })?;
                    let host =
                        crate::hostlist::first(&list).map_err(|e| EnvError::Bad(e.to_string()))?;
                    (
                        host,
                        explicit_port.unwrap_or_else(|| default_port(launcher_job.as_deref())),
                    )
                }
                Source::OpenMpi | Source::Pmi => {
                    let all_local = match source {
                        Source::OpenMpi => num("OMPI_COMM_WORLD_LOCAL_SIZE")? == Some(world),
                        _ => num("MPI_LOCALNRANKS")? == Some(world),
                    };
                    let host = match get("MASTER_ADDR") {
                        Some(h) => h,
                        None if all_local => "127.0.0.1".to_string(),
                        None => {
                            return Err(EnvError::Bad(format!(
                                "the {world} MPI ranks span several hosts: tell them where rank 0 runs, \
                                 e.g. `mpirun -x MASTER_ADDR=<rank 0's host> …` (or -x DLC_COORDINATOR=host:port)"
                            )))
                        }
                    };
                    let port = match explicit_port {
                        Some(p) => p,
                        None => {
                            master_port()?.unwrap_or_else(|| default_port(launcher_job.as_deref()))
                        }
                    };
                    (host, port)
                }
                Source::Torchrun => {
                    let host = need("MASTER_ADDR", source)?;
                    let port = match explicit_port {
                        Some(p) => p,
                        None => {
                            let p = master_port()?.ok_or_else(|| {
                                EnvError::Bad(
                                    "MASTER_PORT is not set (reading a torchrun environment)"
                                        .into(),
                                )
                            })?;
                            // torchrun's agent may already serve its store on MASTER_PORT.
                            if get("TORCHELASTIC_USE_AGENT_STORE")
                                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
                            {
                                p.checked_add(1).ok_or_else(|| {
                                    EnvError::Bad("MASTER_PORT is 65535; set DLC_PORT".into())
                                })?
                            } else {
                                p
                            }
                        }
                    };
                    (host, port)
                }
            };
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
    };

    let job_id = match get("DLC_JOB_ID").or(launcher_job) {
        Some(j) => j,
        None if source == Source::Dlc || source == Source::Kubernetes => {
            need("DLC_JOB_ID", source)?
        }
        None => format!("{source}-{coordinator}"),
    };
    let mut notes = Vec::new();
    let token = match get("DLC_JOB_TOKEN") {
        Some(t) => t,
        None if source == Source::Dlc || source == Source::Kubernetes => {
            need("DLC_JOB_TOKEN", source)?
        }
        None => {
            if rank == 0 {
                notes.push(
                    "DLC_JOB_TOKEN is not set: the job key is derived from the job id and the job file, \
                     so anyone who can read the job file could join this job; export a random \
                     DLC_JOB_TOKEN to every rank to prevent that"
                        .to_string(),
                );
            }
            format!("dlc-derived-key\0{job_id}\0{job_text}")
        }
    };
    let hosts_coordinator = rank == 0
        && (!matches!(source, Source::Dlc | Source::Kubernetes)
            || get("DLC_HOST_COORDINATOR").is_some_and(|v| v == "1"));
    let cpus = match source {
        Source::Slurm => num("SLURM_CPUS_PER_TASK")?,
        _ => None,
    };
    Ok(Identity {
        rank,
        world,
        local_rank,
        coordinator,
        job_id,
        token,
        source,
        hosts_coordinator,
        cpus,
        notes,
    })
}

impl Identity {
    /// Address rank 0's coordinator listens on: every interface, the coordinator's port.
    pub fn bind_addr(&self) -> String {
        let port = self.coordinator.rsplit_once(':').map_or("0", |(_, p)| p);
        format!("0.0.0.0:{port}")
    }

    /// The job key both ends of every link prove knowledge of.
    pub fn key(&self) -> dlc_comm::auth::JobKey {
        dlc_comm::auth::JobKey::new(self.job_id.clone(), &self.token)
    }

    /// Starts the coordinator when this process must host it (see
    /// [`Identity::hosts_coordinator`]); keep it until training ends, then
    /// `shutdown` it so that it waits for every rank to leave.
    pub fn host_coordinator(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Option<dlc_comm::Coordinator>, dlc_comm::CommError> {
        if !self.hosts_coordinator {
            return Ok(None);
        }
        let coord =
            dlc_comm::Coordinator::start(&self.bind_addr(), self.key(), self.world, timeout)?;
        // A silent coordinator is then this rank's failure, and named so.
        coord.hosted_by(self.rank);
        Ok(Some(coord))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn id(vars: &[(&str, &str)]) -> Result<Identity, EnvError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        detect(&|k| m.get(k).cloned(), "job text")
    }

    #[test]
    fn dlc_variables() {
        let i = id(&[
            ("DLC_RANK", "1"),
            ("DLC_WORLD_SIZE", "3"),
            ("DLC_COORDINATOR", "127.0.0.1:4000"),
            ("DLC_JOB_ID", "j"),
            ("DLC_JOB_TOKEN", "t"),
        ])
        .unwrap();
        assert_eq!(
            (i.rank, i.world, i.local_rank, i.source),
            (1, 3, 1, Source::Dlc)
        );
        assert_eq!(
            (i.coordinator.as_str(), i.job_id.as_str(), i.token.as_str()),
            ("127.0.0.1:4000", "j", "t")
        );
        assert!(!i.hosts_coordinator && i.notes.is_empty());
        let e = id(&[("DLC_RANK", "0"), ("DLC_WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("DLC_COORDINATOR"), "{e}");
        let e = id(&[("DLC_RANK", "x")]).unwrap_err();
        assert!(e.to_string().contains("DLC_RANK=x"), "{e}");
    }

    #[test]
    fn slurm_variables() {
        let i = id(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_ID", "1234"),
            ("SLURM_JOB_NODELIST", "node[07-08]"),
            ("SLURM_CPUS_PER_TASK", "2"),
            ("DLC_JOB_TOKEN", "secret"),
        ])
        .unwrap();
        assert_eq!((i.rank, i.world, i.source), (0, 4, Source::Slurm));
        assert_eq!(i.coordinator, "node07:29634");
        assert_eq!(i.job_id, "slurm-1234");
        assert_eq!(i.token, "secret");
        assert_eq!(i.cpus, Some(2));
        assert!(i.hosts_coordinator);
        assert_eq!(i.bind_addr(), "0.0.0.0:29634");
        let i = id(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_ID", "1234"),
            ("SLURM_JOB_NODELIST", "node[07-08]"),
            ("SLURM_STEP_NODELIST", "node08"),
            ("DLC_PORT", "5000"),
        ])
        .unwrap();
        assert_eq!((i.rank, i.local_rank), (3, 1));
        assert_eq!(i.coordinator, "node08:5000");
        assert!(!i.hosts_coordinator);
        assert!(i.token.starts_with("dlc-derived-key") && i.notes.is_empty());
        let e = id(&[
            ("SLURM_PROCID", "4"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_JOB_NODELIST", "n1"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = id(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_NODELIST", "n[1-"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("host list"), "{e}");
    }

    #[test]
    fn open_mpi_variables() {
        let base = [
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("OMPI_MCA_ess_base_jobid", "2122645505"),
        ];
        let i = id(&base).unwrap();
        assert_eq!((i.rank, i.world, i.source), (0, 2, Source::OpenMpi));
        assert_eq!(i.coordinator, "127.0.0.1:29905");
        assert_eq!(i.job_id, "mpi-2122645505");
        assert!(i.hosts_coordinator);
        assert_eq!(i.notes.len(), 1, "a derived key is announced");
        // Ranks on several hosts need to be told where rank 0 is.
        let mut spread = base.to_vec();
        spread[3] = ("OMPI_COMM_WORLD_LOCAL_SIZE", "1");
        let e = id(&spread).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR"), "{e}");
        spread.push(("MASTER_ADDR", "head"));
        spread.push(("MASTER_PORT", "6000"));
        assert_eq!(id(&spread).unwrap().coordinator, "head:6000");
    }

    #[test]
    fn torchrun_variables() {
        let vars = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "abc"),
        ];
        let i = id(&vars).unwrap();
        assert_eq!(
            (i.rank, i.world, i.local_rank, i.source),
            (1, 2, 1, Source::Torchrun)
        );
        assert_eq!(i.coordinator, "10.0.0.1:29500");
        assert_eq!(i.job_id, "torchrun-abc");
        let mut agent = vars.to_vec();
        agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert_eq!(id(&agent).unwrap().coordinator, "10.0.0.1:29501");
        let e = id(&vars[..2]).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR"), "{e}");
    }

    #[test]
    fn innermost_launcher_wins() {
        // The batch step of an sbatch script: every mpirun/torchrun child inherits it.
        let batch = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_JOB_ID", "77"),
            ("SLURM_JOB_NODELIST", "node[1-2]"),
        ];
        let mut mpi = batch.to_vec();
        mpi.extend([
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "4"),
        ]);
        let i = id(&mpi).unwrap();
        assert_eq!((i.rank, i.source), (3, Source::OpenMpi));
        let mut torch = batch.to_vec();
        torch.extend([
            ("RANK", "2"),
            ("WORLD_SIZE", "8"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "r"),
        ]);
        let i = id(&torch).unwrap();
        assert_eq!((i.rank, i.world, i.source), (2, 8, Source::Torchrun));
        // srun --mpi=pmi2 sets PMI_* equal to Slurm's: Slurm (with its node list) wins.
        let mut pmi2 = batch.to_vec();
        pmi2.extend([("PMI_RANK", "0"), ("PMI_SIZE", "4")]);
        let i = id(&pmi2).unwrap();
        assert_eq!(
            (i.source, i.coordinator.as_str()),
            (Source::Slurm, "node1:29477")
        );
        // A bare RANK (no torchrun agent) does not override Slurm.
        let mut bare = batch.to_vec();
        bare.extend([("RANK", "1"), ("WORLD_SIZE", "4")]);
        assert_eq!(id(&bare).unwrap().source, Source::Slurm);
    }

    #[test]
    fn kubernetes_indexed_job() {
        let i = id(&[
            ("JOB_COMPLETION_INDEX", "1"),
            ("DLC_RANK_OFFSET", "2"),
            ("DLC_WORLD_SIZE", "4"),
            ("DLC_COORDINATOR", "job-0.job:29400"),
            ("DLC_JOB_ID", "job"),
            ("DLC_JOB_TOKEN", "t"),
            ("DLC_HOST_COORDINATOR", "1"),
        ])
        .unwrap();
        assert_eq!((i.rank, i.source), (3, Source::Kubernetes));
        assert!(!i.hosts_coordinator, "only rank 0 hosts");
        let i = id(&[
            ("JOB_COMPLETION_INDEX", "0"),
            ("DLC_WORLD_SIZE", "4"),
            ("DLC_COORDINATOR", "job-0.job:29400"),
            ("DLC_JOB_ID", "job"),
            ("DLC_JOB_TOKEN", "t"),
            ("DLC_HOST_COORDINATOR", "1"),
        ])
        .unwrap();
        assert!(i.hosts_coordinator);
    }

    #[test]
    fn nothing_set() {
        assert_eq!(id(&[]).unwrap_err(), EnvError::NoLauncher);
    }
}
