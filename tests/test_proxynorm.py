"""Proxy Normalization: the activation normalized by the moments of a Gaussian proxy."""

import math
from statistics import NormalDist

import pytest
import torch
from autonorm_plugins.proxynorm import (
    ProxyNormActivation,
    proxy_points,
    proxynorm_gn,
    proxynorm_gn_pair,
    proxynorm_ln,
    proxynorm_ln_pair,
)
from torch import nn

from autonorm import TrialConfig, build_model


def randomized(channels=4, activation=torch.relu, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layer = ProxyNormActivation(channels, activation=activation).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=dtype))
    return layer


def test_proxy_points_are_the_normal_quantiles():
    r = proxy_points(200)
    expected = torch.tensor([NormalDist().inv_cdf((i + 0.5) / 200) for i in range(200)])
    torch.testing.assert_close(r, expected)
    assert abs(r.mean()) < 1e-6 and abs(r.var(unbiased=False) - 0.9936) < 1e-3


def test_relu_proxy_moments_at_init_match_the_half_normal():
    mean, var = ProxyNormActivation(3).proxy_moments()
    torch.testing.assert_close(mean, torch.full((3,), 1 / math.sqrt(2 * math.pi)), atol=1e-2, rtol=0)
    torch.testing.assert_close(var, torch.full((3,), 0.5 - 1 / (2 * math.pi)), atol=1e-2, rtol=0)


def test_matches_a_direct_computation():
    layer = randomized(3)
    y = torch.randn(2, 3, 5)
    out = layer(y)
    points = [NormalDist().inv_cdf((i + 0.5) / 200) for i in range(200)]
    for c in range(3):
        g, b, gp, bp = (float(t[c].detach()) for t in (layer.weight, layer.bias, layer.proxy_weight, layer.proxy_bias))
        z = [max(g * ((1 + gp) * r + bp) + b, 0.0) for r in points]
        m = sum(z) / len(z)
        v = sum((zi - m) ** 2 for zi in z) / len(z)
        expected = (torch.relu(g * y[:, c] + b) - m) / math.sqrt(v + 0.03)
        torch.testing.assert_close(out[:, c], expected, atol=1e-5, rtol=1e-5)


def test_normalizes_inputs_that_follow_the_proxy_distribution():
    layer = randomized(3, seed=1)
    gen = torch.Generator().manual_seed(2)
    y = (1 + layer.proxy_weight.detach()).view(1, 3, 1) * torch.randn(4000, 3, 10, generator=gen)
    y = y + layer.proxy_bias.detach().view(1, 3, 1)
    out = layer(y)
    _, v = layer.proxy_moments()
    torch.testing.assert_close(out.mean((0, 2)), torch.zeros(3), atol=2e-2, rtol=0)
    torch.testing.assert_close(out.var((0, 2)), (v / (v + 0.03)).detach(), atol=2e-2, rtol=0)


def test_identity_activation_reduces_to_a_rescaling():
    layer = randomized(3, activation=lambda t: t)
    with torch.no_grad():
        layer.proxy_weight.zero_()
        layer.proxy_bias.zero_()
    y = torch.randn(4, 3, 6)
    g = layer.weight.view(1, 3, 1)
    torch.testing.assert_close(layer(y), g * y / torch.sqrt(g**2 * proxy_points().var(unbiased=False) + 0.03))


def test_gradients_through_the_proxy_moments():
    layer = randomized(2, activation=torch.nn.functional.silu, dtype=torch.float64)
    layer.points = layer.points.double()
    names = [name for name, _ in layer.named_parameters()]
    y = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def forward(y, *params):
        return torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (y,))

    assert torch.autograd.gradcheck(forward, (y, *params))


@pytest.mark.parametrize("shape", [(6, 4, 7), (6, 4, 3, 5)])
def test_batch_independent_and_same_in_train_and_eval(shape):
    layer = nn.Sequential(proxynorm_gn(4, groups=2), randomized(4))
    x = torch.randn(*shape) * 3 + 1
    torch.testing.assert_close(layer(x)[:2], layer(x[:2]))
    torch.testing.assert_close(layer.train()(x), layer.eval()(x))


@pytest.mark.parametrize("norm, groups", [("proxynorm_ln", 1), ("proxynorm_gn", 4)])
def test_proxy_norm_sits_where_a_norm_is_followed_by_an_activation(norm, groups):
    """The paper's rule: Norm (no affine) -> PN-activation where an activation follows a norm; a norm that
    ends a residual branch (or a shortcut) keeps its affine, and the activation after a residual sum is phi."""
    cfg = TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=(1, 8, 8),
        num_classes=10,
        model={"name": "resnet", "params": {"depth": 8, "width": 8}},
        components={"normalization": {"name": norm}, "pooling": {"name": "avg"}, "head": {"name": "linear"}},
        epochs=1,
        train={},
    )
    model = build_model(cfg)
    for block in model.blocks:
        paired, proxy = block.norm_act1
        assert isinstance(paired, nn.GroupNorm) and not paired.affine and paired.num_groups == groups
        assert isinstance(proxy, ProxyNormActivation)
        assert isinstance(block.norm2, nn.GroupNorm) and block.norm2.affine  # ends the branch
        assert isinstance(block.act, nn.ReLU)  # after the residual sum
        for m in block.shortcut.modules():
            assert not isinstance(m, nn.GroupNorm) or m.affine
    acts = [m for m in model.modules() if isinstance(m, ProxyNormActivation)]
    assert len(acts) == 1 + 3  # the stem's and one per block (3 at depth 8)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert all(a.proxy_weight.grad is not None and a.proxy_weight.grad.abs().sum() > 0 for a in acts)


def test_the_norms_take_the_official_epsilon():
    """LN/GN eps 1e-3 (the official EfficientNet scripts' --norm-epsilon), not PyTorch's 1e-5."""
    norms = [m for f in (proxynorm_gn, proxynorm_gn_pair, proxynorm_ln, proxynorm_ln_pair) for m in f(8).modules()]
    assert {m.eps for m in norms if isinstance(m, nn.GroupNorm)} == {1e-3}
