"""The class-centre symmetric head: unit, coplanar, evenly spaced class weights with cosine logits.

Kansizoglou, Bampis & Gasteratos, "Do Neural Network Weights account for Classes Centers?" (IEEE
TNNLS 2022, arXiv:2104.07004; reference code IoannisKansizoglou/Symmetrical-Feature-Space, its
``SymmetricalLayer``). Feature-learning losses assume that a class's weight vector points at the
centre of that class's features; the paper shows this need not hold for a free weight matrix and
proposes a symmetry under which it does: all class weight vectors are unit, coplanar, and sum to
zero. Concretely, two learned vectors ``v1, v2`` span the plane; Gram-Schmidt gives an orthonormal
basis ``n1, n2`` of it, and class ``k`` of ``C`` gets ``n1`` rotated in that plane by
``theta_k = 2 pi k / C``::

    w_k    = R_k n1 = cos(theta_k) n1 + sin(theta_k) n2
    logits = scale * cos(x, w_k)

(the reference code builds the ``C`` plane rotations ``R_k = I + sin(theta_k) (n2 n1^T - n1 n2^T) +
(cos(theta_k) - 1) (n1 n1^T + n2 n2^T)`` and applies them to ``n1``; the closed form above is the
same vector without the ``C x F x F`` tensor). Whatever ``v1, v2`` an optimizer makes, the layout
holds exactly, so the weights are trained by plain cross-entropy through ``v1, v2`` (the reference
trains ResNets on CIFAR with SGD, lr 0.1, momentum 0.9, weight decay 1e-4). Defaults as in the
reference code: ``scale`` 16 (fixed, not learned), no bias, ``v1, v2`` initialized uniform in
``[0, 1)``. The head holds ``2 * features`` parameters.

Open choices: the features and ``v1, v2`` are normalized with a small ``eps`` (the reference divides
by the bare norm, which is undefined if ``v2`` becomes parallel to ``v1``); fewer than two features
cannot hold a plane and are refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import autonorm
from autonorm import Component, Float


class ClassCentreHead(nn.Module):
    """``(N, features) -> (N, classes)``: scaled cosines to evenly spaced coplanar unit vectors."""

    def __init__(
        self, in_features: int, num_classes: int, scale: float = 16.0, eps: float = 1e-12
    ) -> None:
        super().__init__()
        if in_features < 2:
            raise ValueError(
                f"a class-centre symmetric head needs at least 2 features to span a plane, "
                f"got {in_features}"
            )
        if num_classes < 1:
            raise ValueError(
                f"a class-centre symmetric head needs at least one class, got {num_classes}"
            )
        self.in_features, self.num_classes = in_features, num_classes
        self.scale, self.eps = scale, eps
        # v1, v2: the two learned vectors that span the plane of the class weights
        self.weight = nn.Parameter(torch.empty(2, in_features))
        nn.init.uniform_(self.weight)

    def basis(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The orthonormal basis ``n1, n2`` of the plane spanned by the two learned vectors."""
        n1 = F.normalize(self.weight[0], dim=0, eps=self.eps)
        v2 = self.weight[1]
        return n1, F.normalize(v2 - (n1 @ v2) * n1, dim=0, eps=self.eps)

    def angles(self) -> torch.Tensor:
        """``theta_k = 2 pi k / classes``, in the weight's dtype and device."""
        k = torch.arange(self.num_classes, dtype=self.weight.dtype, device=self.weight.device)
        return k * (2 * math.pi / self.num_classes)

    def class_weights(self) -> torch.Tensor:
        """The ``(classes, features)`` unit class vectors ``cos(theta_k) n1 + sin(theta_k) n2``."""
        n1, n2 = self.basis()
        theta = self.angles()
        return torch.cos(theta)[:, None] * n1 + torch.sin(theta)[:, None] * n2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n1, n2 = self.basis()
        x = F.normalize(x, dim=-1, eps=self.eps)
        theta = self.angles()
        # cos(x, w_k) = cos(theta_k) <x, n1> + sin(theta_k) <x, n2>: two projections, not C
        return self.scale * (
            (x @ n1)[..., None] * torch.cos(theta) + (x @ n2)[..., None] * torch.sin(theta)
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, scale={self.scale:g}"
        )


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="head",
            name="class_centre",
            factory=ClassCentreHead,
            params={"scale": Float(16.0, 4.0, 64.0, log=True)},
        )
    ]
