"""Weight Standardization (Qiao, Wang, Liu, Shen & Yuille 2019, "Micro-Batch Training with Batch-Channel
Normalization and Weight Standardization", arXiv:1903.10520).

A conv whose weight is standardized per output channel on every forward pass (gradients flow through
the standardization)::

    W_hat[o] = (W[o] - mean(W[o])) / sqrt(var(W[o]) + eps)     # over (in_channels, *kernel)

The variance is the biased one with eps inside the square root, as in the paper's equations (the
official README code divides by the unbiased std plus 1e-5; after a following normalization the
difference is within eps). eps = 1e-5. It belongs on every conv followed by a normalization, never on
the classifier: a normalization component brings it as its ``conv`` factory, which backbones use for
``Layers.conv``. ``gn_ws`` is GroupNorm (Wu & He 2018) with WS, the paper's batch-free combination.
"""

from __future__ import annotations

import torch
from autonorm_plugins.baseline_norms import GROUP_COUNTS, groupnorm
from torch import nn

import autonorm
from autonorm import Component, Int

EPS = 1e-5


def standardize_weight(weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per output channel (dim 0): subtract the mean and divide by sqrt(biased variance + eps)."""
    dims = tuple(range(1, weight.dim()))
    var, mean = torch.var_mean(weight, dim=dims, keepdim=True, correction=0)
    return (weight - mean) * torch.rsqrt(var + eps)


class WSConv1d(nn.Conv1d):
    """``nn.Conv1d`` with a standardized weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize_weight(self.weight), self.bias)


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a standardized weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize_weight(self.weight), self.bias)


#: A weight-standardized conv for 1-D or 2-D input (the ``Component.conv`` factory signature).
ws_conv = autonorm.conv_factory(WSConv1d, WSConv2d)


def gn_ws(num_channels: int, groups: int = 8) -> nn.Module:
    """Group Normalization after weight-standardized convs (Qiao et al. 2019)."""
    return groupnorm(num_channels, groups)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="gn_ws",
            factory=gn_ws,
            params={"groups": Int(8, 1, 32, log=True, minimum=1, values=GROUP_COUNTS)},
            conv=ws_conv,
        )
    ]
