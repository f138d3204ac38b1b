"""Overhead of autonorm's trainer against a minimal hand-written PyTorch loop, in the same process.

Both train the same model (same initial weights) on the same digits tensors for the same epochs,
with the same optimizer and schedule; the script prints the ratio of wall-clock times (target <= 1.05).

    python benchmarks/trainer_overhead.py [--epochs 10] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from autonorm import ComponentChoice, TrialConfig, build_model
from autonorm.data import load_data
from autonorm.trainer import fit

#: weight decay on every parameter, as the hand-written loop's optimizer does
TRAIN = {
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.05,
    "weight_decay": 5e-4,
    "weight_decay_on": "all",
    "momentum": 0.9,
    "schedule": "cosine",
}


def hand_written(model, data, epochs, device):
    """The loop a researcher would write: tensors on the device, shuffled index batches."""
    model.to(device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=TRAIN["lr"], momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = len(x) // TRAIN["batch_size"]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps * epochs)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), device=device)
        for i in range(steps):
            idx = perm[i * TRAIN["batch_size"] : (i + 1) * TRAIN["batch_size"]]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            (model(data.x_val.to(device)).argmax(1) == data.y_val.to(device)).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_data(ComponentChoice(name="digits"), 0.2, 0.2)
    config = TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=data.input_shape,
        num_classes=10,
        model={"name": "resnet", "params": {"depth": 8, "width": 16}},
        components={
            k: {"name": v}
            for k, v in {
                "normalization": "batchnorm",
                "activation": "relu",
                "pooling": "avg",
                "head": "linear",
                "initializer": "kaiming",
            }.items()
        },
        epochs=args.epochs,
        train=TRAIN,
    )
    torch.manual_seed(0)
    base = build_model(config)

    def timed(run) -> float:
        model = copy.deepcopy(base)
        torch.manual_seed(1)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(model)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed(lambda m: hand_written(m, data, 1, args.device))  # warm-up
    ours, theirs = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        theirs.append(timed(lambda m: hand_written(m, data, args.epochs, args.device)))
        ours.append(timed(lambda m: fit(m, data, {**TRAIN, "device": args.device}, args.epochs)))
    t_ours, t_theirs = statistics.median(ours), statistics.median(theirs)
    print(f"device={args.device} epochs={args.epochs} repeats={args.repeats}")
    print(f"hand-written loop: {t_theirs:.3f} s (median)")
    print(f"autonorm trainer:  {t_ours:.3f} s (median)")
    print(f"ratio autonorm / hand-written: {t_ours / t_theirs:.3f}")


if __name__ == "__main__":
    main()
