"""Stochastic depth: Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth", ECCV 2016,
arXiv:1603.09382 (official Torch code: ``yueatsprograms/Stochastic_Depth``).

In training, residual block l of L keeps its branch with probability p_l, drawn once per mini-batch
and block (all samples share the gate); a dropped branch is not computed at all (no forward, no
update of its batch statistics, no gradient), so the block is H_l = act(shortcut(H_{l-1})). Survival
follows the paper's linear decay rule p_l = 1 - (l / L)(1 - p_L), with the paper's p_L = 0.5.

Open choice, decided: the inverted form. The paper (and its official code) scales each branch by p_l
at test time; here a kept branch is divided by p_l in training and the test-time network is the
plain one, as in torchvision's ``StochasticDepth`` and timm's ``DropPath``. Both forms give the same
expected block output in training and a deterministic full-depth network at test time; the inverted
one makes the evaluated (and saved) model exactly the configuration's architecture, so the weights
``autonorm train`` saves reload with ``build_model(config)``, which a test-time scale held outside
the weights would not allow.

It acts on backbones whose residual blocks expose a ``gate`` slot and a ``branch`` method
(:class:`autonorm_plugins.resnet.BasicBlock`), hence ``requires=("model:resnet",)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import autonorm
from autonorm import Component, Float, TrainingMethod


class StochasticDepthGate(nn.Module):
    """Keeps a residual branch with probability ``survival`` in training, divided by ``survival`` (inverted
    form); the plain branch in eval."""

    def __init__(self, survival: float) -> None:
        super().__init__()
        self.survival = survival

    def forward(self, branch: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.survival == 1:
            return branch(x)
        if torch.rand(()) < self.survival:  # drawn on the CPU: no device sync
            return branch(x) / self.survival
        return x.new_zeros(())

    def extra_repr(self) -> str:
        return f"survival={self.survival:.4g}"


def survival_probabilities(num_blocks: int, last: float) -> list[float]:
    """The linear decay rule: p_l = 1 - (l / L)(1 - p_L) for l = 1..L."""
    return [1 - (block / num_blocks) * (1 - last) for block in range(1, num_blocks + 1)]


class StochasticDepth(TrainingMethod):
    """Gates every residual block of the model with its linearly decaying survival probability."""

    def __init__(self, survival: float = 0.5) -> None:
        self.survival = survival

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        blocks = [m for m in model.modules() if hasattr(m, "gate") and hasattr(m, "branch")]
        if not blocks:
            raise ValueError("stochastic_depth: the model has no residual blocks with a 'gate' slot")
        for block, p in zip(blocks, survival_probabilities(len(blocks), self.survival), strict=True):
            block.gate = StochasticDepthGate(p).train(block.training)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="training",
            name="stochastic_depth",
            factory=StochasticDepth,
            params={"survival": Float(0.5, 0.2, 1.0, minimum=0, maximum=1)},
            requires=("model:resnet",),
        )
    ]
