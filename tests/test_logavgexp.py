"""LogAvgExp: between mean and max, tending to max as t -> 0+ and to mean as t -> inf; local form."""

import math

import pytest
import torch
from autonorm_plugins.logavgexp import GlobalLogAvgExp, LocalLogAvgExp, logavgexp
from torch import nn


def naive(x, t):
    """The definition, in float64 on moderate inputs: t * log(mean(exp(x / t)))."""
    return t * torch.log(torch.exp(x.double() / t).mean(-1))


@pytest.mark.parametrize("shape", [(4, 3, 7), (4, 3, 5, 6)])
@pytest.mark.parametrize("t", [0.3, 1.0, 4.0])
def test_matches_the_definition(shape, t):
    x = torch.randn(shape)
    out = GlobalLogAvgExp(t)(x)
    assert out.shape == shape[:2]
    torch.testing.assert_close(out.double(), naive(x.flatten(2), t), rtol=1e-5, atol=1e-5)


def test_limits_max_and_mean_and_bounds():
    x = torch.randn(5, 8, 6, 6, dtype=torch.float64) * 3
    flat = x.flatten(2)
    top, mean = flat.amax(-1), flat.mean(-1)
    # t -> 0+: the max, within t log n
    small = GlobalLogAvgExp(1e-4)(x)
    assert ((top - small) >= 0).all() and ((top - small) <= 1e-4 * math.log(36) + 1e-12).all()
    # t -> inf: the mean
    torch.testing.assert_close(GlobalLogAvgExp(1e5)(x), mean, atol=1e-3, rtol=0)
    # always between mean (Jensen) and max, increasing as t falls
    prev = mean
    for t in (100.0, 10.0, 1.0, 0.1, 0.01):
        out = GlobalLogAvgExp(t)(x)
        assert (out >= mean - 1e-9).all() and (out <= top + 1e-9).all() and (out >= prev - 1e-9).all()
        prev = out


def test_stable_for_large_inputs_and_small_temperatures():
    x = torch.full((2, 3, 4, 4), 1000.0)
    x[..., 0, 0] = 1010.0
    out = GlobalLogAvgExp(0.01)(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((2, 3), 1010.0 - 0.01 * math.log(16)))


def test_temperature_is_learned_positive_and_gets_a_gradient():
    pool = GlobalLogAvgExp(0.5)
    assert [n for n, _ in pool.named_parameters()] == ["log_t"]
    assert pool.temperature.item() == pytest.approx(0.5)
    pool(torch.randn(4, 3, 5, 5)).sum().backward()
    assert torch.isfinite(pool.log_t.grad) and pool.log_t.grad.item() != 0
    fixed = GlobalLogAvgExp(0.5, learnable=False)
    assert list(fixed.parameters()) == [] and "log_t" in fixed.state_dict()
    with pytest.raises(ValueError, match="positive"):
        GlobalLogAvgExp(0.0)


@pytest.mark.parametrize("shape", [(2, 3, 9), (2, 3, 7, 6)])
def test_local_form_halves_sizes_and_tends_to_max_and_avg_pooling(shape):
    x = torch.randn(shape, dtype=torch.float64)
    dims = len(shape) - 2
    max_pool = (nn.MaxPool1d if dims == 1 else nn.MaxPool2d)(3, 2, 1)
    avg_pool = (nn.AvgPool1d if dims == 1 else nn.AvgPool2d)(3, 2, 1, count_include_pad=False)
    out = LocalLogAvgExp(temperature=1.0)(x)
    assert out.shape == max_pool(x).shape == (*shape[:2], *[(s + 1) // 2 for s in shape[2:]])
    torch.testing.assert_close(LocalLogAvgExp(temperature=1e-5)(x), max_pool(x), atol=1e-4, rtol=0)
    torch.testing.assert_close(LocalLogAvgExp(temperature=1e5)(x), avg_pool(x), atol=1e-4, rtol=0)
    assert ((out <= max_pool(x) + 1e-9) & (out >= avg_pool(x) - 1e-9)).all()


def test_local_form_window_value_and_temperature_gradient_through_padding():
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    pool = LocalLogAvgExp(temperature=0.7).double()
    out = pool(x)
    # the corner window holds x[0:2, 0:2] only (padding is absent, not zero)
    corner = x[0, 0, :2, :2].reshape(1, -1)
    torch.testing.assert_close(out[0, 0, 0, 0], logavgexp(corner, -1, 0.7)[0])
    torch.testing.assert_close(out[0, 0, 1, 1], logavgexp(x[0, 0, 1:4, 1:4].reshape(1, -1), -1, 0.7)[0])
    out.sum().backward()
    assert torch.isfinite(pool.log_t.grad) and pool.log_t.grad.item() != 0
    assert torch.isfinite(x.grad).all()
