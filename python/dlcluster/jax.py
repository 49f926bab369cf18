"""JAX and Keras 3 (JAX backend) under ``dlc launch --framework jax``.

``jax.distributed.initialize()`` detects only Slurm, Open MPI and TPUs by itself;
``dlc exec`` exports the coordinator address, process count and id as
``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` and in the
variables Keras 3 reads (``KERAS_DISTRIBUTION_*``). :func:`init` reads them, so the
same script runs alone (one process, nothing to initialise) and under dlc::

    import keras                  # KERAS_BACKEND=jax
    import dlcluster.jax
    pid, n = dlcluster.jax.init()   # before any JAX computation

On CPU, processes exchange their collectives (the gradient all-reduce) over Gloo:
:func:`init` selects it unless ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` chooses
another (``mpi``); without a cross-process implementation JAX's CPU client cannot run
a computation that spans processes.
"""

import os
import sys


from dlcluster import _int


def coordinator_address():
    """Rank 0's ``host:port`` for JAX's coordination service (``None`` alone)."""
    addr = os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES")
    # Keras accepts every process's address, comma separated; the first is rank 0's.
    return addr.split(",")[0].strip() if addr else None


def num_processes():
    """Processes in the job (1 alone)."""
    return _int("JAX_NUM_PROCESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "DLC_WORLD_SIZE", default=1)


def process_id():
    """This process's id (= its rank; 0 alone)."""
    return _int("JAX_PROCESS_ID", "KERAS_DISTRIBUTION_PROCESS_ID", "DLC_RANK")


def _use_cpu_collectives(jax):
    """Cross-process collectives for the CPU backend (must precede its creation)."""
    if os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        return  # the user's choice; jax reads it itself
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # jax before 0.4.27
        jax.config.update("jax_cpu_enable_gloo_collectives", True)


def _initialized(jax):
    if hasattr(jax.distributed, "is_initialized"):  # jax >= 0.5
        return jax.distributed.is_initialized()
    from jax._src import distributed

    return distributed.global_state.client is not None


def init():
    """Joins this process to the job's JAX distributed system when more than one
    process takes part; does nothing alone. Call it before any JAX computation.
    Returns ``(process_id, num_processes)``.

    With Keras 3 already imported on its JAX backend this goes through
    ``keras.distribution.initialize``, which also agrees on one global Keras seed
    across processes when none was set, so that every process draws the same initial
    weights (``DataParallel`` assumes replicas agree). Set your own seed with
    ``keras.utils.set_random_seed`` *after* :func:`init` for repeatable runs. (Both
    set TensorFlow's seed too and so import TensorFlow when it is installed: seconds.)
    Calling :func:`init` again is harmless."""
    n, pid = num_processes(), process_id()
    if n <= 1:
        return pid, n
    addr = coordinator_address()
    if not addr:
        raise RuntimeError(
            f"{n} processes but no coordinator address: run under `dlc launch` "
            "(or set JAX_COORDINATOR_ADDRESS)"
        )
    import jax

    if _initialized(jax):
        return jax.process_index(), jax.process_count()
    _use_cpu_collectives(jax)
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() == "jax":
        keras.distribution.initialize(job_addresses=addr, num_processes=n, process_id=pid)
    else:
        jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
    return jax.process_index(), jax.process_count()
