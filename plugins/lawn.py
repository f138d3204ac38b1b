"""LAWN, Logit Attenuating Weight Normalization: Gupta, Ramanath, Shi, Ramachandran, Zhou, Zhou, Keerthi,
"Logit Attenuating Weight Normalization", 2021, arXiv:2108.05839.

Stacked on any optimizer: after a warm phase of unconstrained training, the weight norms of the layers
in the final homogeneous sub-network (the layers after the last normalization, where scaling a layer's
weights scales the logits) are frozen at the values they had at the end of the warm phase, by a
projection after every optimizer step, W <- c * W / ||W||_F. The logits then cannot grow by growing
those weights, so the loss cannot collapse and the network stays adaptive; directions keep learning.

No official code is public and the paper leaves these open (u); choices made here:

- warm phase: the first ``warm = 0.25`` of the epochs, rounded half up, and at most all but the last
  epoch, so that the constraint always acts (with ``warm = 0``, or a single epoch, the norms at
  initialization are kept);
- constrained: the weight of every Linear and conv layer registered after the last normalization module
  of the model (all of them if the model has none); per layer, Frobenius norm; biases are not
  constrained (renormalizing them is not homogeneous) and train freely;
- the constrained weights get a parameter group of their own (the same settings), whose weight decay
  is switched off when the constrained phase starts: the projection only undoes a radial shrink, and
  Adam's L2 decay, divided by the running gradient scale per entry, is not radial (200 decay-only
  Adam steps turned a projected weight 35 degrees away from its direction);
- the step itself is the base optimizer's: the radial component of the gradient is not removed before it,
  the projection undoes its effect on the norm afterwards;
- the scale (gamma) and shift of the last normalization, if any, are not constrained and train freely, so the
  feature scale feeding the constrained layers, and with it the logit scale, can still grow;
- the optimizer's state (Adam's moments, SGD's momentum) is not projected: its radial part keeps pushing
  against the projection.
"""

from __future__ import annotations

import torch
from torch import nn

import autonorm
from autonorm import Component, Float, TrainingMethod
from autonorm.routing import is_batch_dependent
from autonorm.training_method import phase_start

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def is_normalization(module: nn.Module) -> bool:
    """torch's normalizations, batch-dependent modules, and classes named ``*Norm*`` (FRN, ProxyNorm, ...)."""
    return isinstance(module, _NORMS) or is_batch_dependent(module) or "Norm" in type(module).__name__


def final_homogeneous_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weights of the Linear/conv layers after the last normalization module, in registration order."""
    modules = list(model.modules())
    last = max((i for i, m in enumerate(modules) if is_normalization(m)), default=-1)
    return [m.weight for m in modules[last + 1 :] if isinstance(m, _WEIGHTED)]


class LAWN(TrainingMethod):
    """Fixes the Frobenius norm of each final-layer weight to its end-of-warm-phase value after every step."""

    def __init__(self, warm: float = 0.25) -> None:
        self.warm = warm
        self.norms: list[torch.Tensor] = []

    def setup_data(self, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        self.warm_epochs = phase_start(self.warm, epochs)

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.weights = final_homogeneous_weights(model)
        if not self.weights:
            raise ValueError("lawn: no Linear or conv layer after the last normalization")
        constrained = {id(w) for w in self.weights}
        source = next(g for g in optimizer.param_groups if any(id(p) in constrained for p in g["params"]))
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in constrained]
        optimizer.add_param_group({**{k: v for k, v in source.items() if k != "params"}, "params": self.weights})
        self.group = optimizer.param_groups[-1]
        if self.warm_epochs == 0:
            self.record()

    @torch.no_grad()
    def record(self) -> None:
        """The constrained phase starts: keep the norms as they are now, and stop decaying these weights."""
        self.norms = [w.norm() for w in self.weights]
        self.group["weight_decay"] = 0.0

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        if not self.norms:  # warm phase
            return
        for w, c in zip(self.weights, self.norms, strict=True):
            w.mul_(c / w.norm())

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        if epoch + 1 == self.warm_epochs:
            self.record()


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [Component(kind="training", name="lawn", factory=LAWN, params={"warm": Float(0.25, 0.0, 0.9)})]
