"""Kaiming (He) initialization: He et al. 2015, "Delving Deep into Rectifiers", arXiv:1502.01852.

Conv and linear weights ~ N(0, 2 / fan), biases zero, normalization scales one and shifts zero.
"""

from __future__ import annotations

import torch
from torch import nn

import autonorm
from autonorm import Choice, Component


def kaiming(model: nn.Module, sample_batch: torch.Tensor | None = None, mode: str = "fan_out") -> None:
    """He-normal weights for conv and linear layers (gain sqrt(2) for ReLU), zero biases, unit norm scales."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
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
