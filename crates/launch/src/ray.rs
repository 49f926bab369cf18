//! The Ray resource manager: the job's processes as actors in a placement group of a
//! Ray cluster.
//!
//! `dlc launch --manager ray` runs a Python driver in the foreground
//! (`python -m dlcluster.ray_launch`): it connects to the cluster, reserves one bundle
//! per process (`{"CPU": c}`, plus `{"GPU": g}` for workers; PACK on one node, SPREAD
//! over several), starts an actor per bundle, and each actor runs `dlc worker JOB …`
//! (or `dlc exec … -- COMMAND`) with its place in the job in `DLC_*` variables; rank
//! 0's node hosts the rendezvous. A failed process stops the others and is named;
//! `--max-restarts` starts them all again from the newest checkpoint (the driver's
//! loop, the same `DLC_RESTART_*` contract as the local manager and Slurm). The `dlc`
//! binary, the job file and the run directory must be at the same paths on every
//! node (one machine, or a shared file system).

use crate::driver::Driver;
use crate::manager::{refuse_shrinking, ManagerError, ResourceManager};
use crate::spec::LaunchSpec;

const DRIVER: Driver = Driver {
    module: "dlcluster.ray_launch",
    prefix: "dlc-ray",
    needs: "`pip install ray ./python`",
};

/// Launches jobs on a Ray cluster.
#[derive(Debug, Clone, Default)]
pub struct Ray {
    /// The cluster (`HOST:6379`); None: `RAY_ADDRESS`, else the head on this machine.
    pub address: Option<String>,
    /// No relayed output.
    pub quiet: bool,
}

impl Ray {
    fn driver_args(&self, spec: &LaunchSpec) -> Vec<String> {
        let mut extra = vec![
            "--placement".to_string(),
            if spec.nodes > 1 { "SPREAD" } else { "PACK" }.into(),
        ];
        if let Some(addr) = &self.address {
            extra.extend(["--address".into(), addr.clone()]);
        }
        DRIVER.args(spec, &extra)
    }
}

impl ResourceManager for Ray {
    fn name(&self) -> &'static str {
        "ray"
    }

    fn foreground(&self) -> bool {
        true
    }

    fn assigns_threads(&self) -> bool {
        true
    }

    fn check(&self, spec: &LaunchSpec) -> Result<(), ManagerError> {
        refuse_shrinking(
            self.name(),
            spec,
            " (--max-restarts restarts every process)",
        )
    }

    fn render(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        let comment = format!(
            "a placement group of {} bundle(s) on the Ray cluster at {}; one actor per bundle \
             runs the process below with DLC_RANK, DLC_WORLD_SIZE, DLC_LOCAL_RANK, \
             DLC_COORDINATOR (rank 0's node), DLC_JOB_ID and a fresh DLC_JOB_TOKEN",
            spec.world(),
            self.address
                .as_deref()
                .unwrap_or("RAY_ADDRESS (else this machine's head)"),
        );
        Ok(DRIVER.render(&comment, &self.driver_args(spec)))
    }

    fn submit(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        DRIVER.run(&self.driver_args(spec), self.quiet, spec.time_limit)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A job of 3 workers and a server on 2 nodes, with a GPU per worker.
    pub(crate) fn spec() -> LaunchSpec {
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
    fn the_driver_gets_the_job_shape_and_every_process_its_command() {
        let r = Ray {
            address: Some("10.0.0.1:6379".into()),
            quiet: true,
        };
        let a = r.driver_args(&spec()).join(" ");
        assert!(
            a.starts_with("-m dlcluster.ray_launch --processes 4 --workers 3 --cpus 2"),
            "{a}"
        );
        assert!(
            a.contains("--max-restarts 2 --timeout 90 --workdir /work --gpus 1 --placement SPREAD --address 10.0.0.1:6379 -- /opt/dlc worker /jobs/m.toml --threads 2 --out /runs/r"),
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
