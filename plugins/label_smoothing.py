"""Label smoothing: Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for
Computer Vision", CVPR 2016, arXiv:1512.00567, Sec. 7.

Cross-entropy against q = (1 - eps) onehot(y) + eps / K (PyTorch's convention: the true class gets
1 - eps + eps / K; some papers spread eps over the K - 1 wrong classes instead). Default eps = 0.1.
A baseline for the other training methods; evaluation is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import autonorm
from autonorm import Component, Float, TrainingMethod


class LabelSmoothing(TrainingMethod):
    """Cross-entropy with smoothed targets."""

    def __init__(self, smoothing: float = 0.1) -> None:
        self.smoothing = smoothing

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=self.smoothing)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="training", name="label_smoothing", factory=LabelSmoothing, params={"smoothing": Float(0.1, 0.0, 0.3)}
        )
    ]
