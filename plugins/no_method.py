"""The default ``none`` of the method kinds: no augmentation and no training method (plain training).

Each is a :class:`~autonorm.TrainingMethod` whose hooks do nothing, so a space can offer
``augmentation: [none, noise_images]`` or ``training: [none, label_smoothing]`` and compare a method with
plain training.
"""

from __future__ import annotations

import autonorm
from autonorm import Component, TrainingMethod


def no_method() -> TrainingMethod:
    """Plain training: every hook does nothing."""
    return TrainingMethod()


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(kind="augmentation", name="none", factory=no_method, doc="No augmentation: batches as drawn."),
        Component(kind="training", name="none", factory=no_method, doc="Plain training: cross-entropy, no hooks."),
    ]
