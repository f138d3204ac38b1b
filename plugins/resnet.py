"""The CIFAR-style ResNet of He et al. 2016 ("Deep Residual Learning for Image Recognition", Sec. 4.2):
depth 6n+2, three stages of n basic blocks with widths w, 2w, 4w, the first block of the second and third
stage with stride 2. Works on 1-D and 2-D inputs.

One decision departs from that section: where a block changes the shape, its shortcut is a projection
(a 1x1 conv with the block's stride, then the normalization: the paper's option B), not the identity with
zero-padded channels (option A) of the paper's CIFAR nets. A projection handles every channel mismatch,
also the one a widening activation makes, where the shortcut must drop channels and zero-padding cannot.
With an activation that changes the width (``channel_ratio`` != 1) the block's input never has the width
its convs produce, so every block's shortcut is a projection, not only those of the stride-2 blocks.
Parameter counts are therefore slightly above the paper's: ResNet-20 (width 16, RGB, batchnorm, 10 classes)
has 0.2725M where option A gives 0.2697M (the paper: 0.27M).
"""

from __future__ import annotations

from torch import nn

import autonorm
from autonorm import Choice, Component, Int, Layers


class BasicBlock(nn.Module):
    """conv-norm-act, conv-norm (times the normalization's residual scale, if any), plus the shortcut,
    then the activation. ``index`` is the block's position in the model, counted from 1.

    ``gate``, when set, is called as ``gate(self.branch, x)`` and returns the residual branch's
    contribution; it may skip calling the branch (stochastic depth). None: the branch is always added.
    """

    def __init__(self, cin: int, cout: int, stride: int, layers: Layers, index: int = 1) -> None:
        super().__init__()
        mid = layers.pre_act(cout)
        self.conv1 = layers.conv(cin, mid, 3, stride)
        self.norm_act1 = layers.norm_act(mid)
        self.conv2 = layers.conv(cout, mid, 3)
        self.norm2 = layers.norm(mid)
        self.branch_scale = layers.residual_scale(index, convs=2)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == mid
            else nn.Sequential(layers.conv(cin, mid, 1, stride), layers.norm(mid))
        )
        self.act = layers.act(mid)
        self.gate: nn.Module | None = None

    def branch(self, x):
        out = self.norm2(self.conv2(self.norm_act1(self.conv1(x))))
        return out if self.branch_scale is None else self.branch_scale(out)

    def forward(self, x):
        out = self.branch(x) if self.gate is None else self.gate(self.branch, x)
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet-``depth`` (8, 14, 20, 32, 44, 56, 110) of base width ``width``."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, layers: Layers, depth: int = 8, width: int = 16
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(
            layers.conv(input_shape[0], layers.pre_act(width), 3), layers.norm_act(layers.pre_act(width))
        )
        blocks: list[nn.Module] = []
        cin = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, stage_width, stride, layers, index=len(blocks) + 1))
                cin = stage_width
        self.blocks = nn.Sequential(*blocks)
        self.pool = layers.pool()
        self.head = layers.head(cin, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.blocks(self.stem(x))))


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="model",
            name="resnet",
            factory=ResNet,
            params={"depth": Choice(8, (8, 14, 20, 32, 44, 56, 110)), "width": Int(16, 4, 64, log=True, minimum=1)},
        )
    ]
