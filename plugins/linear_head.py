"""The standard classifier head: one learned affine map from pooled features to logits."""

from __future__ import annotations

from torch import nn

import autonorm
from autonorm import Component


def linear(in_features: int, num_classes: int) -> nn.Module:
    """A dense linear classifier, ``W x + b``."""
    return nn.Linear(in_features, num_classes)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [Component(kind="head", name="linear", factory=linear)]
