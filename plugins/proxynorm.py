"""Proxy Normalization: LN/GN, then a proxy-normalized activation; no batch dependence.

Labatie, Masters, Eaton-Rosen, Luschi 2021, "Proxy-Normalizing Activations to Match Batch
Normalization while Removing Batch Dependence", NeurIPS 2021, arXiv:2106.03743; official code:
Graphcore examples, TensorFlow CNNs, ``Models/proxy_norm.py``.

``Conv -> Norm (LN or GN, no affine) -> PN-activation``, where the PN-activation of channel c is

    z = phi(gamma_c * y + beta_c)
    Y_c = (1 + gamma'_c) * r + beta'_c          r: the 200 standard-normal quantiles Phi^-1((i + 0.5) / 200)
    m_c, v_c = mean, biased variance over the 200 points of phi(gamma_c * Y_c + beta_c)
    out = (z - m_c) / sqrt(v_c + eps),           eps = 0.03

so ``z`` is normalized by the moments it would have if ``y`` were Gaussian with the learned proxy
mean and scale. The proxy is fixed (quantiles, not random draws), gradients reach all four
parameters through ``m_c`` and ``v_c``, and nothing is reduced over the batch: train and eval agree.

Placement, as the paper's combination rule: PN is used where a norm is followed by an activation
(``Component.pair``: ``Norm (no affine) -> PN-activation``); a norm that nothing follows (ending a
residual branch, on a projection shortcut) stays a plain LN/GN with affine, and the activation after a
residual sum is plain ``phi``. Decisions (u):

- the PN-activation replaces the searched activation, with ``phi = ReLU`` (the paper's ResNet
  experiments; the official EfficientNets use swish); the activation after a residual sum is ReLU too;
- norm eps 1e-3 (``NORM_EPS``) and GN default 4 groups, as in the official EfficientNet scripts
  (``--norm-epsilon``); the norm that ends a branch keeps its shift as well as its scale (the official
  one keeps only the scale, ``center=False``), as the method's description has it. With autonorm's default
  ``train.weight_decay_on: weights`` none of PN's per-channel parameters is decayed: the official code
  leaves gamma/beta out of weight decay too, but gives gamma'/beta' a decay of their own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from autonorm_plugins.baseline_norms import GROUP_COUNTS
from torch import nn

import autonorm
from autonorm import Component, Int


def proxy_points(num_points: int = 200) -> torch.Tensor:
    """The standard-normal quantiles at the midpoints ``(i + 0.5) / num_points``: a fixed N(0, 1) proxy."""
    return torch.special.ndtri((torch.arange(num_points, dtype=torch.float64) + 0.5) / num_points).float()


class ProxyNormActivation(nn.Module):
    """Per-channel affine, activation ``phi``, then normalization by the moments of a Gaussian proxy."""

    def __init__(
        self,
        num_channels: int,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.relu,
        eps: float = 0.03,
        num_points: int = 200,
    ) -> None:
        super().__init__()
        self.activation, self.eps = activation, eps
        self.weight = nn.Parameter(torch.ones(num_channels))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_channels))  # beta
        self.proxy_weight = nn.Parameter(torch.zeros(num_channels))  # gamma': proxy scale is 1 + gamma'
        self.proxy_bias = nn.Parameter(torch.zeros(num_channels))  # beta'
        self.register_buffer("points", proxy_points(num_points), persistent=False)

    def proxy_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel: the mean and biased variance of ``phi(gamma * Y + beta)`` over the proxy points."""
        proxy = (1 + self.proxy_weight)[:, None] * self.points + self.proxy_bias[:, None]
        z = self.activation(self.weight[:, None] * proxy + self.bias[:, None])
        return z.mean(1), z.var(1, unbiased=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *[1] * (y.dim() - 2))
        mean, var = self.proxy_moments()
        z = self.activation(y * self.weight.view(shape) + self.bias.view(shape))
        inv_std = torch.rsqrt(var + self.eps)
        return torch.addcmul((-mean * inv_std).view(shape), z, inv_std.view(shape))  # saves only z for backward


#: The LN/GN epsilon of the official EfficientNet scripts (``--norm-epsilon``).
NORM_EPS = 1e-3


def _group_norm(num_channels: int, groups: int, affine: bool) -> nn.Module:
    if num_channels % groups:
        raise ValueError(f"proxynorm_gn: {num_channels} channels cannot be split into {groups} groups")
    return nn.GroupNorm(groups, num_channels, eps=NORM_EPS, affine=affine)


def proxynorm_gn(num_channels: int, groups: int = 4) -> nn.Module:
    """Proxy Normalization with GroupNorm (Labatie et al. 2021): where no activation follows, GN with affine."""
    return _group_norm(num_channels, groups, affine=True)


def proxynorm_gn_pair(num_channels: int, groups: int = 4) -> nn.Module:
    """GN without affine, then the proxy-normalized activation: the norm-activation pair."""
    return nn.Sequential(_group_norm(num_channels, groups, affine=False), ProxyNormActivation(num_channels))


def proxynorm_ln(num_channels: int) -> nn.Module:
    """Proxy Normalization with LayerNorm (Labatie et al. 2021): where no activation follows, LN (GroupNorm(1, C))
    with affine."""
    return _group_norm(num_channels, 1, affine=True)


def proxynorm_ln_pair(num_channels: int) -> nn.Module:
    """LN without affine, then the proxy-normalized activation: the norm-activation pair."""
    return nn.Sequential(_group_norm(num_channels, 1, affine=False), ProxyNormActivation(num_channels))


def relu(num_channels: int) -> nn.Module:
    """phi after a residual sum, where no norm precedes it."""
    return nn.ReLU()


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="proxynorm_gn",
            factory=proxynorm_gn,
            params={"groups": Int(4, 1, 32, log=True, minimum=1, values=GROUP_COUNTS)},
            pair=proxynorm_gn_pair,
            own_activation=relu,
        ),
        Component(
            kind="normalization", name="proxynorm_ln", factory=proxynorm_ln, pair=proxynorm_ln_pair, own_activation=relu
        ),
    ]
