"""EMAN, Exponential Moving Average Normalization: Cai, Ravichandran, Maji, Fowlkes, Tu, Soatto, "Exponential
Moving Average Normalization for Self-supervised and Semi-supervised Learning", CVPR 2021, arXiv:2101.08482
(official code ``amazon-research/exponential-moving-average-normalization``).

A teacher copy of the model follows the student: after every optimizer step, every floating-point entry of
the state_dict, parameters AND the batch-norm buffers ``running_mean``/``running_var``, becomes
t <- m * t + (1 - m) * s; integer entries (``num_batches_tracked``) are copied. The teacher is always run in
eval mode, so its normalizations use these averaged statistics, never the statistics of a batch: its output
for a sample does not depend on the other samples. A plain EMA teacher averages parameters only and
normalizes with batch statistics.

Defaults and choices:

- ``momentum = 0.999`` (the paper's MoCo and FixMatch setting). The teacher then averages over about 1000
  steps; for short runs a smaller m (e.g. 1 - 10 / steps) lets it leave its initialization (u);
- the teacher is a deep copy of the model as it is at setup, parameters and buffers alike (the official
  constructors copy parameters only, which is the same from scratch);
- the teacher gives no training targets here (the paper's self- and semi-supervised losses use it for
  targets); it is the model that is evaluated, and the paper's evaluation of the student is not reproduced (u).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import autonorm
from autonorm import Component, Float, TrainingMethod


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """t <- m t + (1 - m) s over the floating-point state_dict entries; the other entries are copied."""
    mine, theirs = teacher.state_dict(), student.state_dict()
    if mine.keys() != theirs.keys():
        raise ValueError("eman: teacher and student state_dict keys differ")
    for key, t in mine.items():
        s = theirs[key]
        if t.is_floating_point():
            t.mul_(momentum).add_(s * (1 - momentum))
        else:
            t.copy_(s)


class EMAN(TrainingMethod):
    """Keeps an eval-mode teacher whose parameters and normalization statistics are EMAs of the student's."""

    def __init__(self, momentum: float = 0.999) -> None:
        self.momentum = momentum
        self.teacher: nn.Module | None = None

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.teacher = copy.deepcopy(model).eval()
        self.teacher.requires_grad_(False)

    def after_step(self, model: nn.Module) -> None:
        ema_update(self.teacher, model, self.momentum)

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.teacher.eval()


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [Component(kind="training", name="eman", factory=EMAN, params={"momentum": Float(0.999, 0.9, 0.9999)})]
