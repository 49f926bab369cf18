//! A job file with a `[command]` table: the user's own program, launched as
//! reproducibly as a native job (argv, framework, environment, working directory and
//! restarts kept in the file).

mod common;
use common::*;

#[test]
fn command_job_runs_in_its_directory_with_its_env_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("project");
    std::fs::create_dir(&work).unwrap();
    // Rank 1 fails on the first attempt, then every rank records what it saw.
    std::fs::write(
        work.join("step.sh"),
        "if [ \"$DLC_RANK\" = 1 ] && [ \"$DLC_RESTART_COUNT\" = 0 ]; then exit 3; fi\n\
         echo \"rank=$DLC_RANK world=$DLC_WORLD_SIZE greeting=$GREETING dir=$(pwd) \
         restart=$DLC_RESTART_COUNT torch_rank=$RANK\" > \"$DLC_RUN_DIR/rank$DLC_RANK.txt\"\n",
    )
    .unwrap();
    let job = job(
        dir.path(),
        "cmd.toml",
        "name = \"cmd\"\n[command]\nargv = [\"sh\", \"step.sh\"]\nframework = \"torch\"\n\
         env = { GREETING = \"hello world\" }\nworkdir = \"project\"\nmax_restarts = 1\n\
         [distributed]\nworkers = 2\n",
    );
    let out = dir.path().join("run");
    let res = dlc()
        .current_dir("/")
        .args([
            "launch",
            job.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    assert!(err.contains("restart 1 of 1"), "{err}");
    for r in 0..2 {
        let seen = std::fs::read_to_string(out.join(format!("rank{r}.txt"))).unwrap();
        let want = format!(
            "rank={r} world=2 greeting=hello world dir={} restart=1 torch_rank={r}",
            work.canonicalize().unwrap().display()
        );
        assert_eq!(seen.trim(), want);
    }
}

#[test]
fn command_jobs_are_launched_not_trained_and_not_mixed_with_a_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "cmd.toml", "[command]\nargv = [\"true\"]\n");
    let p = job.to_str().unwrap();
    let e = fails(&["train", p]);
    assert!(e.contains("dlc launch"), "{e}");
    let e = fails(&["launch", p, "--", "python", "x.py"]);
    assert!(e.contains("not both") && e.contains("[command]"), "{e}");
    let e = fails(&["plan", p]);
    assert!(e.contains("dlc launch"), "{e}");
}

#[test]
fn slurm_renders_a_command_job_with_its_directory_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "cmd.toml",
        "[command]\nargv = [\"python\", \"train.py\", \"--lr\", \"0.1\"]\nframework = \"jax\"\n\
         env = { XLA_FLAGS = \"--xla_cpu_multi_thread_eigen=false\" }\nmax_restarts = 2\n\
         [distributed]\nworkers = 4\n[resources]\nmanager = \"slurm\"\nnodes = 2\n",
    );
    let script = ok(&["launch", job.to_str().unwrap(), "--dry-run"]);
    let d = dir.path().display().to_string();
    assert!(
        script.contains(&format!("#SBATCH --chdir={d}\n")),
        "{script}"
    );
    assert!(script.contains("--framework jax"), "{script}");
    assert!(
        script.contains("--env XLA_FLAGS=--xla_cpu_multi_thread_eigen=false"),
        "{script}"
    );
    assert!(script.contains("python train.py --lr 0.1"), "{script}");
    assert!(script.contains("DLC_RESTART_COUNT"), "{script}");
    // The command line overrides the file.
    let script = ok(&[
        "launch",
        job.to_str().unwrap(),
        "--dry-run",
        "--framework",
        "torch",
    ]);
    assert!(script.contains("--framework torch"), "{script}");
}
