"""Fashion-MNIST from Debian's dataset-fashion-mnist package (IDX, gzip), as numpy
arrays scaled to [-1, 1] like dlc's own loader. Shared by the framework examples."""

import gzip
import os

import numpy as np

DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def _idx(name):
    path = os.path.join(DIR, name)
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: apt-get install dataset-fashion-mnist (or set FASHION_MNIST_DIR)")
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(split="train", limit=None):
    """(images float32 [n, 28, 28] in [-1, 1], labels int64 [n])."""
    prefix = "train" if split == "train" else "t10k"
    x = _idx(f"{prefix}-images-idx3-ubyte.gz")
    y = _idx(f"{prefix}-labels-idx1-ubyte.gz")
    if limit:
        x, y = x[:limit], y[:limit]
    return (x.astype(np.float32) / 127.5 - 1.0), y.astype(np.int64)
