"""Network slimming: Liu, Li, Shen, Huang, Yan & Zhang, "Learning Efficient Convolutional Networks through
Network Slimming", ICCV 2017, arXiv:1708.06519 (official code: ``Eric-mingjie/network-slimming``).

Sparsity training puts an L1 penalty s * sum |gamma| on the scales of the batch-normalization layers,
applied as its subgradient after every backward pass (gamma.grad += s * sign(gamma)), so that the
channels the network can do without get scales near zero. Pruning then removes the fraction ``prune``
of all channels with the smallest |gamma| (one threshold over every layer), and the network is
fine-tuned without the penalty. The default s = 1e-4 is the official VGG value; the official ResNet-164 and
DenseNet-40 runs use s = 1e-5 (the repository's README), the low end of the search range [1e-5, 1e-3].

Within one trial's epochs, decided here (the paper trains, prunes, then fine-tunes for as many epochs
again with a fresh schedule): with ``prune`` > 0, sparsity training runs for the first ``prune_at`` of
the epochs, the channels are pruned at the end of that epoch (so its evaluation is the pruned
network's), and the remaining epochs fine-tune, in the tail of the trial's learning-rate schedule.
Pruning follows the official mask implementation: a pruned channel's scale and shift are set to 0
and kept there, so the normalization outputs 0 for it (the parameter count and latency a trial
reports stay the unpruned ones). The official code zeroes their gradients in a fine-tuning run with a
fresh optimizer; here the optimizer's state carries over, so they are set to 0 again after every step.
As in the official code, the threshold is the |gamma| at position int(prune * channels) of the sorted
scales and every channel at or below it is pruned (so int(prune * channels) + 1 and ties), except
that each layer keeps its channel of largest |gamma| (decided here: the official mask implementation
lets a whole layer go, which in a network without shortcuts cuts the path from input to output and
leaves a constant classifier). ``prune`` = 0 (the default) is sparsity training alone.

It acts on every batch-normalization layer with an affine scale; a model without one makes the trial
incompatible, and ``bcn`` is excluded (its group normalization after the batch one undoes a scale, so
the penalty costs nothing and a pruned channel does not output 0). In the post-activation ResNet a
pruned channel of a branch's last normalization or of a shortcut's silences that path only; the
block's output channel lives on through the residual sum. Differences from the paper's runs to keep
in mind: autonorm does not decay normalization scales by default (``train.weight_decay_on``), while
the official runs decay every parameter (1e-4), which adds an L2 pull of about 1e-4 gamma;
``weight_decay_on: all`` with ``weight_decay: 1e-4`` matches them. With Adam the subgradient is rescaled
per parameter, so it no longer acts as an L1 penalty of weight s; with the ``bn_gamma`` initializer the
scales train at a lower learning rate, which weakens s as much.
"""

from __future__ import annotations

import torch
from torch import nn

import autonorm
from autonorm import Component, Float, TrainingMethod


def scaled_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]


class NetworkSlimming(TrainingMethod):
    """L1 sparsity on batch-norm scales (``s``), then optionally pruning the fraction ``prune`` of channels
    with the smallest scales after the fraction ``prune_at`` of the epochs, and fine-tuning."""

    def __init__(self, s: float = 1e-4, prune: float = 0.0, prune_at: float = 0.5) -> None:
        self.s, self.prune, self.prune_at = s, prune, prune_at
        self.masks: list[torch.Tensor] = []

    def setup_data(self, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        self.prune_epoch = max(1, round(self.prune_at * epochs)) - 1 if self.prune > 0 else None

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.norms, self.masks = scaled_batchnorms(model), []
        if not self.norms:
            raise ValueError("slimming: the model has no batch normalization with a learned scale to make sparse")

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        if self.s and not self.masks:  # the penalty's subgradient, until pruning
            for norm in self.norms:
                if norm.weight.grad is not None:
                    norm.weight.grad.add_(torch.sign(norm.weight), alpha=self.s)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        if not self.masks:
            return
        for norm, mask in zip(self.norms, self.masks, strict=True):  # pruned channels stay at 0
            norm.weight.mul_(mask)
            if norm.bias is not None:
                norm.bias.mul_(mask)

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        if epoch == self.prune_epoch:
            self.masks = prune_channels(self.norms, self.prune)


@torch.no_grad()
def prune_channels(norms: list[nn.modules.batchnorm._BatchNorm], fraction: float) -> list[torch.Tensor]:
    """Zero the scale and shift of every channel whose |gamma| is at or below the global threshold, but
    keep each layer's largest; the masks of the channels kept."""
    scales = torch.cat([norm.weight.abs().flatten() for norm in norms])
    threshold = scales.sort().values[min(int(len(scales) * fraction), len(scales) - 1)]
    masks = []
    for norm in norms:
        mask = (norm.weight.abs() > threshold).to(norm.weight.dtype)
        if not mask.any():  # a layer left without channels would cut the network: keep its largest scale
            mask[norm.weight.abs().argmax()] = 1
        norm.weight.mul_(mask)
        if norm.bias is not None:
            norm.bias.mul_(mask)
        masks.append(mask)
    return masks


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="training",
            name="slimming",
            factory=NetworkSlimming,
            excludes=("normalization:bcn",),
            params={
                "s": Float(1e-4, 1e-5, 1e-3, log=True, minimum=0),
                "prune": Float(0.0, 0.0, 0.7, minimum=0, maximum=0.9),
                "prune_at": Float(0.5, 0.3, 0.8, minimum=0, maximum=1),
            },
        )
    ]
