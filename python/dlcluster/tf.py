"""TensorFlow (tf-keras) under ``dlc launch --framework tensorflow``.

``dlc exec`` exports ``TF_CONFIG`` (and ``TF_USE_LEGACY_KERAS=1``: Keras 3 supports
neither multi-worker strategy, tf-keras does). With ``--strategy ring`` every process
is a ``worker`` of ``MultiWorkerMirroredStrategy``; with ``--strategy ps`` rank 0 is
the ``chief`` running your training code, then come the ``ps`` tasks and the
``worker`` tasks, which only serve: :func:`strategy` never returns on them.
"""

import json
import os
import sys


def task():
    """``(type, index)`` of this process in ``TF_CONFIG`` (``("worker", 0)`` alone)."""
    t = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task") or {}
    return t.get("type", "worker"), int(t.get("index", 0))


def strategy():
    """The strategy for the job's network graph: ``ParameterServerStrategy`` on the
    chief of a ps job (its ps and worker tasks serve here until the chief is done;
    dlc then stops them), ``MultiWorkerMirroredStrategy`` with several workers, and
    the default strategy alone."""
    import tensorflow as tf

    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster") or {}
    if cluster.get("ps"):
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        kind, index = task()
        if kind in ("ps", "worker"):
            # Workers and parameter servers only serve the chief's functions.
            os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
            server = tf.distribute.Server(
                resolver.cluster_spec(),
                job_name=kind,
                task_index=index,
                protocol=resolver.rpc_layer or "grpc",
                start=True,
            )
            server.join()
            sys.exit(0)
        return tf.distribute.ParameterServerStrategy(resolver)
    if len(cluster.get("worker") or []) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
