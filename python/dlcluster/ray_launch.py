"""Run one dlcluster job on a Ray cluster (``dlc launch --manager ray`` starts this).

The driver reserves a placement group of one bundle per process (``{"CPU": c}``,
plus ``{"GPU": g}`` for workers with GPUs; strategy PACK or SPREAD), starts one actor
per bundle, and each actor runs the job's process -- ``dlc worker JOB ...`` or
``dlc exec ... -- COMMAND`` -- with its place in the job in ``DLC_*`` variables. Rank
0's node hosts the rendezvous. The driver itself reserves nothing, so N one-CPU
processes fit a cluster of N CPUs.

When a process fails the driver stops the others (killing their actors kills their
processes) and names the rank that failed first; with ``--max-restarts K`` it starts
every process again, up to K times, and training continues from the newest
checkpoint. Ray reschedules the bundles of a lost node on the nodes left.

    python -m dlcluster.ray_launch --processes 2 --workers 2 [--address ADDR]
        [--cpus 1] [--gpus 0] [--placement PACK] [--max-restarts 0] [--timeout 60]
        -- /path/to/dlc worker job.toml --out run
"""

import argparse
import collections
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

__all__ = ["main"]

PREFIX = "dlc-ray"

# Variables the driver sets per process, never forwarded from its own environment.
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


def _settle():
    """Gives Ray's log monitor a moment to relay the ranks' last lines, so they come
    before the driver's verdict."""
    time.sleep(0.5)


def _say(msg):
    print(f"{PREFIX}: {msg}", file=sys.stderr, flush=True)


def _describe(code):
    """An exit status as the local manager words it."""
    if code is None:
        return "its Ray actor died (killed, or its node was lost)"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _role(rank, workers):
    if rank < workers:
        return f"rank {rank}"
    return f"server {rank - workers} (rank {rank})"


def _rank_actor(ray):
    @ray.remote(num_cpus=0)
    class Rank:
        """One process of the job, in the bundle it was placed in."""

        def node_ip(self):
            return ray.util.get_node_ip_address()

        def free_port(self):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("", 0))
                return s.getsockname()[1]

        def run(self, rank, argv, env, workdir):
            """Runs the process; its stderr (and stdout other than dlc's JSON
            progress events) goes to the driver prefixed by rank. Returns the exit
            status (negative: a signal) and the last lines it wrote."""
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

    return Rank


