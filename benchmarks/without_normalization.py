"""Equi-normalization's headline claim on the CPU: does ENorm make a network without normalization train
as well as one with batch or group normalization, at small and at large batches?

Stock et al. (ICLR 2019) report that one ENorm cycle after each SGD step improves test accuracy over
plain training and, for small batches, is an alternative to BN and GN. Here: digits, small_cnn (depth
4, width 16, ReLU, average pooling), SGD with momentum, cosine schedule, the same epochs and learning
rate for every variant; test accuracy (the held-out split) over several seeds, mean and standard
deviation, for no normalization, no normalization + ENorm, BatchNorm and GroupNorm.

    python benchmarks/without_normalization.py [--seeds 5] [--epochs 6] [--batches 4 64] [--lr 0.02]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from autonorm_plugins.enorm import ENorm
from optuna.trial import FixedTrial

from autonorm import ComponentChoice, TrainingMethod, TrialConfig, build_model, load_spec
from autonorm.data import load_data
from autonorm.space import sample_config
from autonorm.trainer import fit

VARIANTS = {
    "none": ("none", TrainingMethod),
    "none + enorm": ("none", ENorm),
    "batchnorm": ("batchnorm", TrainingMethod),
    "groupnorm": ("groupnorm", TrainingMethod),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()
    data = load_data(ComponentChoice(name="digits"), 0.2, 0.2, seed=0)

    def config(norm: str, batch: int) -> TrialConfig:
        """The configuration a search over this space would train for ``norm``."""
        spec = load_spec(
            {
                "model": {"backbone": "small_cnn", "depth": 4, "width": 16},
                "space": {"normalization": {"none": {}, "batchnorm": {}, "groupnorm": {"groups": 4}}},
                "train": {"epochs": args.epochs, "lr": args.lr, "batch_size": batch, "device": "cpu"},
            }
        )
        return sample_config(FixedTrial({"normalization": norm}), spec, data.input_shape, data.num_classes)

    print(f"digits, small_cnn depth 4 width 16, {args.epochs} epochs, lr {args.lr}, {args.seeds} seeds: test accuracy")
    start = time.perf_counter()
    for batch in args.batches:
        for name, (norm, method) in VARIANTS.items():
            cfg, scores = config(norm, batch), []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                model = build_model(cfg, data.x_train[:batch])
                test = {"x_eval": data.x_test, "y_eval": data.y_test}
                result = fit(model, data, cfg.train, args.epochs, methods=[method()], **test)
                scores.append(result.metrics["val_accuracy"])
            print(
                f"batch {batch:3d}  {name:14s} mean {statistics.mean(scores):.4f}  sd {statistics.stdev(scores):.4f}  "
                f"({' '.join(f'{s:.3f}' for s in scores)})",
                flush=True,
            )
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
