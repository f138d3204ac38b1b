"""The class-centre symmetric head: unit, coplanar, zero-sum class weights at the class centres."""

import math

import pytest
import torch
from autonorm_plugins.class_centre_head import ClassCentreHead
from torch import nn
from torch.nn import functional as F

from autonorm import check_component, get_registry


def assert_symmetric(w: torch.Tensor, atol: float = 1e-5) -> None:
    """Unit, coplanar, zero-sum rows ``2 pi / C`` apart: Gram matrix ``cos(2 pi (i - j) / C)``."""
    c = w.shape[0]
    k = torch.arange(c, dtype=w.dtype)
    gram = torch.cos(2 * math.pi * (k[:, None] - k[None, :]) / c)
    torch.testing.assert_close(w @ w.T, gram, atol=atol, rtol=0)
    torch.testing.assert_close(w.sum(0), torch.zeros_like(w[0]), atol=atol, rtol=0)
    assert torch.linalg.matrix_rank(w, atol=1e-4).item() == min(c - 1, 2)  # two classes: antipodal


@pytest.mark.parametrize("features, classes", [(16, 5), (64, 10), (3, 100), (2, 2)])
def test_layout_is_the_rotation_of_n1_through_2pi_k_over_c(features, classes):
    head = ClassCentreHead(features, classes).double()
    assert_symmetric(head.class_weights(), atol=1e-10)
    # the reference construction: plane rotations applied to n1,
    # R_k = I + sin t_k (n2 n1^T - n1 n2^T) + (cos t_k - 1)(n1 n1^T + n2 n2^T)
    n1, n2 = head.basis()
    eye = torch.eye(features, dtype=torch.float64)
    rotated = []
    for k in range(classes):
        t = 2 * math.pi * k / classes
        r = (
            eye
            + math.sin(t) * (n2.outer(n1) - n1.outer(n2))
            + (math.cos(t) - 1) * (n1.outer(n1) + n2.outer(n2))
        )
        torch.testing.assert_close(r @ r.T, eye)  # a rotation
        rotated.append(r @ n1)
    torch.testing.assert_close(head.class_weights(), torch.stack(rotated))


def test_logits_are_scaled_cosines_to_the_class_weights():
    head = ClassCentreHead(24, 7, scale=9.0).double()
    x = torch.randn(11, 24, dtype=torch.float64) * 3
    w = head.class_weights()
    expected = 9.0 * (x @ w.T) / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), expected)
    assert {n: p.numel() for n, p in head.named_parameters()} == {"weight": 48}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_symmetry_holds_exactly_after_optimizer_steps(optimizer):
    torch.manual_seed(0)
    head = ClassCentreHead(32, 10)
    before = head.class_weights().detach().clone()
    opt = (
        torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        if optimizer == "sgd"
        else torch.optim.Adam(head.parameters(), lr=0.05)
    )
    for _ in range(20):
        x, y = torch.randn(16, 32), torch.randint(0, 10, (16,))
        opt.zero_grad()
        F.cross_entropy(head(x), y).backward()
        opt.step()
    after = head.class_weights().detach()
    assert (after - before).abs().max() > 1e-2  # the layout moved ...
    assert_symmetric(after)  # ... and kept its symmetry


class Uneven(ClassCentreHead):
    """The same head with the symmetry broken: unit and coplanar class weights, unevenly spaced."""

    def angles(self) -> torch.Tensor:
        theta = torch.tensor([0.0, 0.5, 1.3, 3.0, 4.3, 5.2], dtype=self.weight.dtype)
        return theta[: self.num_classes]


def tangential_gradient(head: ClassCentreHead) -> torch.Tensor:
    """Per class ``y``: the loss gradient at the feature ``x = w_y``, tangent to the sphere."""
    w = head.class_weights().detach()
    x = w.clone().requires_grad_()
    F.cross_entropy(head(x), torch.arange(len(w)), reduction="sum").backward()
    return x.grad - (x.grad * w).sum(1, keepdim=True) * w


def test_class_weights_are_the_stationary_feature_of_their_class():
    """Under the symmetry a feature lying on its class vector is a critical point of the
    cross-entropy on the sphere (the other classes pull on it in balanced pairs); with uneven
    spacing it is not (for the classes whose neighbours are unbalanced)."""
    torch.manual_seed(0)
    assert tangential_gradient(ClassCentreHead(16, 6).double()).abs().max() < 1e-12
    assert tangential_gradient(Uneven(16, 6).double()).norm(dim=1).max() > 0.1


def in_plane_centre_angles(head_class: type, classes: int, seed: int = 0) -> torch.Tensor:
    """Train a small MLP with a ``head_class`` head on Gaussian blobs: per class, the angle in the
    head's plane of its centre of normalized features minus its weight's angle, in ``(-pi, pi]``."""
    torch.manual_seed(seed)
    dims, features = 10, 8
    head = head_class(features, classes)
    y = torch.arange(classes).repeat_interleave(64)
    x = (torch.randn(classes, dims) * 3)[y] + torch.randn(len(y), dims)
    backbone = nn.Sequential(nn.Linear(dims, 32), nn.ReLU(), nn.Linear(32, features))
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(head(backbone(x)), y).backward()
        opt.step()
    with torch.no_grad():
        assert (head(backbone(x)).argmax(1) == y).all()
        z = F.normalize(backbone(x), dim=1)
        centres = torch.stack([z[y == c].mean(0) for c in range(classes)])
        n1, n2 = head.basis()
        offset = torch.atan2(centres @ n2, centres @ n1) - head.angles()
        return torch.remainder(offset + math.pi, 2 * math.pi) - math.pi


def test_trained_class_centres_lie_on_their_class_weights():
    """The paper's claim, on a small problem: with the symmetry each class's feature centre points
    along its weight vector (within the plane the logits see); breaking the symmetry moves the
    centres off."""
    assert in_plane_centre_angles(ClassCentreHead, 4).abs().max() < 0.25
    assert in_plane_centre_angles(Uneven, 4).abs().max() > 0.5


def test_contract_and_registration():
    component = get_registry().get("head", "class_centre")
    assert component.factory is ClassCentreHead and component.defaults() == {"scale": 16.0}
    assert check_component(component).ok
    assert check_component(ClassCentreHead, kind="head").ok


def test_fewer_than_two_features_are_refused():
    with pytest.raises(ValueError, match="at least 2 features"):
        ClassCentreHead(1, 3)
