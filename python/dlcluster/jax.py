"""JAX and Keras 3 (JAX backend) under ``dlc launch --framework jax``.

``jax.distributed.initialize()`` detects only Slurm, Open MPI and TPUs by itself;
``dlc exec`` exports the coordinator address, process count and id as
``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` and in the
variables Keras 3 reads (``KERAS_DISTRIBUTION_*``).
"""

import os


def init():
    """Initialises JAX's distributed system when more than one process takes part.
    Returns ``(process_id, num_processes)``."""
    n = int(os.environ.get("JAX_NUM_PROCESSES") or 1)
    pid = int(os.environ.get("JAX_PROCESS_ID") or 0)
    if n > 1:
        import jax

        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=n,
            process_id=pid,
        )
    return pid, n
