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

import logging
import os
import secrets
import signal
import sys
import time

from dlcluster import _driver

__all__ = ["main"]

PREFIX = "dlc-ray"
LOST = "its Ray actor died (killed, or its node was lost)"


def _say(msg):
    _driver.say(PREFIX, msg)


def _settle():
    """Gives Ray's log monitor a moment to relay the ranks' last lines, so they come
    before the driver's verdict."""
    time.sleep(0.5)


def _rank_actor(ray):
    @ray.remote(num_cpus=0)
    class Rank:
        """One process of the job, in the bundle it was placed in."""

        def node_ip(self):
            return ray.util.get_node_ip_address()

        def free_port(self):
            return _driver.free_port()

        def run(self, rank, argv, env, workdir):
            return _driver.run_process(rank, argv, env, workdir)

    return Rank


def _attempt(ray, Rank, pg, args, env_of):
    """Runs every process once; returns None on success, else (rank, why, tail).
    `env_of(rank, local_rank, coordinator, token)` gives a process its variables."""
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
        token = secrets.token_hex(16)
        refs = {}
        for r, a in enumerate(actors):
            env = env_of(r, ips[:r].count(ips[r]), f"{ips[0]}:{port}", token)
            refs[a.run.remote(r, args.command, env, args.workdir)] = r
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
        return r, _driver.describe(code, LOST), tail
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)


def main(argv=None):
    p = _driver.parser(
        "python -m dlcluster.ray_launch",
        "Run one dlcluster job on a Ray cluster (started by `dlc launch --manager ray`).",
        "--address",
        "Ray cluster [default: RAY_ADDRESS, else a running local head]",
    )
    p.add_argument("--placement", default="PACK", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
    args = _driver.parse(p, argv)
    try:
        import ray
        import ray.cloudpickle
        from ray.util.placement_group import placement_group, remove_placement_group
    except ImportError:
        _say(f"Ray is not installed for {sys.executable}: pip install 'ray==2.60.0' (the Ray of your cluster)")
        return 2
    # The actors run this package's code without it being installed on the nodes.
    ray.cloudpickle.register_pickle_by_value(_driver)
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
    bundles = []
    for r in range(args.processes):
        b = {"CPU": args.cpus}
        if args.gpus and r < args.workers:
            b["GPU"] = args.gpus
        bundles.append(b)
    pg = placement_group(bundles, strategy=args.placement, name=f"{args.name}-{os.getpid()}")
    try:
        ready, _ = ray.wait([pg.ready()], timeout=args.timeout)
        if not ready:
            _say(
                f"Ray could not reserve {args.processes} bundle(s) of {bundles[-1]}"
                f"{' (+GPU for workers)' if args.gpus else ''} ({args.placement}) within {args.timeout:.0f} s: "
                f"the cluster has {ray.cluster_resources()}, of which {ray.available_resources()} are free"
            )
            return 1
        Rank = _rank_actor(ray)
        job_id = f"{args.name}-ray-{secrets.token_hex(4)}"
        _say(f"job {job_id}: {args.processes} process(es) placed ({args.placement}, {bundles[0]} each)")
        forwarded = _driver.forwarded_env()
        reason = None
        for attempt in range(args.max_restarts + 1):

            def env_of(rank, local_rank, coordinator, token, attempt=attempt, reason=reason):
                env = dict(forwarded)
                env.update(
                    _driver.identity(
                        rank, args.processes, local_rank, coordinator, job_id, token, attempt, reason, args.workers
                    )
                )
                return env

            failure = _attempt(ray, Rank, pg, args, env_of)
            if failure is None:
                _settle()
                _say(f"job {job_id} completed")
                return 0
            r, why, tail = failure
            reason = f"{_driver.role(r, args.workers)} failed ({why})"
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
