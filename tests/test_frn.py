"""FRN + TLU: the paper's formula, its invariances, TLU's threshold, and its wiring in a backbone."""

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.frn import TLU, FilterResponseNorm, frn
from torch import nn

from autonorm import TrialConfig, build_model, check_component

SHAPES = [(4, 6, 9), (4, 6, 5, 7)]


def randomized(layer: FilterResponseNorm) -> FilterResponseNorm:
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.uniform_(-1, 1)
    return layer


@pytest.mark.parametrize("shape", SHAPES)
def test_frn_matches_the_rms_norm_formula(shape):
    x = torch.randn(*shape) * 3 + 1
    layer = randomized(frn(6))
    assert layer.eps == 1e-6  # the paper's default
    ref = F.rms_norm(x, x.shape[2:], eps=1e-6) * layer.weight.view(1, -1, *[1] * (x.dim() - 2))
    ref = ref + layer.bias.view(1, -1, *[1] * (x.dim() - 2))
    torch.testing.assert_close(layer(x), ref, rtol=1e-6, atol=1e-6)
    # the same by hand: mean square over the spatial dims, no mean subtraction
    nu2 = x.pow(2).mean(tuple(range(2, x.dim())), keepdim=True)
    xhat = frn(6)(x)
    torch.testing.assert_close(xhat, x / torch.sqrt(nu2 + 1e-6))
    torch.testing.assert_close(xhat.pow(2).mean(tuple(range(2, x.dim()))), (nu2 / (nu2 + 1e-6)).flatten(1))


@pytest.mark.parametrize("shape", SHAPES)
def test_frn_scale_sign_and_shift_behaviour(shape):
    x = torch.randn(*shape) * 100  # nu2 >> eps
    layer = frn(6)
    a = torch.rand(shape[0], shape[1], *[1] * (len(shape) - 2)) * 5 + 0.1
    torch.testing.assert_close(layer(a * x), layer(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(-a * x), -layer(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer(x + 50), layer(x), atol=1e-2)  # no mean centring, unlike IN


@pytest.mark.parametrize("shape", SHAPES)
def test_frn_is_per_sample_per_channel_and_the_same_in_train_and_eval(shape):
    layer = randomized(frn(6))
    x = torch.randn(*shape)
    y = layer(x)
    torch.testing.assert_close(layer(x[1:2]), y[1:2])
    x2 = x.clone()
    x2[:, 3] *= 7
    x2[:, 3] += 1
    changed = (layer(x2) - y).abs().flatten(2).amax(-1) > 1e-6
    assert changed[:, 3].all() and not changed[:, [0, 1, 2, 4, 5]].any()
    assert list(layer.buffers()) == []
    torch.testing.assert_close(layer.eval()(x), y)


def test_tlu_thresholds_and_its_gradient_flows_only_below_tau():
    tlu = TLU(6)
    x = torch.randn(4, 6, 5, 5)
    torch.testing.assert_close(tlu(x), torch.relu(x))  # tau starts at 0
    with torch.no_grad():
        tlu.tau.copy_(torch.linspace(-1, 1, 6))
    out = tlu(x)
    tau = tlu.tau.view(1, -1, 1, 1)
    assert (out >= tau).all()
    torch.testing.assert_close(out, torch.relu(x - tau) + tau)
    out.sum().backward()
    torch.testing.assert_close(tlu.tau.grad, (x < tau).sum((0, 2, 3)).float())


def test_learned_eps_is_a_floor_plus_a_learned_magnitude():
    layer = frn(6, learned_eps=True)
    x = torch.randn(8, 6, 1, 1)  # a 1x1 map: fixed eps would give nearly sign(x)
    torch.testing.assert_close(layer(x), F.rms_norm(x, (1, 1), eps=1e-6 + 1e-4))
    layer(x).pow(2).sum().backward()
    assert layer.eps_learned.grad is not None and layer.eps_learned.grad != 0
    with torch.no_grad():
        layer.eps_learned.fill_(-0.5)  # the sign is irrelevant: |eps_l| is used
    torch.testing.assert_close(layer(x), F.rms_norm(x, (1, 1), eps=1e-6 + 0.5))


def test_half_precision_mean_square_does_not_overflow():
    x = torch.full((2, 3, 4, 4), 1000.0)
    out = frn(3).half()(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.ones_like(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32)])
def test_resnet_uses_frn_tlu_pairs_frn_alone_before_the_sum_and_tlu_after_it(shape):
    config = TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=shape,
        num_classes=10,
        model={"name": "resnet", "params": {}},
        components={
            "normalization": {"name": "frn"},
            "activation": {"name": "relu"},
            "pooling": {"name": "avg"},
            "head": {"name": "linear"},
        },
        epochs=1,
        train={},
    )
    net = build_model(config)
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    block = net.blocks[0]
    assert [type(m) for m in block.norm_act1] == [FilterResponseNorm, TLU]
    assert isinstance(block.norm2, FilterResponseNorm) and isinstance(block.act, TLU)
    out = net(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    x = torch.randn(3, *shape)
    torch.testing.assert_close(net(x[:1]), net(x)[:1], rtol=1e-5, atol=1e-5)  # batch-independent in training


def test_learned_eps_variant_keeps_the_contract():
    assert check_component("frn", kind="normalization", params={"learned_eps": True}).ok
