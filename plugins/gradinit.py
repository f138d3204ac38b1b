"""GradInit: Zhu, Ni, Xu, Kong, Huang & Goldstein 2021, "GradInit: Learning to Initialize Neural Networks
for Stable and Efficient Training", NeurIPS 2021, arXiv:2102.08098 (official code: zhuchen03/gradinit).

Every parameter tensor ``w`` gets one scalar multiplier ``alpha`` (initially 1), so the model's parameters
are ``alpha * w0``. The multipliers are learned so that one step of the training optimizer from the
scaled initialization gives the lowest loss, subject to a bound on the gradient norm:

    min_alpha  L(S1; theta_alpha - eta * A[g(S0; theta_alpha)]) / eta   s.t.  ||g(S0; theta_alpha)|| <= gamma

with ``A[g] = g / ||g||_2`` for SGD (the official runs normalize the gradient) and ``A[g] = sign(g)``
for Adam, whose gradient norm is measured in L1. An iteration that violates the bound instead takes a
step that lowers the gradient norm. The multipliers are trained with Adam on their gradients clipped to
``[-grad_clip, grad_clip]`` and kept at or above ``min_scale`` (zero for biases); tensors that start at
zero (biases) are left at zero. As in the official code, the step direction ``A[g]`` is treated as a
constant when differentiating the loss after the step; normalization layers use batch statistics and
their running statistics are left untouched, dropout is off (the official code puts the network in
eval mode and BatchNorm back on batch statistics); the multipliers' Adam keeps one first moment for
objective steps and one for constraint steps, as the official ``RescaleAdam``; ``S0`` and ``S1`` share
half of their samples.

Defaults: ``eta = 0.1``, ``gamma = 1``, ``min_scale = 0.01``, ``grad_clip = 1`` as in the official runs.
Choices made here (u): 20 iterations and multiplier learning rate 0.05 (the official runs use 390
iterations, one CIFAR-10 epoch, and 1e-3 to 5e-2), so it stays cheap on a CPU; the batches are drawn
from the one sample batch the trial provides (split into thirds: ``S0 = A + B``, ``S1 = A + C``).

The base initialization is He-normal (:func:`autonorm_plugins.kaiming.kaiming`). Data-dependent: without
a sample batch with labels (``build_model(config)`` alone) GradInit leaves that base initialization as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autonorm_plugins.kaiming import kaiming
from torch import nn
from torch.func import functional_call

import autonorm
from autonorm import Choice, Component, Float, Int

#: Layers switched off while GradInit runs (the official code puts the net in eval mode for this).
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class RescaleAdam:
    """Adam on the scale multipliers as the official ``RescaleAdam``: gradients clipped to ``[-clip, clip]``,
    one first moment for objective steps and another for constraint steps (each bias-corrected by its own
    count), one second moment for both (bias-corrected by the total count), scales kept at their floors."""

    def __init__(self, floor: torch.Tensor, lr: float, clip: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.floor, self.lr, self.clip, (self.beta1, self.beta2), self.eps = floor, lr, clip, betas, eps
        self.first = {False: torch.zeros_like(floor), True: torch.zeros_like(floor)}  # by "is a constraint step"
        self.steps = {False: 0, True: 0}
        self.second = torch.zeros_like(floor)

    @torch.no_grad()
    def step(self, scale: torch.Tensor, grad: torch.Tensor, constraint: bool) -> None:
        grad = grad.clamp(-self.clip, self.clip)
        self.steps[constraint] += 1
        self.first[constraint].mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
        self.second.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        first = self.first[constraint] / (1 - self.beta1 ** self.steps[constraint])
        second = self.second / (1 - self.beta2 ** sum(self.steps.values()))
        scale.sub_(self.lr * first / (second.sqrt() + self.eps)).clamp_(min=self.floor)


def gradinit(
    model: nn.Module,
    sample_batch: torch.Tensor | None = None,
    sample_labels: torch.Tensor | None = None,
    optimizer: str = "sgd",
    eta: float = 0.1,
    gamma: float = 1.0,
    lr: float = 0.05,
    iters: int = 20,
    min_scale: float = 0.01,
    grad_clip: float = 1.0,
) -> None:
    """He init, then learn one scale per parameter tensor so one ``optimizer`` step of size ``eta`` from
    the scaled init lowers the loss most, with the gradient norm at most ``gamma`` (Zhu et al. 2021)."""
    kaiming(model)
    if sample_batch is None or sample_labels is None or len(sample_batch) < 3:
        return
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    scaled = [n for n, w in w0.items() if w.norm() > 0]  # tensors that start at zero stay at zero
    unscaled = {n: w0[n].requires_grad_() for n in names if n not in scaled}  # they still take the step
    device = sample_batch.device
    scale = torch.ones(len(scaled), device=device, requires_grad=True)
    floor = torch.tensor([0.0 if n.endswith("bias") else min_scale for n in scaled], device=device)
    adam = RescaleAdam(floor, lr, grad_clip)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    model.train()  # normalization layers on batch statistics, as the official code sets BatchNorm
    for m in model.modules():
        if isinstance(m, DROPOUT):
            m.eval()
    x, y = sample_batch, sample_labels.to(device)
    gen = torch.Generator().manual_seed(0)
    third = len(x) // 3
    for _ in range(iters):
        perm = torch.randperm(len(x), generator=gen).to(device)
        s0, s1 = perm[: 2 * third], torch.cat([perm[:third], perm[2 * third : 3 * third]])
        params = unscaled | {n: scale[i] * w0[n] for i, n in enumerate(scaled)}
        loss0 = F.cross_entropy(functional_call(model, params, (x[s0],)), y[s0])
        grads = torch.autograd.grad(loss0, list(params.values()), create_graph=True)
        if optimizer == "sgd":
            norm = torch.sqrt(sum(g.square().sum() for g in grads))
            steps = [g / norm for g in grads]
        else:
            norm = sum(g.abs().sum() for g in grads)
            steps = [g.sign() for g in grads]
        constraint = norm.item() > gamma
        if constraint:
            objective = norm
        else:
            moved = {n: p - eta * s.detach() for (n, p), s in zip(params.items(), steps, strict=True)}
            objective = F.cross_entropy(functional_call(model, moved, (x[s1],)), y[s1]) / eta
        (grad,) = torch.autograd.grad(objective, [scale])
        adam.step(scale, grad, constraint)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in scaled:
                p.copy_(scale[scaled.index(n)] * w0[n])
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    for m, training in modes.items():
        m.train(training)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="initializer",
            name="gradinit",
            factory=gradinit,
            params={
                "optimizer": Choice("sgd", ("sgd", "adam")),
                "eta": Float(0.1, 0.01, 1.0, log=True),
                "gamma": Float(1.0, 0.1, 100.0, log=True),
                "lr": Float(0.05, 1e-3, 0.2, log=True),
                "iters": Int(20, 5, 400, log=True),
                "min_scale": Float(0.01, 1e-3, 0.5, log=True),
                "grad_clip": Float(1.0, 0.1, 10.0, log=True),
            },
        )
    ]
