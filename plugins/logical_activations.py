"""Logical activation functions: AND_AIL, OR_AIL and XNOR_AIL, and the paper's ensembles of them.

Lowe, Earle, d'Eon, Trappenberg & Oore 2022, "Logical Activation Functions: Logit-space equivalents
of Probabilistic Boolean Operators" (NeurIPS 2022, arXiv:2110.11940); reference code
DalhousieAI/pytorch-logit-logic.

Read as logits of independent features, two pre-activations ``x, y`` combine exactly as
``AND = logit(σ(x) σ(y))``, ``OR = logit(1 - (1 - σ(x))(1 - σ(y)))`` and
``XNOR = logit(σ(x) σ(y) + (1 - σ(x))(1 - σ(y)))``. The AIL forms ("Approximate for Independent
Logits") need only comparisons and additions::

    AND_AIL(x, y)  = x + y          if x < 0 and y < 0, else min(x, y)
    OR_AIL(x, y)   = x + y          if x > 0 and y > 0, else max(x, y)
    XNOR_AIL(x, y) = sign(x y) min(|x|, |y|)

(AND adds evidence where both features are likely absent, since there the probabilities multiply;
OR is its De Morgan dual, ``OR_AIL(x, y) = -AND_AIL(-x, -y)``.) The error against the exact operator
is at most ln 3 for AND/OR (at the origin) and ln 2 for XNOR (on the diagonal), and vanishes in the
asymptotes the approximations are built from.

Each operator acts on pairs of consecutive channels ``(2i, 2i + 1)``, so it halves the channel count
(``channel_ratio`` 0.5; the backbones widen the layer before it through ``Layers.pre_act``). The
paper's ensembles (its Sec. 4 and the reference code):

- ``_dup`` (duplication): every operator is applied to every pair and the results are concatenated,
  so ``{OR, AND}`` and ``{OR, XNOR}`` keep the channel count (ratio 1.0) and ``{OR, AND, XNOR}``
  gives 3 outputs per 2 inputs (ratio 1.5: the backbone width must then be a multiple of 3).
- ``_part`` (partition): the pairs are split into near-equal groups, one per operator (ratio 0.5).

``normalize`` (reference code's "NAIL" variants, off by default as in the paper's main results)
subtracts the analytic mean and divides by the analytic standard deviation of each operator's output
for independent standard normal inputs, so a unit-normal pre-activation gives a zero-mean,
unit-variance output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

import autonorm
from autonorm import Choice, Component


def and_ail(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AND_AIL: ``x + y`` where both are negative, else ``min(x, y)``."""
    return torch.where((x < 0) & (y < 0), x + y, torch.minimum(x, y))


def or_ail(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """OR_AIL: ``x + y`` where both are positive, else ``max(x, y)``."""
    return torch.where((x > 0) & (y > 0), x + y, torch.maximum(x, y))


def xnor_ail(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """XNOR_AIL: ``sign(x y) min(|x|, |y|)``."""
    return torch.sign(x * y) * torch.minimum(x.abs(), y.abs())


_AND_MEAN = -(1 / math.sqrt(2 * math.pi) + 1 / (2 * math.sqrt(math.pi)))
_AND_STD = math.sqrt(5 / 4 - 1 / (math.sqrt(2) * math.pi) - 1 / (4 * math.pi))

#: operator -> (function, mean, std of its output for independent N(0, 1) inputs).
OPERATORS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], float, float]] = {
    "and": (and_ail, _AND_MEAN, _AND_STD),
    "or": (or_ail, -_AND_MEAN, _AND_STD),
    "xnor": (xnor_ail, 0.0, math.sqrt(1 - 2 / math.pi)),
}


def channel_ratio(ops: Sequence[str], mode: str) -> float:
    """Output channels per input channel: ``len(ops) / 2`` duplicated, ``1 / 2`` partitioned."""
    return len(ops) / 2 if mode == "dup" else 0.5


class LogitLogic(nn.Module):
    """Pairwise logical activation over ``(N, C, *spatial)``, channel pairs ``(2i, 2i + 1)``.

    Args:
        num_channels: input channels (even).
        ops: operator names from :data:`OPERATORS`.
        mode: ``"dup"`` applies every operator to every pair (``len(ops) * C / 2`` outputs);
            ``"part"`` gives each operator its own near-equal share of the pairs (``C / 2`` outputs).
        normalize: standardize each operator's output by its moments under unit-normal inputs.
    """

    def __init__(self, num_channels: int, ops: Sequence[str], mode: str = "dup", normalize: bool = False) -> None:
        super().__init__()
        if num_channels % 2:
            raise ValueError(
                f"logical activations combine pairs of channels and need an even number of them, got "
                f"{num_channels}; with {len(ops)} operators duplicated, choose widths divisible by {len(ops)}"
            )
        if mode not in ("dup", "part"):
            raise ValueError(f"mode must be 'dup' or 'part', got {mode!r}")
        self.ops, self.mode, self.normalize = tuple(ops), mode, normalize

    def _operate(self, op: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fn, mean, std = OPERATORS[op]
        out = fn(x, y)
        return (out - mean) / std if self.normalize else out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        pairs = z.unflatten(1, (z.shape[1] // 2, 2))
        x, y = pairs[:, :, 0], pairs[:, :, 1]
        if self.mode == "dup":
            return torch.cat([self._operate(op, x, y) for op in self.ops], dim=1)
        groups = zip(self.ops, x.tensor_split(len(self.ops), dim=1), y.tensor_split(len(self.ops), dim=1), strict=True)
        return torch.cat([self._operate(op, xi, yi) for op, xi, yi in groups], dim=1)

    def extra_repr(self) -> str:
        return f"ops={self.ops}, mode={self.mode!r}, normalize={self.normalize}"


#: component name -> (operators, mode); the single operators and the paper's ensembles.
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "and_ail": (("and",), "dup"),
    "or_ail": (("or",), "dup"),
    "xnor_ail": (("xnor",), "dup"),
    "ail_or_and_dup": (("or", "and"), "dup"),
    "ail_or_xnor_dup": (("or", "xnor"), "dup"),
    "ail_or_and_xnor_dup": (("or", "and", "xnor"), "dup"),
    "ail_or_xnor_part": (("or", "xnor"), "part"),
    "ail_or_and_xnor_part": (("or", "and", "xnor"), "part"),
}


def _component(name: str, ops: tuple[str, ...], mode: str) -> Component:
    def factory(num_channels: int, normalize: bool = False) -> nn.Module:
        return LogitLogic(num_channels, ops, mode, normalize)

    factory.__doc__ = f"{' + '.join(o.upper() for o in ops)}_AIL ({mode}) on channel pairs (Lowe et al. 2022)."
    return Component(
        kind="activation",
        name=name,
        factory=factory,
        params={"normalize": Choice(False, (False, True))},
        channel_ratio=channel_ratio(ops, mode),
    )


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [_component(name, ops, mode) for name, (ops, mode) in VARIANTS.items()]
