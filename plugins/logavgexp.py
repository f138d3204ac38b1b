"""LogAvgExp pooling: ``t * log(mean(exp(x / t)))``, global and as a local downsampling.

Lowe, Trappenberg & Oore 2021, "LogAvgExp Provides a Principled and Performant Global Pooling
Operator" (arXiv:2111.01742). LogSumExp is the OR of logits; dividing the sum by the number of
elements pooled makes the result independent of the window size. The temperature ``t`` moves it
smoothly from the max of its operands (``t -> 0+``) to their mean (``t -> +inf``), and it always lies
between the two.

Computed stably as ``t * (logsumexp(x / t) - log n)``. Defaults: ``t = 1``, learned. The learned
temperature is parametrized as ``t = exp(s)`` (our choice: it keeps ``t`` positive and makes steps
multiplicative, which suits a scale spanning decades). The local form pools 3-wide windows with
stride 2 and padding 1 per spatial dim (the overlapping pooling of Springenberg et al. 2014's base
models), counting only the elements inside the input, so it halves sizes as a stride-2 conv does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import autonorm
from autonorm import Choice, Component, Float, Layers


def logavgexp(x: torch.Tensor, dim: int | tuple[int, ...], temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``t * log(mean(exp(x / t)))`` over ``dim``, computed as ``t * (logsumexp(x / t) - log n)``."""
    return temperature * _log_mean_exp(x / temperature, dim)


def _log_mean_exp(z: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """``logsumexp(z) - log n``, where ``n`` counts the elements that are not ``-inf`` (padding)."""
    dims = (dim,) if isinstance(dim, int) else dim
    count = (z > -math.inf).sum(dims).to(z.dtype)
    return torch.logsumexp(z, dims) - torch.log(count)


class _Temperature(nn.Module):
    """A positive temperature: ``exp(log_t)``, learned or fixed."""

    def __init__(self, temperature: float, learnable: bool) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"the temperature must be positive, got {temperature}")
        log_t = torch.tensor(math.log(temperature))
        if learnable:
            self.log_t = nn.Parameter(log_t)
        else:
            self.register_buffer("log_t", log_t)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_t.exp()


class GlobalLogAvgExp(_Temperature):
    """(N, C, *spatial) -> (N, C): LogAvgExp over all spatial positions of each channel."""

    def __init__(self, temperature: float = 1.0, learnable: bool = True) -> None:
        super().__init__(temperature, learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logavgexp(x.flatten(2), -1, self.temperature)


class LocalLogAvgExp(_Temperature):
    """LogAvgExp over ``kernel_size``-wide windows moved by ``stride`` along every spatial dim.

    Works on (N, C, L) and (N, C, H, W); the border is padded with ``padding`` absent elements.
    """

    def __init__(
        self,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        temperature: float = 1.0,
        learnable: bool = True,
    ) -> None:
        super().__init__(temperature, learnable)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial, t = x.dim() - 2, self.temperature
        # pad after scaling: -inf / t would give the temperature a NaN gradient
        z = nn.functional.pad(x / t, [self.padding] * (2 * spatial), value=-math.inf)
        for d in range(2, 2 + spatial):  # each unfold appends one window dim at the end
            z = z.unfold(d, self.kernel_size, self.stride)
        return t * _log_mean_exp(z, tuple(range(-spatial, 0)))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def logavgexp_downsampling(
    layers: Layers, cin: int, cout: int, temperature: float = 1.0, learnable: bool = True
) -> nn.Module:
    """A 3x3 conv, then LogAvgExp over 3-wide windows with stride 2 (halves every spatial size)."""
    return nn.Sequential(layers.conv(cin, cout, 3), LocalLogAvgExp(3, 2, 1, temperature, learnable))


_PARAMS = {"temperature": Float(1.0, 0.01, 10.0, log=True), "learnable": Choice(True, (True, False))}


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(kind="pooling", name="logavgexp", factory=GlobalLogAvgExp, params=_PARAMS),
        Component(kind="downsampling", name="logavgexp", factory=logavgexp_downsampling, params=_PARAMS),
    ]
