"""Small BatchNorm scale initialization with a reduced scale learning rate: Davis & Frank 2022,
"Revisiting Batch Norm Initialization", ECCV 2022, arXiv:2110.13989 (official code: osu-cvl/revisiting-bn-init).

The paper observes that the learned BN scale gamma stays near its initial value and that the normalized
values can be overly large; it initializes every BatchNorm scale to a constant below one and divides the
learning rate of the scales by a constant ``c``, with no weight decay on them. Defaults from the official
training script: ``gamma = 0.1`` ("0.1 seems to be a good starting point"), ``c = 100``; conv weights
He-normal (fan_in), every bias and BN shift zero.

Only BatchNorm layers are changed (the paper's subject); with other normalizations this is He init.
The paper's optional input-normalization BN prepended to the network is an architecture change and is
not part of this initializer. The learning-rate reduction is a :class:`TrainingMethod` that moves the
scales into their own optimizer group at ``lr / c`` (the schedule applies to it as to the others).
"""

from __future__ import annotations

import torch
from autonorm_plugins.kaiming import kaiming
from torch import nn

import autonorm
from autonorm import Component, Float
from autonorm.training_method import TrainingMethod


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The affine BatchNorm layers of ``model``."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def bn_gamma(
    model: nn.Module, sample_batch: torch.Tensor | None = None, gamma: float = 0.1, lr_divisor: float = 100.0
) -> None:
    """He-normal (fan_in) weights, zero biases, and every BatchNorm scale set to ``gamma`` (Davis & Frank 2022).

    Data-free: ``sample_batch`` is not used. ``lr_divisor`` is applied in training by :class:`ScaleLearningRate`.
    """
    kaiming(model, mode="fan_in")
    for bn in batchnorm_layers(model):
        nn.init.constant_(bn.weight, gamma)


class ScaleLearningRate(TrainingMethod):
    """Trains the BatchNorm scales at ``lr / lr_divisor`` and without weight decay (``gamma`` is the
    initializer's and unused here)."""

    def __init__(self, gamma: float = 0.1, lr_divisor: float = 100.0) -> None:
        self.lr_divisor = lr_divisor

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        scales = {id(bn.weight) for bn in batchnorm_layers(model)}
        new_groups = []
        for group in optimizer.param_groups:
            moved = [p for p in group["params"] if id(p) in scales]
            if not moved:
                continue
            group["params"] = [p for p in group["params"] if id(p) not in scales]
            new_groups.append({**group, "params": moved, "lr": group["lr"] / self.lr_divisor, "weight_decay": 0.0})
        for group in new_groups:
            optimizer.add_param_group(group)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="initializer",
            name="bn_gamma",
            factory=bn_gamma,
            params={"gamma": Float(0.1, 0.01, 1.0, log=True), "lr_divisor": Float(100.0, 1.0, 1000.0, log=True)},
            training_method=ScaleLearningRate,
        )
    ]
