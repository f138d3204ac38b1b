"""Baseline global pooling: average (Lin et al. 2013, "Network in Network") and max, over every spatial dim."""

from __future__ import annotations

import torch
from torch import nn

import autonorm
from autonorm import Component


class GlobalAvgPool(nn.Module):
    """(N, C, *spatial) -> (N, C): mean over the spatial dims."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(-1)


class GlobalMaxPool(nn.Module):
    """(N, C, *spatial) -> (N, C): max over the spatial dims."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).amax(-1)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(kind="pooling", name="avg", factory=GlobalAvgPool),
        Component(kind="pooling", name="max", factory=GlobalMaxPool),
    ]
