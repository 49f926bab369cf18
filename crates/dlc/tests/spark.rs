//! `dlc launch --manager spark` against a real Spark: PySpark from `DLC_PYTHON` with
//! a Java runtime, master `local-cluster[2,1,1024]` (two separate executor JVMs, one
//! core each). Skips without them, unless `DLC_REQUIRE_LAUNCHERS=1` (CI), where it
//! fails.

mod common;
use common::*;

use std::process::Output;
use std::time::{Duration, Instant};

const MASTER: &str = "local-cluster[2,1,1024]";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_barrier_stage_trains_like_one_worker_names_a_killed_rank_and_retries_from_a_checkpoint() {
    if !have(&python(), &["-c", "import pyspark"], "PySpark (DLC_PYTHON)")
        || !have(
            "java",
            &["-version"],
            "a Java runtime (openjdk-17-jre-headless)",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Two tasks of one barrier stage on two executors; a killed rank; the stage run
    // again from the checkpoint.
    let text = engine_trains_names_and_restarts("spark", MASTER, dir.path());

    // More tasks than the cluster has slots: Spark's refusal within the join timeout.
    let short = job(
        dir.path(),
        "short.toml",
        &format!("{text}[distributed]\njoin_timeout_s = 5\n"),
    );
    let started = Instant::now();
    let o = launch_on(
        "spark",
        MASTER,
        &[short.to_str().unwrap(), "--workers", "3"],
        &[],
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("Spark could not run the barrier stage of 3 task(s) × 1 CPU(s)")
            && err.contains("more slots than the total number of slots"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(60), "{err}");

    // Your own PyTorch script, two processes as the barrier stage's tasks.
    if have(&python(), &["-c", "import torch"], "PyTorch (DLC_PYTHON)") {
        torch_ddp_on("spark", MASTER, &dir.path().join("torch"));
    }
}
