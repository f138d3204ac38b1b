"""Cost per training step of each augmentation / training method, relative to plain training, in one process.

Every method trains the same ResNet-8 (BatchNorm, same initial weights) on the digits training split
through autonorm's trainer, with a tiny evaluation set so that the time is the training steps'. Runs
are interleaved over repeats (machine-load drift hits all alike); the script prints the median seconds
per step and the ratio to plain training with the same normalization (JEM refuses batch normalization,
so it is timed on a GroupNorm ResNet; ENorm needs none, so it is timed on a ResNet without). Methods
run in their active phase from the first step (noise images with ``start=0``, LAWN with ``warm=0``,
APR on every batch) with their default settings.

    python benchmarks/training_methods_cost.py [--epochs 3] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from autonorm_plugins.afan import AFAN
from autonorm_plugins.amplitude_phase import AmplitudePhaseRecombination
from autonorm_plugins.eman import EMAN
from autonorm_plugins.enorm import ENorm
from autonorm_plugins.jem import JEM
from autonorm_plugins.label_smoothing import LabelSmoothing
from autonorm_plugins.lawn import LAWN
from autonorm_plugins.noise_images import PureNoiseImages
from autonorm_plugins.periodic_averaging import PSWA, PSWM, PWALKS
from autonorm_plugins.sgt import SoftmaxGradientTampering
from autonorm_plugins.slimming import NetworkSlimming
from autonorm_plugins.stochastic_depth import StochasticDepth

from autonorm import ComponentChoice, TrainingMethod, TrialConfig, build_model
from autonorm.data import load_data
from autonorm.trainer import fit

TRAIN = {
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.05,
    "weight_decay": 5e-4,
    "weight_decay_on": "weights",
    "momentum": 0.9,
    "schedule": "cosine",
}

#: name -> (normalization of the ResNet, method); each ratio is against plain training with the same normalization.
METHODS = {
    "plain": ("batchnorm", TrainingMethod),
    "noise_images": ("batchnorm", lambda: PureNoiseImages(start=0.0)),
    "noise_images (detach)": ("batchnorm", lambda: PureNoiseImages(start=0.0, noise_grad="detach")),
    "apr": ("batchnorm", lambda: AmplitudePhaseRecombination(prob=1.0)),
    "afan": ("batchnorm", AFAN),
    "stochastic_depth": ("batchnorm", StochasticDepth),
    "lawn": ("batchnorm", lambda: LAWN(warm=0.0)),
    "sgt": ("batchnorm", SoftmaxGradientTampering),
    "eman": ("batchnorm", EMAN),
    "pswa": ("batchnorm", PSWA),
    "pwalks": ("batchnorm", PWALKS),
    "pswm": ("batchnorm", PSWM),
    "label_smoothing": ("batchnorm", LabelSmoothing),
    "slimming": ("batchnorm", NetworkSlimming),
    "plain (none)": ("none", TrainingMethod),
    "enorm (none)": ("none", ENorm),
    "plain (groupnorm)": ("groupnorm", TrainingMethod),
    "jem (groupnorm)": ("groupnorm", JEM),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    data = load_data(ComponentChoice(name="digits"), 0.2, 0.2)

    def config(norm: str) -> TrialConfig:
        return TrialConfig(
            dataset={"name": "digits"},
            val_fraction=0.2,
            test_fraction=0.2,
            input_shape=data.input_shape,
            num_classes=10,
            model={"name": "resnet", "params": {"depth": args.depth, "width": 16}},
            components={
                kind: {"name": name}
                for kind, name in [
                    ("normalization", norm),
                    ("activation", "relu"),
                    ("pooling", "avg"),
                    ("head", "linear"),
                    ("initializer", "kaiming"),
                ]
            },
            epochs=args.epochs,
            train=TRAIN,
        )

    bases = {}
    for norm in sorted({norm for norm, _ in METHODS.values()}):
        torch.manual_seed(0)
        bases[norm] = build_model(config(norm))
    steps = args.epochs * (len(data.x_train) // TRAIN["batch_size"])
    x_eval, y_eval = data.x_val[:8], data.y_val[:8]

    def timed(norm: str, make) -> float:
        model = copy.deepcopy(bases[norm])
        torch.manual_seed(1)
        t0 = time.perf_counter()
        fit(model, data, {**TRAIN, "device": args.device}, args.epochs, x_eval=x_eval, y_eval=y_eval, methods=[make()])
        if args.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    timed("batchnorm", TrainingMethod)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(args.repeats):
        for name, (norm, make) in METHODS.items():
            times[name].append(timed(norm, make))
    plain = {norm: statistics.median(times["plain" if norm == "batchnorm" else f"plain ({norm})"]) for norm in bases}
    print(f"device={args.device} resnet-{args.depth} batch={TRAIN['batch_size']} steps={steps} repeats={args.repeats}")
    print(f"{'method':<24}{'ms/step':>10}{'ratio':>8}")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"{name:<24}{1000 * t:>10.2f}{t / plain[METHODS[name][0]]:>8.2f}")


if __name__ == "__main__":
    main()
