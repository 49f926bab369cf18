//! Multi-node paths across several hosts on this machine: `scripts/netns-cluster.sh`
//! makes each host a network namespace with its own address on a shared bridge, so
//! the ranks of one job run on different hosts, reach each other through routable
//! addresses (never loopback) and lose each other when a host's link goes down.
//!
//! Needs root and iproute2; skips without them unless `DLC_REQUIRE_LAUNCHERS=1` (CI).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests share one cluster name: one at a time.
static CLUSTER: Mutex<()> = Mutex::new(());

/// Object names of the test cluster (`dlct-h0`, `dlct-br`, …), apart from a user's
/// `dlc-*` cluster.
const PREFIX: &str = "dlct";

fn netns_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/netns-cluster.sh")
}

/// `netns-cluster.sh ARGS…` for the test cluster.
fn netns(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(netns_script())
        .args(args)
        .env("DLC_NETNS_PREFIX", PREFIX)
        .output()
        .expect("bash runs")
}

/// A cluster of namespace hosts, removed when dropped (also when a test fails).
struct Cluster {
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// `up HOSTS --rate RATE`; `None` (skip) without root, unless required.
    fn up(hosts: usize, rate: &str) -> Option<Cluster> {
        let lock = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if !root || !have("ip", &["-V"], "iproute2") {
            assert!(
                !required(),
                "the namespace cluster needs root (DLC_REQUIRE_LAUNCHERS=1)"
            );
            eprintln!("skipping: the namespace cluster needs root and iproute2");
            return None;
        }
        let out = netns(&["up", &hosts.to_string(), "--rate", rate]);
        assert!(
            out.status.success(),
            "netns-cluster up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Cluster { _lock: lock })
    }

    fn host(i: usize) -> String {
        format!("{PREFIX}-h{i}")
    }

    /// `ip netns exec HOST dlc ARGS…`, with `env`.
    fn dlc_on(host: usize, args: &[&str], env: &[(&str, String)]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &Self::host(host)])
            .arg(env!("CARGO_BIN_EXE_dlc"))
            .args(args)
            .env("DLC_STATE_DIR", state_dir());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = netns(&["down"]);
        if !out.status.success() {
            eprintln!(
                "netns-cluster down failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Names of this machine's network objects (namespaces, links) with the test prefix.
fn leftovers() -> Vec<String> {
    let text = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut found: Vec<String> = text(&["netns", "list"])
        .lines()
        .chain(text(&["-o", "link", "show"]).lines())
        .flat_map(|l| l.split([' ', ':', '@']))
        .filter(|w| w.starts_with(&format!("{PREFIX}-")))
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    for i in 0..8 {
        let etc = format!("/etc/netns/{}", Cluster::host(i));
        if Path::new(&etc).exists() {
            found.push(etc);
        }
    }
    if Path::new(&format!("/run/dlc-netns/{PREFIX}")).exists() {
        found.push("state file".into());
    }
    found
}

/// The run's last `world` line: every rank's address in rank order. Asserts that
/// rank r listened on host r / per_host's address (10.213.0.(host + 1)), never
/// loopback.
fn assert_ranks_on_hosts(run: &Path, world: usize, per_host: usize) {
    let lines = metrics_lines(run, "world");
    let addrs: Vec<String> = lines.last().expect("a world line")["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(addrs.len(), world, "{addrs:?}");
    for (rank, addr) in addrs.iter().enumerate() {
        let want = format!("10.213.0.{}:", rank / per_host + 1);
        assert!(addr.starts_with(&want), "rank {rank} at {addr}: {addrs:?}");
    }
}

/// Renders the Slurm script for `job` on 3 nodes (`extra` adds options) into
/// `dir/job.sbatch`.
fn render_on_3_nodes(dir: &Path, job: &Path, run: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "launch",
        "--manager",
        "slurm",
        "--nodes",
        "3",
        "--dry-run",
        job.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let script = ok(&args);
    let path = dir.join("job.sbatch");
    std::fs::write(&path, &script).unwrap();
    path
}

/// Renders the Slurm script for `job` on 3 nodes (`extra` adds options) and runs it
/// across the namespace hosts with the cluster's `srun`.
fn slurm_across_hosts(dir: &Path, job: &Path, run: &Path, extra: &[&str]) -> String {
    let path = render_on_3_nodes(dir, job, run, extra);
    // The node list is Slurm's compressed form; the workers expand it and the first
    // host runs the coordinator.
    let script = std::fs::read_to_string(&path).unwrap();
    assert!(script.contains("#SBATCH --ntasks-per-node=2"), "{script}");
    let out = netns(&["slurm", path.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the Slurm script failed:\n{text}");
    text
}

/// Starts `job` as 6 workers on 3 hosts (`extra` adds options) in the background
/// and, once `run` holds `steps` step lines, takes host 2's link down. Returns the
/// running script and when the link went.
fn lose_host_2_while_training(
    dir: &Path,
    job: &Path,
    run: &Path,
    extra: &[&str],
    steps: usize,
) -> (Child, Instant) {
    let path = render_on_3_nodes(dir, job, run, &[&["--workers", "6"], extra].concat());
    let child = Command::new("bash")
        .arg(netns_script())
        .args(["slurm", path.to_str().unwrap()])
        .env("DLC_NETNS_PREFIX", PREFIX)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_step_lines(run, steps, Duration::from_secs(60));
    let lost = Instant::now();
    let down = Command::new("ip")
        .args(["link", "set", "dlct-h2-v", "down"])
        .status()
        .unwrap();
    assert!(down.success());
    (child, lost)
}

#[test]
fn the_cluster_comes_up_shaped_and_leaves_nothing_behind() {
    let Some(cluster) = Cluster::up(3, "1gbit") else {
        return;
    };
    // Three namespaces with their own address, names resolved on every host, and the
    // links shaped on both ends.
    let st = String::from_utf8_lossy(&netns(&["status"]).stdout).into_owned();
    assert!(
        st.contains("3 host(s)") && st.contains("10.213.0.3") && st.contains("1gbit"),
        "{st}"
    );
    let hosts = std::fs::read_to_string(format!("/etc/netns/{}/hosts", Cluster::host(1))).unwrap();
    assert!(hosts.contains("10.213.0.1 dlct-h0"), "{hosts}");
    let qdisc = Command::new("tc")
        .args(["qdisc", "show", "dev", "dlct-h2-v"])
        .output()
        .unwrap();
    let q = String::from_utf8_lossy(&qdisc.stdout);
    assert!(q.contains("tbf") && q.contains("rate 1Gbit"), "{q}");
    // No route leaves a host: only the bridge's /24.
    let routes = Command::new("ip")
        .args(["netns", "exec", "dlct-h1", "ip", "route"])
        .output()
        .unwrap();
    let r = String::from_utf8_lossy(&routes.stdout);
    assert_eq!(r.lines().count(), 1, "{r}");
    assert!(r.starts_with("10.213.0.0/24 dev eth0"), "{r}");
    // `up` again is idempotent.
    assert!(netns(&["up", "3", "--rate", "1gbit"]).status.success());
    // Or each TCP connection capped instead of the link, as clouds cap one flow:
    // 64 classes of the rate on every host, a connection's chosen by its ports.
    assert!(netns(&["up", "3", "--flow-rate", "200mbit"])
        .status
        .success());
    let st = String::from_utf8_lossy(&netns(&["status"]).stdout).into_owned();
    assert!(st.contains("200mbit per TCP connection"), "{st}");
    let classes = Command::new("ip")
        .args([
            "netns", "exec", "dlct-h1", "tc", "class", "show", "dev", "eth0",
        ])
        .output()
        .unwrap();
    let c = String::from_utf8_lossy(&classes.stdout);
    assert_eq!(c.matches("rate 200Mbit").count(), 64, "{c}");
    let both = netns(&["up", "3", "--rate", "1gbit", "--flow-rate", "200mbit"]);
    assert!(!both.status.success());
    drop(cluster);
    assert_eq!(leftovers(), Vec::<String>::new());

    // An `up` that fails half-way (host 2's link name is taken by something the
    // script did not create) removes what it made and leaves the stranger alone.
    let _lock = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let made = Command::new("ip")
        .args([
            "link",
            "add",
            "dlct-h2-v",
            "type",
            "veth",
            "peer",
            "name",
            "dlctforeign",
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let out = netns(&["up", "3"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let left = leftovers();
    let removed = Command::new("ip")
        .args(["link", "del", "dlct-h2-v"])
        .status()
        .unwrap();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("dlct-h2-v exists and was not created by netns-cluster.sh"),
        "{err}"
    );
    assert_eq!(left, vec!["dlct-h2-v".to_string()], "{err}");
    assert!(removed.success(), "the stranger's link was removed by up");
    assert!(netns(&["down"]).status.success());
    assert_eq!(leftovers(), Vec::<String>::new());
}

#[test]
fn a_slurm_script_across_three_hosts_trains_like_one_worker() {
    let Some(_cluster) = Cluster::up(3, "1gbit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "m.toml", &equivalence_job());
    let one = one_worker_run(dir.path(), &job);

    // Ring: 6 workers, 2 per host.
    let ring = dir.path().join("ring");
    slurm_across_hosts(dir.path(), &job, &ring, &["--workers", "6"]);
    assert_same_weights(&one, &ring, "ring, 3 hosts x 2");
    assert_ranks_on_hosts(&ring, 6, 2);
    // Hierarchical links: rank 0 reaches rank 1 (its host) through shared memory and
    // rank 5 (host 2) over TCP; the ring above crossed both kinds.
    let world = metrics_lines(&ring, "world");
    let links = &world.last().unwrap()["links"];
    assert_eq!(links[1], "shm", "{links}");
    assert_eq!(links[5], "tcp", "{links}");

    // The same with 3 TCP streams between hosts: each message crossing hosts is
    // dealt over them, and the result does not change.
    let striped_job = common::job(
        dir.path(),
        "striped.toml",
        &format!("{}[distributed]\ntcp_streams = 3\n", equivalence_job()),
    );
    let striped = dir.path().join("striped");
    slurm_across_hosts(dir.path(), &striped_job, &striped, &["--workers", "6"]);
    assert_same_weights(&one, &striped, "ring, 3 hosts x 2, 3 TCP streams");

    // Parameter servers: 4 workers on hosts 0 and 1, the 2 servers on host 2.
    let ps = dir.path().join("ps");
    slurm_across_hosts(
        dir.path(),
        &job,
        &ps,
        &["--workers", "4", "--strategy", "ps", "--ps-servers", "2"],
    );
    assert_same_weights(&one, &ps, "ps, 4 workers + 2 servers on 3 hosts");
    assert_ranks_on_hosts(&ps, 6, 2);
}

/// Starts rank r of `world` on host r / 2 with the variables `mpirun` gives.
fn mpi_rank(job: &Path, run: &Path, rank: usize, world: usize, master: bool) -> Child {
    let mut env = vec![
        ("OMPI_COMM_WORLD_RANK", rank.to_string()),
        ("OMPI_COMM_WORLD_SIZE", world.to_string()),
        ("OMPI_COMM_WORLD_LOCAL_RANK", (rank % 2).to_string()),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "2".to_string()),
        ("OMPI_MCA_ess_base_jobid", "4242".to_string()),
        ("DLC_JOB_TOKEN", "multi-host-mpi".to_string()),
    ];
    if master {
        env.push(("MASTER_ADDR", Cluster::host(0)));
    }
    Cluster::dlc_on(
        rank / 2,
        &[
            "worker",
            job.to_str().unwrap(),
            "--threads",
            "1",
            "-q",
            "--out",
            run.to_str().unwrap(),
        ],
        &env,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

#[test]
fn mpi_ranks_across_three_hosts_find_rank_0_through_master_addr() {
    let Some(_cluster) = Cluster::up(3, "1gbit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "m.toml", &equivalence_job());
    let one = one_worker_run(dir.path(), &job);
    let run = dir.path().join("mpi");
    let ranks: Vec<Child> = (0..6).map(|r| mpi_rank(&job, &run, r, 6, true)).collect();
    for (r, c) in ranks.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {r}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_same_weights(&one, &run, "MPI environment, 3 hosts x 2");
    assert_ranks_on_hosts(&run, 6, 2);

    // Without MASTER_ADDR, ranks that span hosts cannot guess where rank 0 is: they
    // say how to tell them.
    let out = mpi_rank(&job, &dir.path().join("x"), 2, 6, false)
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("span several hosts") && err.contains("MASTER_ADDR"),
        "{err}"
    );
}

#[test]
fn a_lost_host_is_named_by_every_other_rank_within_the_liveness_bound() {
    // 200 Mbit/s links: each step's all-reduce takes tens of milliseconds, so the
    // job is still training when host 2's link goes down.
    let Some(_cluster) = Cluster::up(3, "200mbit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "long.toml",
        &equivalence_job()
            .replace("limit = 1800", "limit = 36000")
            .replace("log_every = 10", "log_every = 2"),
    );
    let run = dir.path().join("run");
    let (child, lost) = lose_host_2_while_training(dir.path(), &job, &run, &[], 2);
    let out = child.wait_with_output().unwrap();
    let took = lost.elapsed();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the job survived a lost host:\n{text}"
    );
    // Heartbeats stop reaching the coordinator: 6 s of silence, plus a margin for
    // a loaded 2-core machine.
    assert!(took < Duration::from_secs(20), "{took:?}\n{text}");
    assert!(
        metrics_lines(&run, "epoch").is_empty(),
        "the epoch finished before the host was lost: make the job longer\n{text}"
    );
    // Ranks 0-3 (hosts 0 and 1) blame a rank of host 2; ranks 4 and 5 lost everyone
    // and name the coordinator's rank, saying its host or network may be down.
    for rank in 0..4 {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("error: rank {rank} (slurm launcher) failed")))
            .unwrap_or_else(|| panic!("no error from rank {rank}:\n{text}"));
        assert!(
            line.contains("rank 4 failed") || line.contains("rank 5 failed"),
            "rank {rank} blamed the wrong rank: {line}"
        );
    }
    for rank in 4..6 {
        assert!(
            text.contains(&format!("rank {rank} (slurm launcher) failed")),
            "no error from rank {rank}:\n{text}"
        );
    }
    assert!(text.contains("host or network is down"), "{text}");
}

#[test]
fn an_elastic_slurm_job_continues_on_the_hosts_left_after_losing_one() {
    // 200 Mbit/s links keep the job training when host 2's link goes down.
    let Some(_cluster) = Cluster::up(3, "200mbit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 100 steps, a checkpoint every 10.
    let text = equivalence_job()
        .replace("limit = 1800", "limit = 6000")
        .replace(
            "log_every = 10",
            "log_every = 5\ncheckpoint_every = \"10 steps\"",
        );
    let job = job(dir.path(), "elastic.toml", &text);
    let one = one_worker_run(dir.path(), &job);
    let run = dir.path().join("run");
    let (child, lost) = lose_host_2_while_training(
        dir.path(),
        &job,
        &run,
        &["--max-restarts", "1", "--min-workers", "2"],
        3,
    );
    // Training again: the restarted rank 0's restart line.
    while metrics_lines(&run, "restart").is_empty() && lost.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "host lost -> training again on 2 hosts: {:?}",
        lost.elapsed()
    );
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the elastic job failed:\n{text}");
    assert!(
        text.contains("node dlct-h2 does not answer")
            && text.contains("restarting with 4 worker(s) on 2 node(s)"),
        "{text}"
    );
    // One restart: 6 workers before, the 4 of hosts 0 and 1 after, from a checkpoint.
    let restart = metrics_lines(&run, "restart");
    assert_eq!(restart.len(), 1, "{restart:?}\n{text}");
    let r = &restart[0];
    assert_eq!(
        (&r["workers_before"], &r["workers_after"]),
        (&6.into(), &4.into()),
        "{r}"
    );
    let step = r["step"].as_u64().unwrap();
    assert!(step > 0 && step.is_multiple_of(10) && step < 100, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("node dlct-h2 does not answer"),
        "{r}"
    );
    assert_ranks_on_hosts(&run, 4, 2);
    let epoch = metrics_lines(&run, "epoch");
    assert_eq!(epoch.len(), 1, "{epoch:?}");
    // The global batch stayed 60: only the summation order differs.
    assert_same_weights(&one, &run, "6 workers on 3 hosts, then 4 on 2");
}

#[test]
fn the_network_term_is_measured_across_hosts() {
    // One rank per host on 200 Mbit/s links: the fitted ring bandwidth is the link's
    // rate (what the planner then assumes of a catalog network), within 15 %.
    let Some(_cluster) = Cluster::up(3, "200mbit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("net.json");
    let script = format!(
        "#!/bin/bash\n#SBATCH --nodes=3\n#SBATCH --ntasks=3\nexport DLC_JOB_TOKEN=bench-across-hosts\n\
         srun --ntasks=3 {} bench allreduce --worker --sizes 64KiB,1MiB,4MiB --iters 6 \
         --save {} --link 200mbit\n",
        env!("CARGO_BIN_EXE_dlc"),
        saved.display()
    );
    let path = dir.path().join("bench.sbatch");
    std::fs::write(&path, script).unwrap();
    let out = netns(&["slurm", path.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(
        (p["ranks"].as_u64(), p["hosts"].as_u64()),
        (Some(3), Some(3)),
        "{p}"
    );
    let bw = p["bandwidth_gbps"].as_f64().unwrap();
    assert!(
        (bw - 0.025).abs() / 0.025 < 0.15,
        "fitted {bw} GB/s on 0.025 GB/s links: {p}"
    );
    assert_eq!(p["link_gbps"].as_f64(), Some(0.025), "{p}");
    assert!(text.contains("3 ranks on 3 host(s)"), "{text}");
}

#[test]
fn the_scaling_script_measures_training_beside_the_planner_and_plots_it() {
    // scripts/netns-scaling.sh end to end on 2 hosts at 200 Mbit/s: the all-reduce
    // across them, an MLP trained on 1 and 2 hosts, `dlc plan`'s estimate for each
    // (from a profile and the all-reduce measured in the same round), the table and
    // the plot; and the cluster it made is gone afterwards.
    let Some(_cluster) = Cluster::up(2, "200mbit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "mlp.toml", &quick_mlp(6000, 5, 60));
    let out_dir = dir.path().join("scaling");
    let out = Command::new("bash")
        .arg(repo().join("scripts/netns-scaling.sh"))
        .args([
            "--hosts",
            "2",
            "--rates",
            "200mbit",
            "--sizes",
            "64KiB,1MiB",
        ])
        .args(["--rounds", "1", "--steps", "60", "--train"])
        .arg(&job)
        .arg("--out")
        .arg(&out_dir)
        .args(["--dlc", env!("CARGO_BIN_EXE_dlc")])
        .env("DLC_NETNS_PREFIX", PREFIX)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(leftovers(), Vec::<String>::new(), "{text}");
    assert!(
        text.contains("busbw GB/s") && text.contains("samples/s") && text.contains("scaling.svg"),
        "{text}"
    );
    let records = json_lines(&std::fs::read_to_string(out_dir.join("scaling.jsonl")).unwrap());
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        records.iter().filter(|r| r["kind"] == kind).collect()
    };
    let sizes: Vec<u64> = of("allreduce")
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [65536, 1048576], "{records:?}");
    assert!(of("allreduce")
        .iter()
        .all(|r| r["hosts"] == 2 && r["link_gbps"] == 0.025));
    let train = of("train");
    assert_eq!(
        train
            .iter()
            .map(|r| r["hosts"].as_u64())
            .collect::<Vec<_>>(),
        [Some(1), Some(2)],
        "{records:?}"
    );
    // On 200 Mbit/s links a 2-worker MLP step is mostly the all-reduce of its
    // ≈0.94 MB of gradients, which the planner models from the measured profile:
    // its estimate must be close, whatever the CPUs are doing.
    let (measured, predicted) = (
        train[1]["samples_per_sec"].as_f64().unwrap(),
        train[1]["predicted_samples_per_sec"].as_f64().unwrap(),
    );
    assert!(
        (predicted - measured).abs() / measured < 0.3,
        "2 hosts: planner {predicted:.0} vs measured {measured:.0} samples/s\n{text}"
    );
    assert!(train[0]["predicted_samples_per_sec"].as_f64().unwrap() > measured);
    let svg = std::fs::read_to_string(out_dir.join("scaling.svg")).unwrap();
    assert!(
        svg.contains("training throughput") && svg.contains("200mbit planner"),
        "the plot lacks a panel or a series"
    );
}
