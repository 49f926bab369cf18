//! Resource managers: how the processes of a job are scheduled and come up.
//!
//! Every process of a job runs `dlc worker JOB …`; what differs between resource
//! managers is who starts it and how it learns its place:
//!
//! * [`local`]: child processes on this machine (the embedded default), identity in
//!   `DLC_*` variables, a coordinator in the launcher;
//! * [`slurm`]: an sbatch script whose `srun` step starts every process;
//! * [`kubernetes`]: Indexed Jobs, a headless Service, a Secret and a ConfigMap;
//! * [`ray`]: actors in a placement group of a Ray cluster, and [`spark`]: the tasks
//!   of one barrier-mode stage, each started by a Python driver of ours in the
//!   foreground ([`driver`]);
//! * [`yarn`]: a YARN native-services spec to launch with `yarn app -launch`;
//! * foreign launchers (`srun`, `mpirun`, `torchrun`): [`env`] reads their variables.
//!
//! A job may also be the user's own command (`dlc launch -- python train.py`): every
//! manager then starts `dlc exec -- COMMAND`, whose [`agent`] joins the rendezvous,
//! waits for all tasks, gives the command its framework's environment and reports its
//! end to every rank.
//!
//! [`ResourceManager`] is the seam `dlc launch`, `dlc status`, `dlc logs` and
//! `dlc cancel` go through; [`LaunchSpec`] is what they launch.

pub mod agent;
mod driver;
pub mod env;
pub mod hostlist;
pub mod kubernetes;
pub mod local;
mod manager;
pub mod ray;
pub mod record;
pub mod slurm;
pub mod spark;
pub mod spec;
pub mod yarn;

pub use manager::{JobStatus, ManagerError, ResourceManager};
pub use spec::{ForeignCommand, LaunchSpec, OutputVolume};

/// Exit status of a worker that SIGUSR1 stopped after a checkpoint (`EX_TEMPFAIL`):
/// a time limit is near, and a Slurm job requeues itself to continue.
pub const EXIT_REQUEUE: i32 = 75;

/// Exit status of a worker that SIGTERM stopped after a checkpoint (128 + SIGTERM):
/// it did not finish; `--resume` continues it.
pub const EXIT_STOPPED: i32 = 143;

/// Asks the kernel to kill this process when its parent dies, so that workers of a
/// launcher that was itself killed do not linger. Linux only; a no-op elsewhere.
pub fn die_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}

/// Where a manager submits to, beyond its kind.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Kubernetes namespace.
    pub namespace: Option<String>,
    /// Ray cluster address, or Spark master URL.
    pub address: Option<String>,
    /// Foreground managers (local, Ray) relay no output.
    pub quiet: bool,
}

/// The resource manager of `kind`, submitting to `target`; an address is refused
/// where the manager has no cluster to address.
pub fn manager(
    kind: dlc_job::Manager,
    target: Target,
) -> Result<Box<dyn ResourceManager>, ManagerError> {
    let Target {
        namespace,
        address,
        quiet,
    } = target;
    let engine = matches!(kind, dlc_job::Manager::Ray | dlc_job::Manager::Spark);
    if address.is_some() && !engine {
        return Err(ManagerError::Invalid(format!(
            "--address/--master ([resources] address) names a Ray cluster or a Spark master; \
             this job runs under {kind}"
        )));
    }
    Ok(match kind {
        dlc_job::Manager::Local => Box::new(local::Local { quiet }),
        dlc_job::Manager::Slurm => Box::new(slurm::Slurm),
        dlc_job::Manager::Kubernetes => Box::new(kubernetes::Kubernetes { namespace }),
        dlc_job::Manager::Ray => Box::new(ray::Ray { address, quiet }),
        dlc_job::Manager::Spark => Box::new(spark::Spark {
            master: address,
            quiet,
        }),
        dlc_job::Manager::Yarn => Box::new(yarn::Yarn),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlc_job::Manager;

    fn manager_of(kind: Manager) -> Box<dyn ResourceManager> {
        manager(kind, Target::default()).expect("no address, no refusal")
    }

    #[test]
    fn each_manager_refuses_what_it_cannot_do_and_allows_the_rest() {
        let mut spec = ray::tests::spec();
        spec.max_restarts = 2;
        for kind in [
            Manager::Slurm,
            Manager::Kubernetes,
            Manager::Ray,
            Manager::Spark,
        ] {
            manager_of(kind)
                .check(&spec)
                .expect("2 nodes with restarts");
        }
        let e = manager_of(Manager::Local).check(&spec).unwrap_err();
        assert!(e.to_string().contains("this machine only"), "{e}");
        let e = manager_of(Manager::Yarn).check(&spec).unwrap_err();
        assert!(e.to_string().contains("not rendered for YARN"), "{e}");

        spec.nodes = 1;
        spec.min_workers = Some(2);
        for kind in [Manager::Local, Manager::Slurm] {
            manager_of(kind).check(&spec).expect("shrinks");
        }
        for kind in [
            Manager::Kubernetes,
            Manager::Ray,
            Manager::Spark,
            Manager::Yarn,
        ] {
            let e = manager_of(kind).check(&spec).unwrap_err().to_string();
            assert!(e.contains("--min-workers"), "{kind}: {e}");
        }
    }

    #[test]
    fn only_cluster_engines_take_an_address_and_only_unscheduled_processes_get_threads() {
        let addressed = |kind| {
            manager(
                kind,
                Target {
                    address: Some("ray://head:10001".into()),
                    ..Default::default()
                },
            )
        };
        for kind in [Manager::Ray, Manager::Spark] {
            assert!(addressed(kind).is_ok(), "{kind}");
        }
        for kind in [
            Manager::Local,
            Manager::Slurm,
            Manager::Kubernetes,
            Manager::Yarn,
        ] {
            let e = addressed(kind).err().expect("refused").to_string();
            assert!(e.contains(&format!("runs under {kind}")), "{e}");
        }
        let threaded: Vec<_> = [
            Manager::Local,
            Manager::Slurm,
            Manager::Kubernetes,
            Manager::Ray,
            Manager::Spark,
            Manager::Yarn,
        ]
        .into_iter()
        .filter(|&k| manager_of(k).assigns_threads())
        .collect();
        assert_eq!(
            threaded,
            [Manager::Local, Manager::Ray, Manager::Spark, Manager::Yarn]
        );
    }
}
