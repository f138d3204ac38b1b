"""Batch-Channel Normalization (Qiao, Wang, Liu, Shen & Yuille 2019, "Rethinking Normalization and
Elimination Singularity in Neural Networks", arXiv:1911.09738; the micro-batch variant in "Micro-Batch
Training with Batch-Channel Normalization and Weight Standardization", arXiv:1903.10520).

Two stages on (N, C, *spatial), eps = 1e-5 in both:

1. a batch stage, per channel over (N, *spatial) with a per-channel affine: BatchNorm (batch statistics
   in training, running ones in eval), or with ``estimate=True`` the micro-batch variant, which always
   normalizes with estimates ``mu, var`` (buffers, starting at 0 and 1). Each training step updates them
   without gradient, ``mu <- (1-r) mu + r mean(x)``, ``var <- (1-r) var + r mean((x - mu_old)^2)`` (around
   the old estimate), then normalizes with the new ones; eval uses them frozen.
2. a channel stage: per sample, GroupNorm over groups of consecutive channels without affine, then a
   per-GROUP affine (G,), not a per-channel one. Always per-sample statistics.

Defaults: the papers use 32 groups; here 8, as search backbones are narrow (as for ``groupnorm``).
Decision on the open point of the update rate r: the official code leaves it to the training script (its
buffer starts at 0, which would never move the estimates); the default here is r = 0.01, so an estimate
averages over about a hundred micro-batches, the regime the variant is for, and r is searched in
[1e-3, 0.3]. Both variants declare ``batch_dependent``: the estimate variant uses the batch only through
the update, which still makes a sample's training output depend (slightly) on the rest of its batch.

BCN comes with Weight Standardization on every conv before it (the papers' recommended combination):
the component's ``conv`` factory is :func:`autonorm_plugins.weight_standardization.ws_conv`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autonorm_plugins.baseline_norms import GROUP_COUNTS, BatchNorm
from autonorm_plugins.weight_standardization import ws_conv
from torch import nn

import autonorm
from autonorm import Choice, Component, Float, Int

EPS = 1e-5


class EstimatedBatchNorm(nn.Module):
    """The micro-batch batch stage: normalizes with running estimates in training too (no gradient
    through them); each training step moves the estimates by ``rate`` towards the batch's statistics."""

    def __init__(self, num_channels: int, rate: float = 0.01, eps: float = EPS) -> None:
        super().__init__()
        self.rate, self.eps = rate, eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                dims = [0, *range(2, x.dim())]
                old = self.running_mean.view(1, -1, *[1] * (x.dim() - 2))
                self.running_var.lerp_((x - old).pow(2).mean(dims).to(self.running_var.dtype), self.rate)
                self.running_mean.lerp_(x.mean(dims).to(self.running_mean.dtype), self.rate)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, rate={self.rate}, eps={self.eps}"


class BatchChannelNorm(nn.Module):
    """BCN: a batch stage (BatchNorm, or :class:`EstimatedBatchNorm`) then GroupNorm with a per-group affine."""

    def __init__(
        self, num_channels: int, groups: int = 8, estimate: bool = False, rate: float = 0.01, eps: float = EPS
    ) -> None:
        super().__init__()
        if num_channels % groups:
            raise ValueError(f"bcn: {num_channels} channels cannot be split into {groups} groups")
        self.groups, self.eps = groups, eps
        self.batch = EstimatedBatchNorm(num_channels, rate, eps) if estimate else BatchNorm(num_channels, eps=eps)
        self.weight = nn.Parameter(torch.ones(groups))
        self.bias = nn.Parameter(torch.zeros(groups))

    def channel_norm(self, y: torch.Tensor) -> torch.Tensor:
        """The channel stage: per-sample GroupNorm, then the per-group affine."""
        per_channel = y.shape[1] // self.groups
        weight = self.weight.repeat_interleave(per_channel)
        bias = self.bias.repeat_interleave(per_channel)
        return F.group_norm(y, self.groups, weight, bias, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_norm(self.batch(x))


def bcn(num_channels: int, groups: int = 8, estimate: bool = False, rate: float = 0.01) -> nn.Module:
    """Batch-Channel Normalization (Qiao et al. 2019) after weight-standardized convs."""
    return BatchChannelNorm(num_channels, groups=groups, estimate=estimate, rate=rate)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="bcn",
            factory=bcn,
            params={
                "groups": Int(8, 1, 32, log=True, minimum=1, values=GROUP_COUNTS),
                "estimate": Choice(False, (False, True)),
                "rate": Float(0.01, 1e-3, 0.3, log=True),
            },
            batch_dependent=True,
            conv=ws_conv,
        )
    ]
