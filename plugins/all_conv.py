"""Downsampling by strided convolution instead of pooling, and the pooling it replaces.

Springenberg, Dosovitskiy, Brox & Riedmiller 2014, "Striving for Simplicity: The All Convolutional
Net" (arXiv:1412.6806): max-pooling can be replaced by a convolution with stride 2 without loss of
accuracy. The paper's variants, as ``downsampling`` components (``factory(layers, cin, cout)``; each
halves every spatial size, rounding up, and maps ``cin`` to ``cout`` channels):

- ``strided_conv``: the conv before the pooling gets stride 2 and the pooling goes ("Strided-CNN").
  This is what the backbones do when no downsampling is chosen.
- ``all_conv``: a 3x3 conv + normalization + activation that keeps the input width (``cin`` -> ``cin``),
  then a 3x3 conv with stride 2 that widens (``cin`` -> ``cout``), after the paper's All-CNN. This is
  not ``max`` with its pooling turned into a conv: the All-CNN keeps its base model's convs and makes
  the pooling a stride-2 conv at the width of the conv before it (96 -> 96), while here the widening
  moves into the strided conv and a conv at the input width comes first. Either way the block is one
  conv layer deeper than ``max``; here it adds 9 * cin^2 weights (2-D) and a normalization and
  activation: ``small_cnn`` of depth 3, width 16 on RGB has 35,962 parameters with ``all_conv``,
  24,346 with ``max`` or ``strided_conv``. A gain over ``max`` may thus come from depth, which the
  paper controls with ConvPool-CNN (the extra conv, then the pooling); no component here builds that.
- ``max`` / ``avg``: a 3x3 conv, then 3x3 pooling with stride 2 (the paper's base models; average
  pooling counts only positions inside the input).
"""

from __future__ import annotations

from torch import nn

import autonorm
from autonorm import Component, Layers


def strided_conv(layers: Layers, cin: int, cout: int) -> nn.Module:
    """A 3x3 conv with stride 2 (Strided-CNN)."""
    return layers.conv(cin, cout, 3, stride=2)


def all_conv(layers: Layers, cin: int, cout: int) -> nn.Module:
    """3x3 conv + norm + act at the input width, then a 3x3 conv with stride 2 from ``cin`` to ``cout``: one conv
    layer more than ``max``, at the input width rather than the All-CNN's output width (module docstring)."""
    mid = layers.pre_act(cin)
    return nn.Sequential(layers.conv(cin, mid, 3), layers.norm_act(mid), layers.conv(cin, cout, 3, stride=2))


def max_pool(layers: Layers, cin: int, cout: int) -> nn.Module:
    """A 3x3 conv, then 3x3 max pooling with stride 2."""
    pool = nn.MaxPool1d if layers.dims == 1 else nn.MaxPool2d
    return nn.Sequential(layers.conv(cin, cout, 3), pool(3, stride=2, padding=1))


def avg_pool(layers: Layers, cin: int, cout: int) -> nn.Module:
    """A 3x3 conv, then 3x3 average pooling with stride 2 (over the positions inside the input)."""
    pool = nn.AvgPool1d if layers.dims == 1 else nn.AvgPool2d
    return nn.Sequential(layers.conv(cin, cout, 3), pool(3, stride=2, padding=1, count_include_pad=False))


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(kind="downsampling", name="strided_conv", factory=strided_conv),
        Component(kind="downsampling", name="all_conv", factory=all_conv),
        Component(kind="downsampling", name="max", factory=max_pool),
        Component(kind="downsampling", name="avg", factory=avg_pool),
    ]
