"""The baseline normalizations, for ``(N, C, *spatial)`` features (1-D signals and 2-D images alike).

- batchnorm: Ioffe & Szegedy 2015, arXiv:1502.03167; batch statistics in training, running ones in eval.
- groupnorm: Wu & He 2018, arXiv:1803.08494; per sample over groups of consecutive channels.
- layernorm: Ba et al. 2016, arXiv:1607.06450, in the CNN sense of the GN paper: per sample over
  (C, *spatial) with a per-channel affine, i.e. ``GroupNorm(1, C)``.
- instancenorm: Ulyanov et al. 2016, arXiv:1607.08022; per sample and channel over the spatial dims,
  with a per-channel affine, i.e. ``GroupNorm(C, C)``.
- none: no normalization.
"""

from __future__ import annotations

from torch import nn

import autonorm
from autonorm import Component, Float, Int

#: the group counts ``groups: search`` tries: powers of two, which divide the usual channel counts
GROUP_COUNTS = (1, 2, 4, 8, 16, 32)


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over (N, *spatial) for any number of spatial dims (torch's classes fix the rank)."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"BatchNorm expects (N, C, *spatial) input, got shape {tuple(input.shape)}")


def batchnorm(num_channels: int, momentum: float = 0.1) -> nn.Module:
    """Batch Normalization (Ioffe & Szegedy 2015): batch statistics in training, running ones in eval."""
    return BatchNorm(num_channels, eps=1e-5, momentum=momentum)


def groupnorm(num_channels: int, groups: int = 8) -> nn.Module:
    """Group Normalization (Wu & He 2018): per sample over groups of consecutive channels.

    The paper's default is 32 groups; the default here is 8 because search backbones are narrow.
    """
    if num_channels % groups:
        raise ValueError(f"groupnorm: {num_channels} channels cannot be split into {groups} groups")
    return nn.GroupNorm(groups, num_channels, eps=1e-5)


def layernorm(num_channels: int) -> nn.Module:
    """Layer Normalization (Ba et al. 2016) for conv features: per sample over (C, *spatial) = GroupNorm(1, C)."""
    return nn.GroupNorm(1, num_channels, eps=1e-5)


def instancenorm(num_channels: int) -> nn.Module:
    """Instance Normalization (Ulyanov et al. 2016) with affine: per sample and channel = GroupNorm(C, C)."""
    return nn.GroupNorm(num_channels, num_channels, eps=1e-5)


def no_norm(num_channels: int) -> nn.Module:
    """No normalization (identity)."""
    return nn.Identity()


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="batchnorm",
            factory=batchnorm,
            params={"momentum": Float(0.1, 0.01, 0.5, log=True, minimum=0, maximum=1)},
            batch_dependent=True,
        ),
        Component(
            kind="normalization",
            name="groupnorm",
            factory=groupnorm,
            params={"groups": Int(8, 1, 32, log=True, minimum=1, values=GROUP_COUNTS)},
        ),
        Component(kind="normalization", name="layernorm", factory=layernorm),
        Component(kind="normalization", name="instancenorm", factory=instancenorm),
        Component(kind="normalization", name="none", factory=no_norm),
    ]
