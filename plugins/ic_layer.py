"""The IC (Independent-Component) layer (Chen, Chen, Shi, Hsieh, Liao & Zhang 2019, "Rethinking the Usage
of Batch Normalization and Dropout in the Training of Deep Neural Networks", arXiv:1905.05928).

``IC(x) = Dropout_p(BatchNorm(x))``, placed immediately before every weight layer, with the activation
before it: ``... -> Weight -> ReLU -> IC -> Weight -> ReLU -> IC -> ...``. BatchNorm is standard (batch
statistics in training, running ones in eval; eps 1e-5, momentum 0.1); dropout is inverted (kept units
scaled by 1/(1-p)) and off in eval. Dropout comes after BN, so BN's statistics are those of undropped
features and eval is consistent (no "variance shift").

Placement (decided): our backbones are built as ``conv -> norm -> act``. Putting IC in the norm slot
would give ``conv -> BN -> Dropout -> ReLU``, keeping the BN -> ReLU pairs the paper argues against.
Instead the component's normalization is the identity and IC comes with its activation
(``own_activation``): ``ReLU -> BN -> Dropout``. A backbone's ``conv -> norm -> act`` then reads
``conv -> ReLU -> IC``, so every weight layer after the stem conv (convs, residual shortcuts' 1x1 convs,
and the classifier after global average pooling, which is linear) reads an IC output: the paper's
order. In a ResNet a norm with no activation after it (before the residual sum) is the identity, and the
ReLU -> IC after the sum feeds the next block's convs and its identity shortcut (u: the paper's residual
wiring is not confirmed; this keeps an IC before every weight layer, at the price of normalizing and
dropping the residual stream itself at every block. The other reading, an IC at the start of each
residual branch with the shortcut untouched, would need the backbone to place a layer there, which
``Layers`` does not offer). The activation is the paper's ReLU
and is not searched.

Defaults: p = 0.05 (u: the paper reports small rates, about 0.05-0.1 on CIFAR ResNets), searched in
[0, 0.2]. Dropout is element-wise ``nn.Dropout`` (u: the paper's theory is about independent neurons;
ports that use channel dropout change the statistics).
"""

from __future__ import annotations

from autonorm_plugins.baseline_norms import BatchNorm
from torch import nn

import autonorm
from autonorm import Component, Float


class ICLayer(nn.Sequential):
    """BatchNorm then element-wise Dropout(p), on (N, C, *spatial) or (N, C)."""

    def __init__(self, num_channels: int, p: float = 0.05) -> None:
        super().__init__(BatchNorm(num_channels, eps=1e-5, momentum=0.1), nn.Dropout(p))


def relu_ic(num_channels: int, p: float = 0.05) -> nn.Module:
    """The activation step of the IC ordering: ReLU, then the IC layer for the next weight layer."""
    return nn.Sequential(nn.ReLU(), ICLayer(num_channels, p))


def ic_layer(num_channels: int, p: float = 0.05) -> nn.Module:
    """IC layer (Chen et al. 2019): BN + Dropout before every weight layer; its norm slot is the identity."""
    return nn.Identity()


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="ic_layer",
            factory=ic_layer,
            params={"p": Float(0.05, 0.0, 0.2, minimum=0, maximum=1)},
            batch_dependent=True,
            own_activation=relu_ic,
        )
    ]
