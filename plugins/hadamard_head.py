"""A fixed Hadamard classifier with one learned scale.

Hoffer, Hubara & Soudry 2018, "Fix your classifier: the marginal value of training the last weight
layer" (ICLR 2018, arXiv:1801.04540; reference code eladhoffer/fix_your_classifier). The class
weights are not trained: they are rows of a Hadamard matrix (entries +-1, rows orthogonal), and only
a global scale (and, as in the reference code, a per-class bias) is learned::

    logits = scale * H[:classes, :features] @ (x / ||x||) + bias

Features are L2-normalized so that the single scale sets the logits' range; it starts at
``1 / sqrt(classes)`` and the bias uniform in +-that, as in the reference code. The matrix is a
non-trainable buffer that is not saved in the state dict (it is rebuilt from the sizes), so the head
holds ``classes + 1`` parameters against ``features * classes + classes`` for a dense linear head.

Sizes that are not powers of two: the Sylvester Hadamard matrix of order ``n``, the smallest power of
two holding both sizes, is cut to its first ``classes`` rows and ``features`` columns (as the
reference code does); equivalently the features are zero-padded to ``n``. Cut rows stay exactly
orthogonal when ``features`` is a power of two; otherwise they are not (10 classes over 24 features:
the largest |cosine| between class rows is 1/3, over 40 features 1/5). A Sylvester row restricted to
its first ``2^k`` columns repeats with period ``2^k``, so with more classes than features some
classes would get identical weights: the head refuses that case.

Inference: ``H x`` is a fast Walsh-Hadamard transform (:func:`fwht`: ``2 n sqrt(n)`` multiply-adds
for ``n = 1024`` instead of ``features * classes``); ``fast=True`` (default) uses it (differentiable,
equal to the matrix product up to rounding), ``fast=False`` the matrix product with the buffer.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

import autonorm
from autonorm import Choice, Component


def sylvester_hadamard(n: int) -> torch.Tensor:
    """The ``n x n`` Sylvester Hadamard matrix (``n`` a power of two): ``H[i, j] = (-1)^popcount(i & j)``."""
    return _sylvester(n).clone()


@functools.lru_cache(maxsize=32)
def _sylvester(n: int) -> torch.Tensor:
    """Cached and shared: never modify the result."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power-of-two order, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def fwht(x: torch.Tensor, radix_bits: int = 5) -> torch.Tensor:
    """Fast Walsh-Hadamard transform along the last dim (a power of two ``n``): ``x @ H_n``.

    Uses ``H_(ab) = H_a kron H_b``: the last dim is viewed as a grid of sides of at most
    ``2^radix_bits`` and each side is multiplied by its small Hadamard matrix, ``n * sum(sides)``
    multiply-adds instead of ``n^2`` (radix-2 butterflies would need ``n log2 n`` additions but one pass
    over memory per bit, slower in eager PyTorch).
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"the fast Walsh-Hadamard transform needs a power-of-two length, got {n}")
    bits = n.bit_length() - 1
    parts = max(1, -(-bits // radix_bits))
    sides = [2 ** (bits // parts + (i < bits % parts)) for i in range(parts)]
    lead = x.shape[:-1]
    x = x.reshape(*lead, *sides)
    for axis, side in enumerate(sides, start=len(lead)):
        h = _sylvester(side).to(dtype=x.dtype, device=x.device)
        x = (x.movedim(axis, -1) @ h).movedim(-1, axis)
    return x.reshape(*lead, n)


class HadamardHead(nn.Module):
    """``(N, features) -> (N, classes)``: a fixed Hadamard projection of the normalized features, scaled."""

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, fast: bool = True) -> None:
        super().__init__()
        if num_classes > in_features:
            raise ValueError(
                f"a Hadamard head needs at least as many features as classes (got {in_features} features for "
                f"{num_classes} classes): cut Hadamard rows would repeat; widen the backbone"
            )
        self.in_features, self.num_classes, self.fast = in_features, num_classes, fast
        self.order = 1 << max(in_features - 1, 0).bit_length()
        self.register_buffer("weight", sylvester_hadamard(self.order)[:num_classes, :in_features], persistent=False)
        init = 1 / math.sqrt(num_classes)
        self.scale = nn.Parameter(torch.tensor(init))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-init, init)) if bias else None
        self.eps = 1e-8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / (x.norm(dim=-1, keepdim=True) + self.eps)
        if self.fast:
            x = nn.functional.pad(x, (0, self.order - self.in_features))
            out = fwht(x)[..., : self.num_classes]
        else:
            out = x @ self.weight.T
        out = self.scale * out
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, order={self.order}, fast={self.fast}"


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="head",
            name="hadamard",
            factory=HadamardHead,
            params={"bias": Choice(True, (True, False)), "fast": Choice(True, (True, False))},
        )
    ]
