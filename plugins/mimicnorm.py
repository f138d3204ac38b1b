"""MimicNorm: weight mean and one last BN layer mimic the dynamics of batch normalization.

Fei, Dai, Li, Zou, Xiong 2020, "MimicNorm: Weight Mean and Last BN Layer Mimic the Dynamic of Batch
Normalization", arXiv:2010.09278; official code Kid-key/MimicNorm (``--arch *_cbn --weight mean``).

Two pieces replace every BN of the body:

1. *Weight mean*: each eligible conv filter is projected to zero mean over its (in-channels,
   kernel) entries, once at setup and again after every optimizer step, as the official code does
   (a projection of the weights, not a forward-time reparametrization; for SGD from centred weights
   the two coincide). Eligible, as in the official code: conv layers (not Linear, not transposed)
   with ``groups == 1`` and fan-in ``in_channels * prod(kernel) > 50``; so an RGB 3x3 stem (27) and
   narrow 1x1 shortcuts are left alone.
2. *Last BN*: ``BatchNorm1d(num_classes, affine=False)`` (eps 1e-5, momentum 0.1) on the logits,
   after the classifier and before the loss; running statistics at evaluation.

Residual branches, as in the official ResNets (``Cifar100/models/resnet_nobn.py``, ``*_cbn``): the
output of each branch (its last conv, with bias) is multiplied by a learnable scalar initialized to
``1.2**L / k``, L the branch's convs (2 in a basic block, 3 in a bottleneck) and k the block's position
in the whole network, counted from 1; the shortcut is not scaled and the ReLU follows the sum. The
scalar is trained like every other parameter; weight decay reaches it (and the body biases) only with
``train.weight_decay_on: all`` (the official runs decay every parameter; autonorm's default decays the
weight matrices and filters only). It is declared as
``Component.residual_scale``, which the ``resnet`` backbone places; ``small_cnn`` has no residual
blocks and gets none.

Decisions (u):

- The body norms become a learnable per-channel bias (init 0) rather than a bare identity: the
  official nets drop BN and give their convs ``bias=True``; our backbones build bias-free convs
  followed by a norm, so the bias lives in the norm slot.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import autonorm
from autonorm import Component, TrainingMethod

#: Filters with this fan-in or less are not centred (official code).
MIN_FAN_IN = 50


def is_centred(module: nn.Module) -> bool:
    """Whether MimicNorm projects this module's weights: a plain conv with fan-in above 50."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and not module.transposed
        and module.groups == 1
        and module.in_channels * math.prod(module.kernel_size) > MIN_FAN_IN
    )


@torch.no_grad()
def center_conv_weights(model: nn.Module) -> None:
    """Subtract from each eligible conv filter its mean over (in-channels, kernel): ``W[o] -= mean(W[o])``."""
    for module in model.modules():
        if is_centred(module):
            w = module.weight
            w.sub_(w.mean(dim=tuple(range(1, w.dim())), keepdim=True))


class WeightMean(TrainingMethod):
    """Projects the conv filters to zero mean at setup and after every optimizer step."""

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        center_conv_weights(model)

    def after_step(self, model: nn.Module) -> None:
        center_conv_weights(model)


class ChannelBias(nn.Module):
    """A learnable per-channel bias on ``(N, C, *spatial)``: the conv bias the official nets keep."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, *[1] * (x.dim() - 2))


class BranchScale(nn.Module):
    """``x * scale`` with one learnable scalar: MimicNorm's residual-branch multiplier."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def branch_scale(index: int, convs: int) -> nn.Module:
    """The scalar on the branch of residual block ``index`` (from 1), initialized to ``1.2**convs / index``."""
    return BranchScale(1.2**convs / index)


def mimicnorm(num_channels: int) -> nn.Module:
    """MimicNorm (Fei et al. 2020): zero-mean conv filters and one BN on the logits; the body has no norm."""
    return ChannelBias(num_channels)


def last_bn(head: nn.Module, num_classes: int) -> nn.Module:
    """The classifier followed by ``BatchNorm1d(num_classes, affine=False)`` on its logits."""
    return nn.Sequential(head, nn.BatchNorm1d(num_classes, eps=1e-5, momentum=0.1, affine=False))


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="mimicnorm",
            factory=mimicnorm,
            batch_dependent=True,
            head_wrapper=last_bn,
            training_method=WeightMean,
            residual_scale=branch_scale,
        )
    ]
