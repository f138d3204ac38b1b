"""Variance-preserving residual summation for normalization-free ResNets: Civitelli, Sortino, Lapucci,
Bagattini & Galvan 2021, "A Robust Initialization of Residual Blocks for Effective ResNet Training without
Batch Normalization", arXiv:2112.12299.

The paper shows that with He-initialized residual branches the plain sum ``x + F(x)`` doubles the signal
variance at every block, so deep ResNets without normalization explode at initialization, and modifies the
summation to ``h * shortcut(x) + c * F(x)`` with ``h**2 + c**2 = 1``: two independent terms of equal
variance then sum to that same variance, forward and backward, at every depth.

Choices made here (u: the paper's exact constants could not be confirmed from its text or code):

- ``c = 1/sqrt(2)`` (so ``h = 1/sqrt(2)``) by default, the choice that weighs both paths equally;
  ``branch_scale`` sets ``c`` and ``h = sqrt(1 - c**2)``.
- ``learnable=True`` makes ``h`` and ``c`` trainable scalars (the paper's learnable-scalar variant);
  the paper's third variant, a 1x1 convolution on every shortcut, adds parameters and is not offered.
- Weights are He-normal (fan_in), biases zero, normalization scales one.

The rule is exact for pre-activation blocks (no activation after the sum). In the post-activation blocks
of the ``resnet`` backbone the ReLU after the sum keeps only about half of the branch's share, so at
initialization the signal still shrinks by about 0.75 per block, where the plain sum roughly doubles it.

The scales wrap the branch's last layer (``norm2``) and the ``shortcut`` of every residual block of the
``resnet`` backbone. A model without such blocks (``small_cnn``) gets plain He initialization.
"""

from __future__ import annotations

import math

import torch
from autonorm_plugins.kaiming import kaiming
from autonorm_plugins.resnet import BasicBlock
from torch import nn

import autonorm
from autonorm import Choice, Component, Float


class Scaled(nn.Module):
    """``scale * module(x)``; the scale is a fixed buffer or a trainable scalar."""

    def __init__(self, module: nn.Module, scale: float, learnable: bool = False) -> None:
        super().__init__()
        self.module = module
        if learnable:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.module(x)


def nf_residual(
    model: nn.Module,
    sample_batch: torch.Tensor | None = None,
    branch_scale: float = math.sqrt(0.5),
    learnable: bool = False,
) -> None:
    """He init, then every residual block sums ``sqrt(1 - c**2) * shortcut(x) + c * F(x)`` with
    ``c = branch_scale`` (Civitelli et al. 2021). Data-free: ``sample_batch`` is not used."""
    if not 0.0 < branch_scale <= 1.0:
        raise ValueError(f"nf_residual: branch_scale must be in (0, 1], got {branch_scale}")
    kaiming(model, mode="fan_in")
    shortcut_scale = math.sqrt(1.0 - branch_scale**2)
    for block in [m for m in model.modules() if isinstance(m, BasicBlock)]:
        block.norm2 = Scaled(block.norm2, branch_scale, learnable)
        block.shortcut = Scaled(block.shortcut, shortcut_scale, learnable)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="initializer",
            name="nf_residual",
            factory=nf_residual,
            params={"branch_scale": Float(math.sqrt(0.5), 0.2, 1.0), "learnable": Choice(False, (False, True))},
        )
    ]
