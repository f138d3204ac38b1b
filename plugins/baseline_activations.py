"""Baseline activations: ReLU (Nair & Hinton 2010) and ELU (Clevert et al. 2015, arXiv:1511.07289)."""

from __future__ import annotations

from torch import nn

import autonorm
from autonorm import Component, Float


def relu(num_channels: int) -> nn.Module:
    """Rectified linear unit, max(x, 0)."""
    return nn.ReLU()


def elu(num_channels: int, alpha: float = 1.0) -> nn.Module:
    """Exponential linear unit (Clevert et al. 2015): x if x > 0 else alpha * (exp(x) - 1)."""
    return nn.ELU(alpha=alpha)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(kind="activation", name="relu", factory=relu),
        Component(kind="activation", name="elu", factory=elu, params={"alpha": Float(1.0, 0.1, 2.0)}),
    ]
