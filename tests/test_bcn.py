"""Batch-Channel Normalization and Weight Standardization: formulas, invariances, estimates, wiring."""

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.bcn import BatchChannelNorm, EstimatedBatchNorm, bcn
from autonorm_plugins.weight_standardization import WSConv1d, WSConv2d, standardize_weight, ws_conv
from torch import nn

from autonorm import TrialConfig, build_model

SHAPES = [(6, 8, 9), (6, 8, 5, 4)]


# ---------------------------------------------------------------- weight standardization


def test_standardized_weight_has_zero_mean_unit_std_and_ignores_affine_changes():
    w = torch.randn(6, 4, 3, 3) * 0.3 + 0.2
    hat = standardize_weight(w)
    torch.testing.assert_close(hat.mean((1, 2, 3)), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(hat.var((1, 2, 3), correction=0), torch.ones(6), atol=1e-3, rtol=0)
    a, b = torch.rand(6, 1, 1, 1) * 3 + 0.5, torch.randn(6, 1, 1, 1)
    torch.testing.assert_close(standardize_weight(a * w + b), hat, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(standardize_weight(hat), hat, atol=1e-4, rtol=1e-4)  # idempotent up to eps


@pytest.mark.parametrize("dims", [1, 2])
def test_ws_conv_convolves_with_the_standardized_weight_on_every_forward(dims):
    conv = ws_conv(dims, 4, 6, 3, stride=2, padding=1, bias=True)
    assert isinstance(conv, WSConv1d if dims == 1 else WSConv2d)
    with torch.no_grad():
        conv.weight.normal_()  # var >> eps, so rescaling moves the output by about eps / var only
    x = torch.randn(2, 4, *[7] * dims)
    functional = F.conv1d if dims == 1 else F.conv2d
    w = conv.weight.detach()
    centred = w - w.mean(tuple(range(1, w.dim())), keepdim=True)
    ref_w = centred / torch.sqrt(centred.pow(2).mean(tuple(range(1, w.dim())), keepdim=True) + 1e-5)
    torch.testing.assert_close(conv(x), functional(x, ref_w, conv.bias, stride=2, padding=1))
    with torch.no_grad():
        conv.weight.mul_(5).add_(1)  # re-standardized: the output does not move
    torch.testing.assert_close(conv(x), functional(x, ref_w, conv.bias, stride=2, padding=1), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- BCN


def reference_bcn(x, layer: BatchChannelNorm):
    """nn.BatchNorm -> nn.GroupNorm whose per-channel affine repeats the per-group one."""
    bn = nn.BatchNorm1d(x.shape[1]) if x.dim() == 3 else nn.BatchNorm2d(x.shape[1])
    bn.load_state_dict(layer.batch.state_dict())
    gn = nn.GroupNorm(layer.groups, x.shape[1])
    with torch.no_grad():
        gn.weight.copy_(layer.weight.repeat_interleave(x.shape[1] // layer.groups))
        gn.bias.copy_(layer.bias.repeat_interleave(x.shape[1] // layer.groups))
    bn.train(layer.training)
    return gn(bn(x))


@pytest.mark.parametrize("shape", SHAPES)
def test_bcn_is_batchnorm_then_groupnorm_with_per_group_affine(shape):
    layer = bcn(8, groups=4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        layer.batch.weight.uniform_(0.5, 2)
    x = torch.randn(*shape) * 2 + 1
    torch.testing.assert_close(layer(x), reference_bcn(x, layer), atol=1e-5, rtol=1e-5)
    layer.eval()
    torch.testing.assert_close(layer(x), reference_bcn(x, layer), atol=1e-5, rtol=1e-5)
    assert layer.weight.shape == (4,)


def test_bcn_large_batch_variant_depends_on_the_batch_in_training():
    layer = bcn(8, groups=4)
    x = torch.randn(6, 8, 5, 5)
    assert not torch.allclose(layer(x)[:2], layer(x[:2]), atol=1e-3)
    layer.eval()
    torch.testing.assert_close(layer(x)[:2], layer(x[:2]))


def test_channel_stage_ignores_per_sample_group_scale_and_shift():
    layer = bcn(8, groups=4)
    y = torch.randn(3, 8, 5, 5)
    a = (torch.rand(3, 4) * 3 + 0.5).repeat_interleave(2, dim=1).view(3, 8, 1, 1)
    b = torch.randn(3, 4).repeat_interleave(2, dim=1).view(3, 8, 1, 1)
    torch.testing.assert_close(layer.channel_norm(a * y + b), layer.channel_norm(y), atol=1e-4, rtol=1e-4)


def test_estimates_with_rate_zero_are_batch_independent_and_equal_in_train_and_eval():
    layer = bcn(8, groups=4, estimate=True, rate=0.0)
    x = torch.randn(6, 8, 5, 5) * 3 + 1
    out = layer(x)
    torch.testing.assert_close(layer(x[:1]), out[:1])
    torch.testing.assert_close(layer.eval()(x), out)


def test_estimates_move_geometrically_towards_the_batch_statistics():
    est = EstimatedBatchNorm(3, rate=0.2)
    x = torch.randn(4, 3, 6) * 2 + 3
    mean, var = x.mean((0, 2)), x.var((0, 2), correction=0)
    mu_old = torch.zeros(3)
    for k in range(1, 31):
        expected_var = 0.8 * est.running_var + 0.2 * (var + (mean - mu_old) ** 2)
        est(x)
        torch.testing.assert_close(est.running_mean, mean * (1 - 0.8**k))
        torch.testing.assert_close(est.running_var, expected_var)
        mu_old = est.running_mean.clone()
    torch.testing.assert_close(est.running_var, var, atol=0.01, rtol=0.01)


def test_estimated_batchnorm_has_no_gradient_through_the_statistics():
    est = EstimatedBatchNorm(3, rate=0.5)
    x = torch.randn(4, 3, 6, requires_grad=True)
    est(x).sum().backward()
    scale = est.weight / torch.sqrt(est.running_var + 1e-5)  # the estimates after the step
    torch.testing.assert_close(x.grad, scale.view(1, 3, 1).expand_as(x))


# ---------------------------------------------------------------- in a backbone


@pytest.mark.parametrize("norm, norm_type", [("bcn", BatchChannelNorm), ("gn_ws", nn.GroupNorm)])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32)])
def test_every_conv_before_a_norm_is_weight_standardized_and_the_head_is_not(norm, norm_type, shape):
    config = TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=shape,
        num_classes=10,
        model={"name": "resnet", "params": {}},
        components={
            "normalization": {"name": norm},
            "activation": {"name": "relu"},
            "pooling": {"name": "avg"},
            "head": {"name": "linear"},
        },
        epochs=1,
        train={},
    )
    net = build_model(config)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert convs and all(isinstance(m, WSConv1d | WSConv2d) for m in convs)
    assert any(isinstance(m, norm_type) for m in net.modules())
    assert type(net.head) is nn.Linear
    assert net(torch.randn(2, *shape)).shape == (2, 10)
