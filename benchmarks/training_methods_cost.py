"""Cost per training step of each augmentation / training method, relative to plain training, in one process.

Every method trains the same ResNet-8 (BatchNorm, same initial weights) on the digits training split
through autonorm's trainer, with a tiny evaluation set so that the time is the training steps'. Runs
are interleaved over repeats (machine-load drift hits all alike); the script prints the median seconds
per step and the ratio to plain training. Methods run in their active phase from the first step
(noise images with ``start=0``, LAWN with ``warm=0``).

    python benchmarks/training_methods_cost.py [--epochs 3] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from autonorm_plugins.label_smoothing import LabelSmoothing
from autonorm_plugins.lawn import LAWN
from autonorm_plugins.noise_images import PureNoiseImages
from autonorm_plugins.sgt import SoftmaxGradientTampering
from autonorm_plugins.stochastic_depth import StochasticDepth

from autonorm import ComponentChoice, TrainingMethod, TrialConfig, build_model
from autonorm.data import load_data
from autonorm.trainer import fit

TRAIN = {"batch_size": 64, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "momentum": 0.9, "schedule": "cosine"}

METHODS = {
    "plain": TrainingMethod,
    "noise_images": lambda: PureNoiseImages(start=0.0),
    "noise_images (detach)": lambda: PureNoiseImages(start=0.0, noise_grad="detach"),
    "stochastic_depth": StochasticDepth,
    "lawn": lambda: LAWN(warm=0.0),
    "sgt": SoftmaxGradientTampering,
    "label_smoothing": LabelSmoothing,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    data = load_data(ComponentChoice(name="digits"), 0.2, 0.2)
    config = TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=data.input_shape,
        num_classes=10,
        model={"name": "resnet", "params": {"depth": args.depth, "width": 16}},
        components={
            kind: {"name": name}
            for kind, name in [
                ("normalization", "batchnorm"),
                ("activation", "relu"),
                ("pooling", "avg"),
                ("head", "linear"),
                ("initializer", "kaiming"),
            ]
        },
        epochs=args.epochs,
        train=TRAIN,
    )
    torch.manual_seed(0)
    base = build_model(config)
    steps = args.epochs * (len(data.x_train) // TRAIN["batch_size"])
    x_eval, y_eval = data.x_val[:8], data.y_val[:8]

    def timed(make) -> float:
        model = copy.deepcopy(base)
        torch.manual_seed(1)
        t0 = time.perf_counter()
        fit(model, data, {**TRAIN, "device": args.device}, args.epochs, x_eval=x_eval, y_eval=y_eval, methods=[make()])
        if args.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    timed(TrainingMethod)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(args.repeats):
        for name, make in METHODS.items():
            times[name].append(timed(make))
    plain = statistics.median(times["plain"])
    print(f"device={args.device} resnet-{args.depth} batch={TRAIN['batch_size']} steps={steps} repeats={args.repeats}")
    print(f"{'method':<24}{'ms/step':>10}{'ratio':>8}")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"{name:<24}{1000 * t:>10.2f}{t / plain:>8.2f}")


if __name__ == "__main__":
    main()
