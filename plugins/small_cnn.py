"""A small plain CNN for 1-D signals and 2-D images: conv -> norm -> act layers, then pool and head."""

from __future__ import annotations

from torch import nn

import autonorm
from autonorm import Component, Int, Layers


class SmallCNN(nn.Module):
    """``depth`` 3x3 conv layers; from the second on each halves the resolution (while it is at least 4,
    through ``layers.downsample``: a stride-2 conv unless a downsampling was chosen) and doubles the width."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, layers: Layers, depth: int = 3, width: int = 32
    ) -> None:
        super().__init__()
        cin, size = input_shape[0], min(input_shape[1:])
        blocks: list[nn.Module] = []
        cout = width
        for i in range(depth):
            stride = 2 if i > 0 and size >= 4 else 1
            if stride == 2:
                size, cout = (size + 1) // 2, cout * 2
            pre = layers.pre_act(cout)
            conv = layers.downsample(cin, pre) if stride == 2 else layers.conv(cin, pre, 3)
            blocks += [conv, layers.norm_act(pre)]
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.pool = layers.pool()
        self.head = layers.head(cin, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="model",
            name="small_cnn",
            factory=SmallCNN,
            params={"depth": Int(3, 1, 6, minimum=1), "width": Int(32, 8, 128, log=True, minimum=1)},
        )
    ]
