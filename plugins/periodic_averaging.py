"""Periodic sampling over weight distributions: Tripathi, Liu, Kurup, Shah, Dhar, "Improving Model Training by
Periodic Sampling over Weight Distributions", 2020, arXiv:1905.05774 (v1 2019: "Robust Neural Network Training
using Periodic Sampling over Model Weights"). Relative: SWA, Izmailov, Podoprikhin, Garipov, Vetrov, Wilson,
"Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018, arXiv:1803.05407.

During each period the weights are sampled after every ``every``-th optimizer step; at the end of the period
a combination of the period's samples is loaded back into the model and training continues from it (unlike
SWA, whose average is a separate copy that never feeds back):

- ``pswa`` (Periodically Sampled Weight Averaging): the arithmetic mean of the period's samples;
- ``pwalks`` (Periodic Weight Averaging over Last K Samples): the mean of the last ``k`` samples of the period;
- ``pswm`` (Periodically Sampled Weight Momentum): the exponential average of the period's samples,
  a <- s_1, then a <- beta * a + (1 - beta) * s_i.

Each technique is its own component (not one component with a technique choice), so that each exposes only
its own hyperparameters to the search. Equal and exponential averages are kept by
``torch.optim.swa_utils.AveragedModel``; the running statistics of the loaded-back weights are recomputed as
``torch.optim.swa_utils.update_bn`` does (reset, then the cumulative mean of the per-batch statistics over one
pass of the training data, in train mode) before the model is evaluated, in every layer that keeps them that
way: batch normalization and its variants (``batch_kalman``) and ``iternorm`` (:func:`recompute_statistics`).

No official code is public and these details could not be confirmed from the paper (u); choices made here:

- the period is one epoch; sampling starts in the first epoch; ``every = 1`` (a sample after every step);
  the sampling counter restarts with each period; a period without a sample leaves the model as it is;
- ``k = 10`` for pwalks and ``beta = 0.9`` for pswm (the EMA starts at the period's first sample);
- averaged: all parameters (``model.parameters()``); buffers are not averaged, the batch-norm statistics are
  recomputed instead, on the training tensors as given (without the training-time batch transforms), in
  batches of 256 (a last partial batch is dropped, as in training);
- the optimizer state (momentum, Adam moments) is kept across a load-back, not reset.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import autonorm
from autonorm import Component, Float, Int, TrainingMethod

#: Batch size of the batch-norm recomputation pass.
BN_BATCH_SIZE = 256


def training_batches(x: torch.Tensor, batch_size: int = BN_BATCH_SIZE) -> list[torch.Tensor]:
    """Consecutive batches of ``x``, the last partial one dropped (unless it is the only one)."""
    size = min(batch_size, len(x))
    return [x[i * size : (i + 1) * size] for i in range(len(x) // size)]


@torch.enable_grad()
def recompute_statistics(batches: list[torch.Tensor], model: nn.Module) -> None:
    """``torch.optim.swa_utils.update_bn`` for every layer with running statistics, not only ``_BatchNorm``
    (whose check passes over ``iternorm``): a layer with ``reset_running_stats()`` and a ``momentum`` whose
    None means the cumulative average is reset, and one pass over ``batches`` in train mode averages its
    statistics afresh. The pass keeps autograd on, as training does: ``batch_kalman`` finds the prior it
    mixes into its statistics on the autograd graph, and without one would average plain batch ones."""
    layers = [m for m in model.modules() if hasattr(m, "reset_running_stats") and hasattr(m, "momentum")]
    if not layers:
        return
    momenta, training = [m.momentum for m in layers], model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    model.train(training)


class PeriodicSampling(TrainingMethod):
    """Samples the weights every ``every`` steps; at each epoch end loads the combination of the samples back."""

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.x: torch.Tensor | None = None
        self.steps = 0  # optimizer steps in the current period
        self.count = 0  # samples in the current period
        self.bn_stale = False

    def setup_data(self, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        self.x = x

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.start(model)

    def start(self, model: nn.Module) -> None:
        """Create the period's sample state."""

    def sample(self, model: nn.Module) -> None:
        """Record the current weights."""

    def combined(self) -> list[torch.Tensor]:
        """The period's combination of the samples, one tensor per parameter of the model."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the period's samples."""

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self.sample(model)
            self.count += 1

    @torch.no_grad()
    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        if self.count:
            for p, a in zip(model.parameters(), self.combined(), strict=True):
                p.copy_(a)
            self.bn_stale = True
        self.reset()
        self.steps = self.count = 0

    def eval_model(self, model: nn.Module) -> nn.Module:
        if self.bn_stale and self.x is not None:
            recompute_statistics(training_batches(self.x), model)
            self.bn_stale = False
        return model.eval()


class _Averaged(PeriodicSampling):
    """Keeps the period's average in an ``AveragedModel`` (its first update copies the weights)."""

    def averaged_model(self, model: nn.Module) -> AveragedModel:
        raise NotImplementedError

    def start(self, model: nn.Module) -> None:
        self.averaged = self.averaged_model(model)
        self.averaged.requires_grad_(False)

    def sample(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def combined(self) -> list[torch.Tensor]:
        return list(self.averaged.module.parameters())

    def reset(self) -> None:
        self.averaged.n_averaged.zero_()


class PSWA(_Averaged):
    """PSWA: at each epoch end the weights become the arithmetic mean of the epoch's samples."""

    def averaged_model(self, model: nn.Module) -> AveragedModel:
        return AveragedModel(model)


class PSWM(_Averaged):
    """PSWM: at each epoch end the weights become the exponential average (``beta``) of the epoch's samples."""

    def __init__(self, every: int = 1, beta: float = 0.9) -> None:
        super().__init__(every)
        self.beta = beta

    def averaged_model(self, model: nn.Module) -> AveragedModel:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.beta))


class PWALKS(PeriodicSampling):
    """PWALKS: at each epoch end the weights become the mean of the epoch's last ``k`` samples."""

    def __init__(self, every: int = 1, k: int = 10) -> None:
        super().__init__(every)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.samples: deque[list[torch.Tensor]] = deque(maxlen=k)

    @torch.no_grad()
    def sample(self, model: nn.Module) -> None:
        self.samples.append([p.detach().clone() for p in model.parameters()])

    def combined(self) -> list[torch.Tensor]:
        return [torch.stack(group).mean(0) for group in zip(*self.samples, strict=True)]

    def reset(self) -> None:
        self.samples.clear()


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    every = Int(1, 1, 50, log=True)
    return [
        Component(kind="training", name="pswa", factory=PSWA, params={"every": every}),
        Component(
            kind="training", name="pwalks", factory=PWALKS, params={"every": every, "k": Int(10, 1, 100, log=True)}
        ),
        Component(kind="training", name="pswm", factory=PSWM, params={"every": every, "beta": Float(0.9, 0.5, 0.999)}),
    ]
