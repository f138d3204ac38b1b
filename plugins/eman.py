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

- ``momentum = 0.999`` (the paper's MoCo and FixMatch setting), with a warm-up (u): update t (from 0) uses
  m_t = min(m, (1 + t) / (10 + t)), the rule of TensorFlow's ``ExponentialMovingAverage(num_updates=)``
  (timm's ``ModelEmaV3(use_warmup=True)`` warms up otherwise, 1 - (1 + t / gamma)^-power). The paper's
  runs take hundreds of thousands of steps, where m_t = m after the first 10^4; a search's trials take
  hundreds, where a constant 0.999 leaves the evaluated teacher at about its random initialization
  (0.999^170 = 0.84: a 10-epoch digits trial scored 0.11 with EMAN, 0.99 without). ``warmup: false``
  gives the constant m of the paper;
- the teacher is a deep copy of the model as it is at setup, parameters and buffers alike (the official
  constructors copy parameters only, which is the same from scratch);
- the teacher is the model evaluated (decided here). In the paper the teacher is a training device:
  its self- and semi-supervised losses (MoCo, BYOL, FixMatch) take their targets from it, and the
  student is what is evaluated (``main_fixmatch.py``'s ``validate``; the linear probes of the student
  encoder). Supervised training has no loss that takes targets from a teacher, so the student would
  train as if there were none, and evaluating it would measure nothing of EMAN; evaluating the
  teacher measures its batch-independent, averaged model instead.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import autonorm
from autonorm import Choice, Component, Float, TrainingMethod


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

    def __init__(self, momentum: float = 0.999, warmup: bool = True) -> None:
        self.momentum, self.warmup = momentum, warmup
        self.updates = 0
        self.teacher: nn.Module | None = None

    def current_momentum(self) -> float:
        """m, or during the warm-up the smaller (1 + t) / (10 + t) of update t."""
        if not self.warmup:
            return self.momentum
        return min(self.momentum, (1 + self.updates) / (10 + self.updates))

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.teacher = copy.deepcopy(model).eval()
        self.teacher.requires_grad_(False)

    def after_step(self, model: nn.Module) -> None:
        ema_update(self.teacher, model, self.current_momentum())
        self.updates += 1

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.teacher.eval()


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="training",
            name="eman",
            factory=EMAN,
            params={"momentum": Float(0.999, 0.9, 0.9999, minimum=0, maximum=1), "warmup": Choice(True, (True, False))},
        )
    ]
