"""Run one dlcluster job on a Spark cluster (``dlc launch --manager spark`` starts this).

The driver runs one barrier-mode stage of N tasks -- Spark's gang scheduling: all
tasks start together or none does -- and each task runs the job's process (``dlc
worker JOB ...`` or ``dlc exec ... -- COMMAND``) with its rank from
``BarrierTaskContext.partitionId()``, rank 0's executor host as the rendezvous (its
free port shared with ``allGather``), and its GPUs from Spark's resource scheduling
(``spark.task.resource.gpu.amount``, ``TaskContext.resources()["gpu"]``).

A failed process fails its task, and a failed task fails the barrier stage: Spark
stops the other tasks. ``--max-restarts K`` runs the barrier stage again, up to K
times, all tasks together; each run's processes get ``DLC_RESTART_COUNT`` and the
reason, and continue from the newest checkpoint. (The driver retries, not Spark's
``spark.stage.maxConsecutiveAttempts``: PySpark does not tell a task which attempt of
its stage it runs in, and the processes must know.)

    python -m dlcluster.spark_launch --master local-cluster[2,1,1024] --processes 2
        --workers 2 [--cpus 1] [--gpus 0] [--max-restarts 0] [--timeout 60]
        -- /path/to/dlc worker job.toml --out run
"""

import os
import re
import secrets
import sys
import time

from dlcluster import _driver

__all__ = ["main"]

PREFIX = "dlc-spark"
# How a task reports its process's failure; the driver finds it in Spark's error.
MARK = "dlc-spark-failure: "


def _say(msg):
    _driver.say(PREFIX, msg)


def _task(args, job_id, token, forwarded, attempt, reason):
    """The barrier task: one process of the job, in run `attempt` of the stage."""

    def run(_partition):
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        rank = ctx.partitionId()
        hosts = [i.address.rsplit(":", 1)[0] for i in ctx.getTaskInfos()]
        ports = ctx.allGather(str(_driver.free_port()) if rank == 0 else "")
        env = dict(forwarded)
        env.update(
            _driver.identity(
                rank,
                args.processes,
                hosts[:rank].count(hosts[rank]),
                f"{hosts[0]}:{ports[0]}",
                job_id,
                token,
                attempt,
                reason,
                args.workers,
            )
        )
        gpus = ctx.resources().get("gpu")
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses)
        code, tail = _driver.run_process(rank, args.command, env, args.workdir)
        if code != 0:
            if code > 0:
                # A rank that exits on hearing of another's failure must not be the
                # one Spark reports: a killed rank's task fails first.
                time.sleep(2)
            lines = "".join(f"\n  {line}" for line in tail)
            raise RuntimeError(
                f"{MARK}{_driver.role(rank, args.workers)} failed ({_driver.describe(code)}){lines}"
            )
        return [rank]

    return run


def _failure(text):
    """Our task's words inside Spark's error, else Spark's own message (the Java
    exception Py4J quotes on its second line), else the error's first line."""
    i = text.find(MARK)
    if i < 0:
        m = re.search(r"^: [\w.$]+: (.+)$", text, re.M)
        if m:
            return m.group(1).strip()
        return text.strip().splitlines()[0] if text.strip() else "the Spark job failed"
    words = text[i + len(MARK):]
    # Spark quotes the Python traceback; stop at the JVM's lines after it.
    words = re.split(r"\n\s*(?:at |\tat |Caused by|Driver stacktrace|\n)", words)[0]
    return words.rstrip()


def main(argv=None):
    p = _driver.parser(
        "python -m dlcluster.spark_launch",
        "Run one dlcluster job on a Spark cluster (started by `dlc launch --manager spark`).",
        "--master",
        "Spark master URL [default: MASTER, else local[N]]",
    )
    args = _driver.parse(p, argv)
    try:
        from pyspark import SparkConf, SparkContext
        from pyspark import cloudpickle
    except ImportError:
        _say(f"PySpark is not installed for {sys.executable}: pip install 'pyspark==4.1.1' (the Spark of your cluster)")
        return 2
    # The tasks run this package's code without it being installed on the nodes.
    cloudpickle.register_pickle_by_value(_driver)
    master = args.master or os.environ.get("MASTER") or f"local[{args.processes}]"
    conf = (
        SparkConf()
        .setMaster(master)
        .setAppName(f"dlc-{args.name}")
        .set("spark.task.cpus", str(max(1, int(args.cpus))))
        # Restarts are the driver's runs of the whole stage; Spark retries nothing.
        .set("spark.stage.maxConsecutiveAttempts", "1")
        .set("spark.task.maxFailures", "1")
        # A stage that needs more slots than the cluster has fails within the
        # timeout instead of Spark's default 10 minutes.
        .set("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "1s")
        .set("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures", str(max(1, int(args.timeout))))
        .set("spark.barrier.sync.timeout", str(max(1, int(args.timeout))))
        # Executors run the driver's interpreter (same path on every node, like dlc).
        .set("spark.pyspark.python", sys.executable)
        .set("spark.ui.enabled", "false")
        .set("spark.ui.showConsoleProgress", "false")
    )
    if args.gpus:
        conf.set("spark.task.resource.gpu.amount", str(args.gpus))
    try:
        sc = SparkContext(conf=conf)
    except Exception as e:  # noqa: BLE001 - Py4J and Java errors have no common type
        _say(f"cannot start Spark with master {master}: {_failure(str(e))}")
        return 2
    sc.setLogLevel("ERROR")
    job_id = f"{args.name}-spark-{secrets.token_hex(4)}"
    token = secrets.token_hex(16)
    _say(f"job {job_id}: one barrier stage of {args.processes} task(s) on {master}")
    forwarded = _driver.forwarded_env()
    reason = None
    try:
        for attempt in range(args.max_restarts + 1):
            try:
                (
                    sc.parallelize(range(args.processes), args.processes)
                    .barrier()
                    .mapPartitions(_task(args, job_id, token, forwarded, attempt, reason))
                    .collect()
                )
            except Exception as e:  # noqa: BLE001 - Py4J and Java errors have no common type
                why = _failure(str(e))
                if MARK not in str(e):
                    why = (
                        f"Spark could not run the barrier stage of {args.processes} task(s) "
                        f"× {max(1, int(args.cpus))} CPU(s) on {master}: {why}"
                    )
                reason = why.splitlines()[0]
                if attempt < args.max_restarts:
                    _say(f"{reason}; running the stage again ({attempt + 1} of {args.max_restarts})")
                    continue
                _say(f"{why}\n  Spark stopped the other tasks" if MARK in str(e) else why)
                return 1
            _say(f"job {job_id} completed")
            return 0
    finally:
        sc.stop()


if __name__ == "__main__":
    sys.exit(main())
