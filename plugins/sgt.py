"""Softmax gradient tampering (SGT, later "PowerGrad transform"): Das, Mondal, Lall, Joshi, Dutta Roy,
"Softmax Gradient Tampering: Decoupling the Backward Pass for Improved Fitting", 2021, arXiv:2111.12495.

The forward pass and the loss value are plain cross-entropy. Only the backward pass changes: the
gradient of the loss with respect to the logits z uses the power-transformed probabilities
p~ = p^alpha / sum(p^alpha) = softmax(alpha * z) in place of p, i.e. dL/dz = (softmax(alpha z) - q) / N
(mean over the batch); everything upstream is ordinary backpropagation of it. alpha = 1 is plain
cross-entropy, alpha -> 0 makes p~ uniform. Default alpha = 0.3, the value of the paper's listing
(its ResNet-50 table also reports 0.05; ResNet-18 0.25).

p~ is computed from the saved logits in float32 (or float64) (not recovered from the incoming gradient as in the
paper's listing, which mis-scales it for batches larger than one). ``smoothing`` composes label
smoothing (PyTorch convention, q = (1 - eps) onehot + eps / K) in both passes, as in the paper's
combined runs; targets are class indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import autonorm
from autonorm import Component, Float, TrainingMethod


class _TamperedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, alpha: float, smoothing: float) -> torch.Tensor:
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        ctx.save_for_backward(z, target)
        ctx.alpha, ctx.smoothing, ctx.dtype = alpha, smoothing, logits.dtype
        return F.cross_entropy(z, target, label_smoothing=smoothing)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, target = ctx.saved_tensors
        n, k = z.shape
        q = F.one_hot(target, k).to(z.dtype) * (1 - ctx.smoothing) + ctx.smoothing / k
        dz = (torch.softmax(ctx.alpha * z, dim=1) - q) * (grad / n)
        return dz.to(ctx.dtype), None, None, None


def sgt_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of ``(N, K)`` logits whose backward uses ``softmax(alpha * logits)``."""
    return _TamperedCrossEntropy.apply(logits, target, alpha, smoothing)


class SoftmaxGradientTampering(TrainingMethod):
    """Trains with :func:`sgt_cross_entropy`."""

    def __init__(self, alpha: float = 0.3, smoothing: float = 0.0) -> None:
        self.alpha, self.smoothing = alpha, smoothing

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sgt_cross_entropy(model(x), y, self.alpha, self.smoothing)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="training",
            name="sgt",
            factory=SoftmaxGradientTampering,
            params={"alpha": Float(0.3, 0.05, 1.0), "smoothing": Float(0.0, 0.0, 0.3)},
        )
    ]
