"""Filter Response Normalization with its Thresholded Linear Unit (Singh & Krishnan 2019, "Filter Response
Normalization Layer: Eliminating Batch Dependence in the Training of Deep Neural Networks", CVPR 2020,
arXiv:1911.09737).

Per sample and channel, over the spatial dims (L, or H and W), with no mean subtraction::

    nu2 = mean(x^2)                      # mean square, not variance
    y   = gamma * x / sqrt(nu2 + eps) + beta
    z   = max(y, tau)                    # TLU: a ReLU with a learned per-channel threshold

gamma, beta, tau have shape (C,) and start at 1, 0, 0; there are no running statistics, so train and
eval are the same computation and each sample's output ignores the rest of the batch.

In a backbone FRN replaces the normalization and TLU replaces the activation after it (the component's
``own_activation``): ``conv -> norm -> act`` becomes ``conv -> FRN -> TLU``, a norm with no activation after
it (the last one of a residual branch) is FRN alone, and the activation after a residual sum is a TLU.

Defaults: ``eps = 1e-6`` (the paper's Algorithm 1; timm uses 1e-5). Where the spatial extent is 1
(1x1 maps, FC layers) ``x / sqrt(x^2 + eps)`` is nearly ``sign(x)``, and the paper makes eps learnable.
Decision on the open point of its form: with ``learned_eps=True`` the layer uses ``eps + |eps_l|``
with a learned scalar ``eps_l`` starting at 1e-4 (not 0: ``|.|`` has no gradient at 0), so eps never
drops below the fixed floor. The mean square is computed in float32 at least, as half precision
overflows.

Decisions (u): no learning-rate warm-up comes with FRN (the paper trains with one; a trial's schedule is
``train.schedule``'s, as for every normalization, so comparisons share it). ``(N, C)`` features (after
global pooling, in an MLP) are refused with a ValueError rather than normalized: with no spatial extent
the layer would compute ``x / sqrt(x^2 + eps)``, a sign function; the backbones place normalization on
``(N, C, *spatial)`` maps only.
"""

from __future__ import annotations

import torch
from torch import nn

import autonorm
from autonorm import Choice, Component, Float

#: where a learned eps starts (above the fixed floor ``eps``).
LEARNED_EPS_INIT = 1e-4


def _per_channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (C,) parameter shaped to broadcast over (N, C, *spatial)."""
    return p.view(1, -1, *[1] * (x.dim() - 2))


class FilterResponseNorm(nn.Module):
    """FRN without TLU: ``gamma * x / sqrt(mean_spatial(x^2) + eps) + beta``, on (N, C, *spatial)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, learned_eps: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_channels))
        self.bias = nn.Parameter(torch.empty(num_channels))
        self.eps_learned = nn.Parameter(torch.empty(())) if learned_eps else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.eps_learned is not None:
            nn.init.constant_(self.eps_learned, LEARNED_EPS_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"FRN expects (N, C, *spatial) input, got shape {tuple(x.shape)}")
        dtype = torch.promote_types(x.dtype, torch.float32)
        nu2 = x.to(dtype).pow(2).mean(dim=tuple(range(2, x.dim())), keepdim=True)
        eps = self.eps if self.eps_learned is None else self.eps + self.eps_learned.abs()
        xhat = (x * torch.rsqrt(nu2 + eps)).to(x.dtype)
        return _per_channel(self.weight, x) * xhat + _per_channel(self.bias, x)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, learned_eps={self.eps_learned is not None}"


class TLU(nn.Module):
    """Thresholded Linear Unit ``max(x, tau)`` with a learned per-channel ``tau`` starting at 0 (= ReLU)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.tau = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, _per_channel(self.tau, x))


def frn(num_channels: int, eps: float = 1e-6, learned_eps: bool = False) -> nn.Module:
    """Filter Response Normalization (Singh & Krishnan 2019), with TLU as its activation."""
    return FilterResponseNorm(num_channels, eps=eps, learned_eps=learned_eps)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="frn",
            factory=frn,
            params={"eps": Float(1e-6, 1e-8, 1e-3, log=True), "learned_eps": Choice(False, (False, True))},
            own_activation=TLU,
        )
    ]
