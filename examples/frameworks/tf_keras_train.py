"""tf-keras (Keras 2) on Fashion-MNIST with TensorFlow's multi-worker strategies: the
same script alone and under dlc.

    python examples/frameworks/tf_keras_train.py --epochs 1
    dlc launch --workers 2 -- python examples/frameworks/tf_keras_train.py --epochs 1
    dlc launch --strategy ps --ps-servers 1 --workers 2 -- python …/tf_keras_train.py

``dlcluster.strategy()`` returns the strategy matching the job's network graph:
``MultiWorkerMirroredStrategy`` (``--strategy ring``; every process a worker),
``ParameterServerStrategy`` (``--strategy ps``: dlc starts a chief, the ps tasks and
the workers; this code runs on the chief, the others serve inside ``strategy()``), or
TensorFlow's default strategy alone. Keras 3 supports neither multi-worker strategy
(keras-team/keras#20585), so this uses tf-keras with ``TF_USE_LEGACY_KERAS=1``, which
``dlc launch --framework tensorflow`` exports.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402

import dlcluster  # noqa: E402
import dlcluster.tf  # noqa: E402


def build():
    return keras.Sequential([
        keras.layers.Flatten(input_shape=(28, 28)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (all workers)")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--limit", type=int, default=None, help="first N training samples")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="default: $DLC_RUN_DIR, else runs/tf-keras")
    args = p.parse_args()

    strategy = dlcluster.strategy()  # on ps/worker tasks of a ps job this serves and never returns
    kind, index = dlcluster.tf.task()
    out = args.out or dlcluster.run_dir("runs/tf-keras")
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    x, y = fmnist.load("train", args.limit)
    steps = len(x) // args.batch_size
    ps = isinstance(strategy, tf.distribute.ParameterServerStrategy)
    with strategy.scope():
        model = build()
        model.compile(optimizer=keras.optimizers.Adam(args.lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    if ps:
        # Each worker reads the whole set, shuffled by its own seed, forever; the chief
        # schedules `steps` global batches per epoch.
        def dataset_fn(ctx):
            local = ctx.get_per_replica_batch_size(args.batch_size)
            ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=args.seed + ctx.input_pipeline_id)
            return ds.repeat().batch(local, drop_remainder=True).prefetch(2)

        data = keras.utils.experimental.DatasetCreator(dataset_fn)
        model.fit(data, epochs=args.epochs, steps_per_epoch=steps, verbose=2)
    else:
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=args.seed)
              .batch(args.batch_size, drop_remainder=True).with_options(opts))
        model.fit(ds, epochs=args.epochs, verbose=2 if dlcluster.is_chief() else 0)
    weights = model.get_weights()
    np.savez(os.path.join(out, f"weights-{kind}{index}.npz"), *weights)
    if kind in ("chief", "worker") and (ps or dlcluster.is_chief()):
        plain = build()
        plain.set_weights(weights)
        xt, yt = fmnist.load("test")
        acc = float(np.mean(np.argmax(plain.predict(xt, verbose=0), 1) == yt))
        name = type(strategy).__name__.replace("CollectiveAllReduceStrategy", "MultiWorkerMirroredStrategy").replace("StrategyV2", "Strategy")
        print(f"done: {args.epochs} epoch(s) with {name} on "
              f"{dlcluster.world_size()} process(es), test accuracy {100 * acc:.2f}%; {out}", flush=True)


if __name__ == "__main__":
    main()
