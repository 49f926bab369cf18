"""Keras 3 on its JAX backend, data-parallel across processes with
``keras.distribution.DataParallel``: a small MLP on Fashion-MNIST, the same script
alone and under dlc.

    python examples/frameworks/keras_jax_train.py --steps 100
    dlc launch --workers 2 -- python examples/frameworks/keras_jax_train.py --steps 100

Under dlc every process gets the coordinator address, process count and id
(``JAX_*`` and ``KERAS_DISTRIBUTION_*``); ``dlcluster.jax.init()`` joins them into
one JAX system (over Gloo on CPU) and does nothing alone. ``DataParallel`` then
replicates the weights on every device of every process and splits each global batch
between them: process r feeds the r-th slice of every global batch
(``dlcluster.shard``), so N processes take exactly the steps one process would with
the same ``--batch-size``. Each process writes its final weights to
``weights-rank<r>.npz`` in ``--out``.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402

import dlcluster  # noqa: E402
import dlcluster.jax  # noqa: E402


def glorot(seed):
    """Glorot-uniform initial kernels drawn by NumPy from ``seed``: the same in every
    process, and no XLA compilation of JAX's random-number kernels (seconds on a
    small CPU). ``keras.utils.set_random_seed`` would also do, but it imports
    TensorFlow when installed."""
    rng = np.random.default_rng(seed)

    def init(shape, dtype=None):
        limit = np.sqrt(6.0 / (shape[0] + shape[1]))
        return rng.uniform(-limit, limit, shape).astype(dtype or "float32")

    return init


def build(seed=0):
    return keras.Sequential([
        keras.Input((28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu", kernel_initializer=glorot(seed)),
        keras.layers.Dense(64, activation="relu", kernel_initializer=glorot(seed + 1)),
        keras.layers.Dense(10, kernel_initializer=glorot(seed + 2)),
    ])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="training steps [default: one epoch]")
    p.add_argument("--batch-size", "--batch", type=int, default=128, help="global batch (all processes)")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--limit", type=int, default=None, help="first N training samples")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="default: $DLC_RUN_DIR, else runs/keras-jax")
    args = p.parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit(f"this example needs KERAS_BACKEND=jax, not {keras.backend.backend()}")

    rank, world = dlcluster.jax.init()  # before any JAX computation
    import jax

    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")
    out = args.out or dlcluster.run_dir("runs/keras-jax")
    os.makedirs(out, exist_ok=True)

    x, y = fmnist.load("train", args.limit)
    per_epoch = len(x) // args.batch_size
    steps = args.steps or per_epoch
    # This process's slice of every global batch, epoch after epoch, in step order.
    idx = []
    epoch = 0
    while len(idx) < steps:
        idx += dlcluster.shard(len(x), args.batch_size, epoch=epoch, seed=args.seed,
                               drop_last=True, rank_=rank, world=world)
        epoch += 1
    idx = np.concatenate(idx[:steps])
    local = args.batch_size // world

    devices = keras.distribution.list_devices()  # every process's devices
    # Each process already holds only its slices (above): no auto-sharding, which
    # Keras supports for tf.data input only.
    dist = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    with dist.scope():
        model = build(args.seed)
        model.compile(optimizer=keras.optimizers.Adam(args.lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        # Keras joins the processes' local batches into one global batch per step.
        hist = model.fit(x[idx], y[idx], batch_size=local, epochs=1, shuffle=False,
                         verbose=2 if rank == 0 else 0)
    weights = [np.asarray(w) for w in model.get_weights()]
    np.savez(os.path.join(out, f"weights-rank{rank}.npz"), *weights)
    if rank == 0:
        plain = build()  # outside the distribution: this process alone
        plain.set_weights(weights)
        xt, yt = fmnist.load("test")
        acc = float(np.mean(np.argmax(plain.predict(xt, batch_size=1000, verbose=0), 1) == yt))
        print(f"done: {steps} steps on {world} process(es), DataParallel over "
              f"{len(devices)} {jax.default_backend()} device(s), loss {hist.history['loss'][-1]:.4f}, "
              f"test accuracy {100 * acc:.2f}%; {out}", flush=True)


if __name__ == "__main__":
    main()
