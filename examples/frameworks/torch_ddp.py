"""PyTorch DDP on Fashion-MNIST: the same script alone and under dlc.

    python examples/frameworks/torch_ddp.py --epochs 1
    dlc launch --workers 2 -- python examples/frameworks/torch_ddp.py --epochs 1
    dlc launch --manager slurm --nodes 2 --workers-per-node 2 --wait -- python …/torch_ddp.py

Two dlcluster lines make it distributed: ``dlcluster.torch.init()`` (the process
group, gloo on CPU / nccl on GPU) and ``dlcluster.torch.loader`` (this rank's
contiguous share of every global batch, so N processes with global batch B train
exactly like one process with batch B). Rank 0 checkpoints every epoch; after a
restart (``dlc launch --max-restarts K``) every rank resumes from it.
"""

import argparse
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402

import dlcluster  # noqa: E402
import dlcluster.torch  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (all processes)")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--limit", type=int, default=None, help="first N training samples")
    p.add_argument("--steps", type=int, default=None, help="stop after N steps in total")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="default: $DLC_RUN_DIR, else runs/torch-ddp")
    p.add_argument("--fail-at-step", type=int, default=None,
                   help="testing: rank 1 exits with code 3 at this step on the first attempt")
    args = p.parse_args()

    rank, world = dlcluster.torch.init()
    out = args.out or dlcluster.run_dir("runs/torch-ddp")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(args.seed)
    x, y = fmnist.load("train", args.limit)
    train = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start_epoch, step = 0, 0
    ckpt = os.path.join(out, "checkpoint.pt")
    if dlcluster.restart_count() > 0 and os.path.exists(ckpt):
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch, step = state["epoch"], state["step"]
        print(f"rank {rank}: resumed from epoch {start_epoch} (restart {dlcluster.restart_count()})", flush=True)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    # drop_last: DDP needs every rank in every step, and equal local batches make its
    # gradient mean equal to the global batch's.
    loader = dlcluster.torch.loader(train, args.batch_size, seed=args.seed, drop_last=True)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.time()
    samples = 0
    for epoch in range(start_epoch, args.epochs):
        loader.batch_sampler.set_epoch(epoch)
        for xb, yb in loader:
            if args.fail_at_step == step and rank == 1 and dlcluster.restart_count() == 0:
                print(f"rank {rank}: failing on purpose at step {step}", flush=True)
                sys.exit(3)
            opt.zero_grad()
            loss = loss_fn(ddp(xb), yb)
            loss.backward()
            opt.step()
            step += 1
            samples += len(xb) * world
            if rank == 0 and step % 50 == 0:
                print(f"epoch {epoch} step {step} loss {loss.item():.4f} "
                      f"{samples / (time.time() - t0):.0f} samples/s", flush=True)
            if args.steps and step >= args.steps:
                break
        if rank == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1,
                        "step": step}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
        if args.steps and step >= args.steps:
            break
    # Every rank saves its weights (they must be equal); rank 0 evaluates.
    torch.save(model.state_dict(), os.path.join(out, f"weights-rank{rank}.pt"))
    if rank == 0:
        xt, yt = fmnist.load("test")
        with torch.no_grad():
            acc = (model(torch.from_numpy(xt)).argmax(1) == torch.from_numpy(yt)).float().mean().item()
        print(f"done: {step} steps on {world} process(es), test accuracy {100 * acc:.2f}%, "
              f"{samples / (time.time() - t0):.0f} samples/s; {out}", flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
