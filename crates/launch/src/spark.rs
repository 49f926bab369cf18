//! The Spark resource manager: the job's processes as the tasks of one barrier-mode
//! stage.
//!
//! `dlc launch --manager spark --master URL` runs a Python driver in the foreground
//! (`python -m dlcluster.spark_launch`, PySpark): one barrier stage of N tasks, which
//! Spark starts together or not at all (its gang scheduling); each task runs `dlc
//! worker JOB …` (or `dlc exec … -- COMMAND`) with its rank from the task's partition,
//! rank 0's executor host as the rendezvous and its GPUs from Spark's resource
//! scheduling. A failed process fails the stage and Spark stops the other tasks;
//! `--max-restarts K` lets Spark run the whole stage again up to K times, each time
//! from the newest checkpoint. The `dlc` binary, the job file and the run directory
//! must be at the same paths on every node.

use crate::driver::Driver;
use crate::manager::{refuse_shrinking, ManagerError, ResourceManager};
use crate::spec::LaunchSpec;

const DRIVER: Driver = Driver {
    module: "dlcluster.spark_launch",
    prefix: "dlc-spark",
    needs: "`pip install pyspark ./python` and a Java runtime",
};

/// Launches jobs on a Spark cluster.
#[derive(Debug, Clone, Default)]
pub struct Spark {
    /// The master URL (`spark://host:7077`, `local-cluster[2,1,1024]`, …); None:
    /// `MASTER`, else `local[N]` on this machine.
    pub master: Option<String>,
    /// No relayed output.
    pub quiet: bool,
}

impl Spark {
    fn driver_args(&self, spec: &LaunchSpec) -> Vec<String> {
        let extra: Vec<String> = match &self.master {
            Some(m) => vec!["--master".into(), m.clone()],
            None => Vec::new(),
        };
        DRIVER.args(spec, &extra)
    }
}

impl ResourceManager for Spark {
    fn name(&self) -> &'static str {
        "spark"
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
            "one barrier stage of {} task(s) on the Spark master {}; each task runs the \
             process below with DLC_RANK (its partition), DLC_COORDINATOR (rank 0's \
             executor), DLC_JOB_ID and a fresh DLC_JOB_TOKEN",
            spec.world(),
            self.master
                .as_deref()
                .unwrap_or("MASTER (else local[N] on this machine)"),
        );
        Ok(DRIVER.render(&comment, &self.driver_args(spec)))
    }

    fn submit(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        DRIVER.run(&self.driver_args(spec), self.quiet, spec.time_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_gets_the_master_and_every_process_its_command() {
        let s = Spark {
            master: Some("local-cluster[2,1,1024]".into()),
            quiet: true,
        };
        let spec = crate::ray::tests::spec();
        let a = s.driver_args(&spec).join(" ");
        assert!(
            a.starts_with("-m dlcluster.spark_launch --processes 4 --workers 3 --cpus 2"),
            "{a}"
        );
        assert!(
            a.contains("--gpus 1 --master local-cluster[2,1,1024] -- /opt/dlc worker /jobs/m.toml"),
            "{a}"
        );
        let text = s.render(&spec).unwrap();
        assert!(text.contains("'local-cluster[2,1,1024]'"), "{text}");
        assert!(text.contains("barrier stage of 4 task(s)"), "{text}");
    }
}
