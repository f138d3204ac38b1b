"""Cost of every registered normalization relative to batchnorm, in the same process.

Each normalization is built into the same CPU-sized CIFAR ResNet (``plugins/resnet.py`` through
:func:`autonorm.build_model`, with relu, avg pooling, a linear head, kaiming init and the
normalization's default hyperparameters). Two figures per normalization, as ratios to batchnorm:

- step time: one training step (forward, backward, SGD step, the normalization's own training-method
  hooks such as MimicNorm's weight projection), median over rounds; the normalizations take turns
  within each round so that drift of a shared machine hits them alike;
- saved activations: bytes of the tensors autograd saves for the backward pass during one forward
  (``torch.autograd.graph.saved_tensors_hooks``), each storage counted once, parameters excluded.

    python benchmarks/normalization_cost.py [--depth 8] [--width 16] [--batch 32] [--size 32] [--rounds 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from autonorm import TrialConfig, build_model, get_registry
from autonorm.build import build_training_methods
from autonorm.training_method import TrainingMethod


def config(norm: str, depth: int, width: int, size: int) -> TrialConfig:
    return TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=(3, size, size),
        num_classes=10,
        model={"name": "resnet", "params": {"depth": depth, "width": width}},
        components={
            "normalization": {"name": norm},
            "activation": {"name": "relu"},
            "pooling": {"name": "avg"},
            "head": {"name": "linear"},
            "initializer": {"name": "kaiming"},
        },
        epochs=1,
        train={},
    )


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward during one training forward (storages once, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


class Runner:
    """One normalization's model, optimizer and training-method hooks, ready to take steps."""

    def __init__(self, model: nn.Module, methods: list[TrainingMethod]) -> None:
        self.model, self.methods = model.train(), methods
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for method in methods:
            method.setup(model, self.optimizer)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for method in self.methods:
            method.after_step(self.model)

    def seconds_per_step(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step(x, y)
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(1))

    runners: dict[str, Runner] = {}
    saved: dict[str, int] = {}
    failed: dict[str, str] = {}
    for name in get_registry().names("normalization"):
        try:
            cfg = config(name, args.depth, args.width, args.size)
            torch.manual_seed(0)
            runner = Runner(build_model(cfg), build_training_methods(cfg))
            saved[name] = saved_activation_bytes(runner.model, x)
            runner.step(x, y)  # warm-up
            runners[name] = runner
        except Exception as exc:  # noqa: BLE001 - report the normalization and go on with the others
            failed[name] = f"{type(exc).__name__}: {exc}"

    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            times[name].append(runner.seconds_per_step(x, y, args.steps))

    base_time, base_saved = statistics.median(times["batchnorm"]), saved["batchnorm"]
    print(
        f"ResNet-{args.depth} width {args.width}, batch {args.batch} x 3x{args.size}x{args.size}, "
        f"{args.threads} thread(s), median of {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'normalization':<16} {'ms/step':>8} {'time/BN':>8} {'saved MiB':>10} {'saved/BN':>9}")
    for name in sorted(runners, key=lambda n: statistics.median(times[n])):
        step = statistics.median(times[name])
        print(
            f"{name:<16} {1000 * step:8.1f} {step / base_time:8.2f} "
            f"{saved[name] / 2**20:10.2f} {saved[name] / base_saved:9.2f}"
        )
    for name, error in failed.items():
        print(f"{name:<16} failed: {error}")


if __name__ == "__main__":
    main()
