"""What the drivers of ``dlc launch --manager ray|spark`` share: the job's command
line, the identity and environment of each process, how an exit is worded, and
running one process while relaying its lines.

The drivers ship this module to their workers by value (cloudpickle), so the nodes
need the ``dlc`` binary but not this package.
"""

import argparse
import collections
import os
import socket
import subprocess
import sys
import threading

# Variables a driver sets per process, never forwarded from its own environment.
IDENTITY = {
    "DLC_RANK",
    "DLC_WORLD_SIZE",
    "DLC_LOCAL_RANK",
    "DLC_COORDINATOR",
    "DLC_JOB_ID",
    "DLC_JOB_TOKEN",
    "DLC_HOST_COORDINATOR",
    "DLC_RESTART_COUNT",
    "DLC_RESTART_REASON",
    "DLC_RESTART_WORKERS_BEFORE",
    "DLC_PORT",
    "DLC_PYTHON",
}


def parser(prog, description, cluster_flag, cluster_help):
    """The options every driver takes; `cluster_flag` names the cluster (--address,
    --master)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(cluster_flag, help=cluster_help)
    p.add_argument("--processes", type=int, required=True, help="processes: workers + servers")
    p.add_argument("--workers", type=int, required=True, help="ranks 0..workers are workers")
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs per process")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker")
    p.add_argument("--name", default="dlc", help="job name")
    p.add_argument("--max-restarts", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to place and start every process")
    p.add_argument("--workdir", default=os.getcwd(), help="directory the processes start in")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the process's command line")
    return p


def parse(p, argv):
    """Parses and checks the options; returns them with `command` without its `--`."""
    args = p.parse_args(argv)
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
        p.error("give the process's command after --")
    if not 1 <= args.workers <= args.processes:
        p.error("--workers must be 1 to --processes")
    return args


def forwarded_env():
    """The launching shell's settings that every process gets: engines pass no driver
    environment to their workers, so DLC_*, the Python path and Rust's logging go
    along explicitly, as srun's would."""
    return {
        k: v
        for k, v in os.environ.items()
        if (k.startswith("DLC_") and k not in IDENTITY) or k in ("PYTHONPATH", "RUST_LOG", "RUST_BACKTRACE")
    }


def identity(rank, world, local_rank, coordinator, job_id, token, attempt, reason, workers):
    """The DLC_* variables that give a process its place in the job (and, after a
    failure, the restart it belongs to)."""
    env = {
        "DLC_RANK": str(rank),
        "DLC_WORLD_SIZE": str(world),
        "DLC_LOCAL_RANK": str(local_rank),
        "DLC_COORDINATOR": coordinator,
        "DLC_JOB_ID": job_id,
        "DLC_JOB_TOKEN": token,
        "DLC_DIE_WITH_PARENT": "1",
        "DLC_RESTART_COUNT": str(attempt),
    }
    if rank == 0:
        env["DLC_HOST_COORDINATOR"] = "1"
    if attempt:
        env["DLC_RESTART_REASON"] = reason
        env["DLC_RESTART_WORKERS_BEFORE"] = str(workers)
    return env


def say(prefix, msg):
    """A line of the driver's own, `PREFIX: msg`, on stderr (`dlc launch` turns the
    last one into its error)."""
    print(f"{prefix}: {msg}", file=sys.stderr, flush=True)


def free_port():
    """A TCP port free on this host now (for rank 0's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def describe(code, lost="its worker was lost"):
    """An exit status as the local manager words it (None: the worker was lost)."""
    if code is None:
        return lost
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


def role(rank, workers):
    """`rank N`, or `server K (rank N)` for a parameter server."""
    if rank < workers:
        return f"rank {rank}"
    return f"server {rank - workers} (rank {rank})"


def run_process(rank, argv, env, workdir):
    """Runs one process of the job with `env` added to this environment; its stderr
    (and stdout other than dlc's JSON progress events) is relayed prefixed by rank.
    Returns the exit status (negative: a signal) and its last stderr lines."""
    full = dict(os.environ)
    full.update(env)
    try:
        proc = subprocess.Popen(
            argv,
            env=full,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except OSError as e:
        return 127, [f"cannot start {argv[0]} in {workdir}: {e}"]
    tail = collections.deque(maxlen=12)

    def relay_stdout():
        for line in proc.stdout:
            if not line.startswith('{"event"'):
                print(f"[rank {rank}] {line.rstrip()}", flush=True)

    t = threading.Thread(target=relay_stdout, daemon=True)
    t.start()
    for line in proc.stderr:
        line = line.rstrip()
        tail.append(line)
        print(f"[rank {rank}] {line}", file=sys.stderr, flush=True)
    code = proc.wait()
    t.join(timeout=5)
    return code, list(tail)
