"""Kaiming (He) initialization: He et al. 2015, "Delving Deep into Rectifiers", arXiv:1502.01852.

Conv weights ~ N(0, 2 / fan) with the fan of ``mode`` (fan_out by default, as torchvision's ResNets),
linear weights ~ N(0, 2 / fan_in), biases zero, normalization scales one and shifts zero.

Linear layers always take the forward (fan_in) form. The paper's factor 2 comes from a ReLU: in the
forward form, the one before the layer (a classifier's input is pooled ReLU features), in the backward
(fan_out) form, the one after it, which a classifier does not have; and a classifier's fan_out is its
number of classes, so N(0, 2 / fan_out) would give 10-class logits a standard deviation of about
sqrt(2 * width / 10) and an initial cross-entropy several times ln(10).
"""

from __future__ import annotations

import torch
from torch import nn

import autonorm
from autonorm import Choice, Component


def kaiming(model: nn.Module, sample_batch: torch.Tensor | None = None, mode: str = "fan_out") -> None:
    """He-normal weights for conv (``mode``'s fan) and linear layers (fan_in), gain sqrt(2) for ReLU, zero
    biases, unit norm scales."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            fan = "fan_in" if isinstance(module, nn.Linear) else mode
            nn.init.kaiming_normal_(module.weight, mode=fan, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="initializer",
            name="kaiming",
            factory=kaiming,
            params={"mode": Choice("fan_out", ("fan_in", "fan_out"))},
        )
    ]
