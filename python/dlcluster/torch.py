"""PyTorch under ``dlc launch``: process group and this rank's share of the data."""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

import dlcluster


def init(backend=None, timeout_s=300):
    """Initialises ``torch.distributed`` from the variables ``dlc exec`` exports
    (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``): ``nccl`` when CUDA
    is available, ``gloo`` otherwise. Alone (or already initialised) it does nothing.
    Returns ``(rank, world_size)``."""
    r, w = dlcluster.rank(), dlcluster.world_size()
    if w > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                "WORLD_SIZE > 1 but MASTER_ADDR is not set: start the script with "
                "`dlc launch --framework torch -- python ...` (or torchrun)"
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dlcluster.local_rank() % torch.cuda.device_count())
        dist.init_process_group(
            backend, init_method="env://", rank=r, world_size=w, timeout=timedelta(seconds=timeout_s)
        )
    return r, w


def device():
    """This process's device: its GPU by local rank when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", dlcluster.local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


class DistributedBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's index list for every step (see :func:`dlcluster.shard`):
    the global batch split into contiguous per-rank slices. Call :meth:`set_epoch`
    at the start of every epoch, as with ``DistributedSampler``."""

    def __init__(self, n, batch_size, seed=0, drop_last=False, shuffle=True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.drop_last, self.shuffle, self.epoch = drop_last, shuffle, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _steps(self):
        return dlcluster.shard(
            self.n, self.batch_size, self.epoch, self.seed, self.drop_last, self.shuffle
        )

    def __iter__(self):
        return iter(self._steps())

    def __len__(self):
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


def sampler(dataset, batch_size, seed=0, drop_last=False, shuffle=True):
    """A :class:`DistributedBatchSampler` over ``dataset`` (global ``batch_size``)."""
    return DistributedBatchSampler(len(dataset), batch_size, seed, drop_last, shuffle)


def loader(dataset, batch_size, seed=0, drop_last=False, shuffle=True, **kwargs):
    """A ``DataLoader`` yielding this rank's share of every global batch."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler(dataset, batch_size, seed, drop_last, shuffle), **kwargs
    )
