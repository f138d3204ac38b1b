"""Per-trial overhead of autonorm's Ray backend against a raw Ray Tune run of the same training, in one process.

Both sides run the same number of trials of the same model on the same digits tensors, through the
same ``autonorm.trainer.fit`` loop, on the same local Ray. The raw side is what a Ray user writes: a
function trainable given the data with ``tune.with_parameters`` and a ``tune.loguniform`` learning
rate. The autonorm side adds the define-by-run sampling, the Optuna storage (SQLite) and the
recording of every trial. Prints the median seconds per trial of each and their ratio (target <= 1.0).

    python benchmarks/ray_overhead.py [--trials 8] [--epochs 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from optuna.trial import FixedTrial
from ray import tune

import autonorm
from autonorm import ComponentChoice, build_model, load_spec
from autonorm.backends.ray import connect
from autonorm.data import Data, load_data
from autonorm.space import sample_config
from autonorm.trainer import fit

MODEL = {"backbone": "small_cnn", "depth": 2, "width": 8}
TRAIN = {"batch_size": 64, "optimizer": "sgd", "weight_decay": 5e-4, "momentum": 0.9, "schedule": "cosine"}


def space(trials: int, epochs: int, name: str = "bench", storage: str | None = None) -> dict:
    return {
        "name": name,
        "model": MODEL,
        "train": {**TRAIN, "epochs": epochs, "device": "cpu", "lr": {"loguniform": [0.01, 0.2]}},
        "search": {"backend": "ray", "trials": trials, "pruner": "none", "storage": storage},
    }


def raw_trainable(config: dict, data: Data, epochs: int) -> None:
    """The hand-written Ray Tune side: the same model and loop, the learning rate from Ray's own sampler."""
    spec = load_spec(space(1, epochs))
    trial_config = sample_config(FixedTrial({"train.lr": config["lr"]}), spec, data.input_shape, data.num_classes)
    torch.manual_seed(0)
    model = build_model(trial_config, data.x_train[:64])
    fit(model, data, trial_config.train, epochs, lambda epoch, m: tune.report({"val_accuracy": m["val_accuracy"]}))


def run_raw(data: Data, trials: int, epochs: int, scratch: str) -> float:
    start = time.perf_counter()
    tune.Tuner(
        tune.with_parameters(raw_trainable, data=data, epochs=epochs),
        param_space={"lr": tune.loguniform(0.01, 0.2)},
        tune_config=tune.TuneConfig(num_samples=trials, metric="val_accuracy", mode="max"),
        run_config=tune.RunConfig(storage_path=scratch, verbose=0),
    ).fit()
    return (time.perf_counter() - start) / trials


def run_autonorm(trials: int, epochs: int, storage: str, name: str) -> float:
    start = time.perf_counter()
    results = autonorm.search(space(trials, epochs, name, storage))
    assert results.count("complete") == trials, [t.reason for t in results.trials]
    return (time.perf_counter() - start) / trials


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    connect(None)
    data = load_data(ComponentChoice(name="digits"), 0.2, 0.2)
    raw, ours = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):  # interleaved, so machine load affects both sides alike
            raw.append(run_raw(data, args.trials, args.epochs, scratch))
            db = Path(scratch) / f"bench{repeat}.db"
            ours.append(run_autonorm(args.trials, args.epochs, f"sqlite:///{db}", f"bench{repeat}"))
    ray.shutdown()
    raw_s, ours_s = statistics.median(raw), statistics.median(ours)
    print(f"trials {args.trials} x {args.epochs} epoch(s), {args.repeats} repeats, median seconds per trial")
    print(f"raw Ray Tune      {raw_s:.3f} s")
    print(f"autonorm on Ray   {ours_s:.3f} s")
    print(f"ratio {ours_s / raw_s:.3f} (target <= 1.0)")


if __name__ == "__main__":
    main()
