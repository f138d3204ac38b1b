"""The fixed Hadamard head: Hadamard weights, one learned scale, and a fast transform equal to the product."""

import math

import pytest
import torch
from autonorm_plugins.hadamard_head import HadamardHead, fwht, sylvester_hadamard


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_sylvester_matrix_is_hadamard(n):
    h = sylvester_hadamard(n)
    assert set(h.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(h @ h.T, n * torch.eye(n))
    with pytest.raises(ValueError, match="power-of-two"):
        sylvester_hadamard(12)


@pytest.mark.parametrize("n", [1, 2, 16, 1024])
def test_fast_transform_equals_the_matrix_product(n):
    x = torch.randn(3, 5, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ sylvester_hadamard(n).double())


def test_output_is_the_scaled_hadamard_projection_of_normalized_features():
    head = HadamardHead(24, 10, fast=False)
    with torch.no_grad():
        head.scale.fill_(2.5)
    x = torch.randn(7, 24)
    w = sylvester_hadamard(32)[:10, :24]
    expected = 2.5 * (x / x.norm(dim=1, keepdim=True)) @ w.T + head.bias
    torch.testing.assert_close(head(x), expected)
    # power-of-two features: the class rows are exactly orthogonal
    w = HadamardHead(16, 10).weight
    torch.testing.assert_close(w @ w.T, 16 * torch.eye(10))


@pytest.mark.parametrize("features, classes", [(24, 10), (1024, 1000), (16, 16), (1000, 7)])
def test_fast_and_matrix_paths_agree_in_value_and_gradient(features, classes):
    fast, slow = HadamardHead(features, classes, fast=True), HadamardHead(features, classes, fast=False)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(5, features, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = fast.double()(xa), slow.double()(xb)
    torch.testing.assert_close(a, b)
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(fast.scale.grad, slow.scale.grad)


def test_only_scale_and_bias_are_trained_and_saved():
    head = HadamardHead(1024, 1000)
    assert {n: p.numel() for n, p in head.named_parameters()} == {"scale": 1, "bias": 1000}
    assert not head.weight.requires_grad and "weight" not in head.state_dict()
    assert sum(p.numel() for p in HadamardHead(64, 10, bias=False).parameters()) == 1


def test_more_classes_than_features_is_refused():
    with pytest.raises(ValueError, match="at least as many features as classes"):
        HadamardHead(16, 100)


def test_scale_starts_at_one_over_sqrt_classes_and_bias_uniform_within_it():
    """Reference ``HadamardProj``: ``init_scale = 1 / sqrt(output_size)``; the scale starts there and the bias
    is drawn from ``U(-init_scale, init_scale)``."""
    torch.manual_seed(0)
    head = HadamardHead(1024, 1000)
    bound = 1 / math.sqrt(1000)
    assert head.scale.item() == pytest.approx(bound, rel=1e-6)
    assert head.bias.abs().max().item() <= bound
    assert head.bias.min().item() < -0.95 * bound and head.bias.max().item() > 0.95 * bound
    assert head.bias.var().item() == pytest.approx(bound**2 / 3, rel=0.15)  # 1000 draws
    assert HadamardHead(64, 10).scale.item() == pytest.approx(1 / math.sqrt(10), rel=1e-6)
