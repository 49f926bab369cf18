"""dlcluster for your own training script.

Under ``dlc launch -- python train.py`` every process is started by ``dlc exec``,
which exports its place in the job (``DLC_RANK``, ``DLC_WORLD_SIZE``, ...) and the
variables of its framework (torchrun's, ``TF_CONFIG``, JAX/Keras'). This package reads
them; run alone, a script sees one process of rank 0.
"""

import os
import random

__all__ = [
    "rank",
    "world_size",
    "local_rank",
    "is_distributed",
    "is_chief",
    "restart_count",
    "run_dir",
    "epoch_order",
    "shard",
    "strategy",
]


def _int(*names, default=0):
    for n in names:
        v = os.environ.get(n)
        if v is not None and v.strip() != "":
            return int(v)
    return default


def rank():
    """This process's rank (0 when run alone)."""
    return _int("DLC_RANK", "RANK")


def world_size():
    """Number of processes in the job (1 when run alone)."""
    return _int("DLC_WORLD_SIZE", "WORLD_SIZE", default=1)


def local_rank():
    """Rank among the processes on this host (for choosing a GPU)."""
    return _int("DLC_LOCAL_RANK", "LOCAL_RANK")


def is_distributed():
    """True when more than one process takes part."""
    return world_size() > 1


def is_chief():
    """True on the process that should write results (rank 0)."""
    return rank() == 0


def restart_count():
    """How often ``dlc launch --max-restarts`` restarted the job (0 on the first try)."""
    return _int("DLC_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")


def run_dir(default="runs/local"):
    """The job's run directory (``DLC_RUN_DIR``), created if needed."""
    d = os.environ.get("DLC_RUN_DIR") or default
    os.makedirs(d, exist_ok=True)
    return d


def epoch_order(n, epoch=0, seed=0):
    """The permutation of ``range(n)`` for ``(seed, epoch)``, identical on every rank
    and across runs (Python's ``random.Random`` with an integer seed)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def _slice(batch_len, r, w):
    """Contiguous slice of a batch of ``batch_len`` for rank ``r`` of ``w``: sizes
    differ by at most one, the first ``batch_len % w`` ranks take one more."""
    base, extra = divmod(batch_len, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def shard(n, batch_size, epoch=0, seed=0, drop_last=False, shuffle=True, rank_=None, world=None):
    """This rank's indices for every step of one epoch over ``n`` samples.

    ``batch_size`` is the *global* batch (all processes together). Each step's global
    batch is the next ``batch_size`` indices of :func:`epoch_order`; rank r takes the
    r-th contiguous slice. Every sample is used exactly once per epoch (unless
    ``drop_last`` drops the final short batch), and N processes together see exactly
    the batches one process would. A rank may get an empty slice in a final batch
    smaller than the world; frameworks whose collectives need every rank in every
    step (DDP) should use ``drop_last=True`` or a batch size the world divides.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if not 0 <= r < w:
        raise ValueError(f"rank {r} is out of range for world size {w}")
    order = epoch_order(n, epoch, seed) if shuffle else list(range(n))
    steps = []
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        if drop_last and len(batch) < batch_size:
            break
        a, b = _slice(len(batch), r, w)
        steps.append(batch[a:b])
    return steps


def strategy():
    """The TensorFlow distribution strategy matching the job's network graph (see
    :func:`dlcluster.tf.strategy`)."""
    from . import tf as _tf

    return _tf.strategy()