def _attempt(ray, Rank, pg, args, argv, job_id, extra_env):
    """Runs every process once; returns None on success, else (rank, why, tail)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    n = args.processes
    actors = [
        Rank.options(
            num_cpus=args.cpus,
            num_gpus=args.gpus if r < args.workers else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=r
            ),
        ).remote()
        for r in range(n)
    ]
    try:
        ips = ray.get([a.node_ip.remote() for a in actors], timeout=args.timeout)
        port = ray.get(actors[0].free_port.remote(), timeout=args.timeout)
        seen = collections.Counter()
        refs = {}
        token = secrets.token_hex(16)
        for r, a in enumerate(actors):
            env = {
                "DLC_RANK": str(r),
                "DLC_WORLD_SIZE": str(n),
                "DLC_LOCAL_RANK": str(seen[ips[r]]),
                "DLC_COORDINATOR": f"{ips[0]}:{port}",
                "DLC_JOB_ID": job_id,
                "DLC_JOB_TOKEN": token,
                "DLC_DIE_WITH_PARENT": "1",
            }
            seen[ips[r]] += 1
            if r == 0:
                env["DLC_HOST_COORDINATOR"] = "1"
            env.update(extra_env)
            refs[a.run.remote(r, argv, env, args.workdir)] = r
        failures = []
        pending = list(refs)

        def collect(done):
            for ref in done:
                r = refs[ref]
                try:
                    code, tail = ray.get(ref)
                except ray.exceptions.RayActorError:
                    code, tail = None, []
                if code != 0:
                    failures.append((r, code, tail))

        while pending and not failures:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            collect(done)
        if not failures:
            return None
        # Ranks that hear of a failure exit on their own within a moment: gather
        # them, then blame a rank that was killed (or lost its actor) over one
        # that exited on hearing of it, else the first to end.
        if pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=2.0)
            collect(done)
        killed = [f for f in failures if f[1] is None or f[1] < 0]
        r, code, tail = (killed or failures)[0]
        return r, _describe(code), tail
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m dlcluster.ray_launch",
        description="Run one dlcluster job on a Ray cluster (started by `dlc launch --manager ray`).",
    )
    p.add_argument("--address", help="Ray cluster [default: RAY_ADDRESS, else a running local head]")
    p.add_argument("--processes", type=int, required=True, help="processes: workers + servers")
    p.add_argument("--workers", type=int, required=True, help="ranks 0..workers are workers")
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs per process")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker")
    p.add_argument("--placement", default="PACK", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
    p.add_argument("--name", default="dlc", help="job name")
    p.add_argument("--max-restarts", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to place and start every process")
    p.add_argument("--workdir", default=os.getcwd(), help="directory the processes start in")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the process's command line")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the process's command after --")
    if not 1 <= args.workers <= args.processes:
        p.error("--workers must be 1 to --processes")
    try:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
    except ImportError:
        _say(f"Ray is not installed for {sys.executable}: pip install 'ray==2.60.0' (the Ray of your cluster)")
        return 2
    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    if not sys.stdout.isatty():
        # Ray colours the prefix of relayed lines (`(Rank pid=…)`) even into files.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError) as e:
        _say(
            f"no Ray cluster at {address}: {e}\n"
            "start one (`ray start --head`) or give its address (--address HOST:6379, or RAY_ADDRESS)"
        )
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))
    bundle = {"CPU": args.cpus}
    bundles = []
    for r in range(args.processes):
        b = dict(bundle)
        if args.gpus and r < args.workers:
            b["GPU"] = args.gpus
        bundles.append(b)
    pg = placement_group(bundles, strategy=args.placement, name=f"{args.name}-{os.getpid()}")
    try:
        ready, _ = ray.wait([pg.ready()], timeout=args.timeout)
        if not ready:
            _say(
                f"Ray could not reserve {args.processes} bundle(s) of {bundle}"
                f"{' (+GPU for workers)' if args.gpus else ''} ({args.placement}) within {args.timeout:.0f} s: "
                f"the cluster has {ray.cluster_resources()}, of which {ray.available_resources()} are free"
            )
            return 1
        Rank = _rank_actor(ray)
        job_id = f"{args.name}-ray-{secrets.token_hex(4)}"
        _say(f"job {job_id}: {args.processes} process(es) placed ({args.placement}, {bundles[0]} each)")
        # Ray does not pass the driver's environment to actors: the launching shell's
        # DLC_* settings, Python path and Rust logging go along, as srun's would.
        forwarded = {
            k: v
            for k, v in os.environ.items()
            if (k.startswith("DLC_") and k not in IDENTITY) or k in ("PYTHONPATH", "RUST_LOG", "RUST_BACKTRACE")
        }
        reason = None
        for attempt in range(args.max_restarts + 1):
            extra = dict(forwarded)
            extra["DLC_RESTART_COUNT"] = str(attempt)
            if reason is not None:
                extra["DLC_RESTART_REASON"] = reason
                extra["DLC_RESTART_WORKERS_BEFORE"] = str(args.workers)
            failure = _attempt(ray, Rank, pg, args, command, job_id, extra)
            if failure is None:
                _settle()
                _say(f"job {job_id} completed")
                return 0
            r, why, tail = failure
            reason = f"{_role(r, args.workers)} failed ({why})"
            if attempt < args.max_restarts:
                _say(f"{reason}; restarting every process ({attempt + 1} of {args.max_restarts})")
        _settle()
        lines = "".join(f"\n  {line}" for line in tail)
        _say(f"{reason}; the other processes were stopped{':' if lines else ''}{lines}")
        return 1
    finally:
        remove_placement_group(pg)


if __name__ == "__main__":
    sys.exit(main())
