"""IterNorm: Newton-iteration group whitening; D=1 is batch norm, large T is ZCA whitening."""

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.iternorm import IterNorm


def correlated(n, channels, dtype=torch.float64, seed=0):
    """Samples (n, channels) with a non-diagonal covariance of condition number 5 and a non-zero mean."""
    gen = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(channels, channels, generator=gen, dtype=dtype))
    scales = torch.linspace(1, 5, channels, dtype=dtype).sqrt()
    return torch.randn(n, channels, generator=gen, dtype=dtype) @ (rotation * scales) @ rotation.T + 2.0


def zca(x, eps=1e-5):
    """ZCA whitening of (m, D) rows by eigendecomposition of eps*I + biased covariance."""
    xc = x - x.mean(0)
    sigma = xc.T @ xc / len(x) + eps * torch.eye(x.shape[1], dtype=x.dtype)
    values, vectors = torch.linalg.eigh(sigma)
    return xc @ (vectors @ torch.diag(values.rsqrt()) @ vectors.T)


@pytest.mark.parametrize("shape", [(8, 6, 5), (8, 6, 3, 4)])
@pytest.mark.parametrize("iterations", [1, 5])
def test_one_channel_groups_are_batch_norm(shape, iterations):
    layer = IterNorm(6, group_size=1, iterations=iterations)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.normal_()
    x = torch.randn(*shape) * 3 + 1
    expected = F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=1e-5)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_many_iterations_give_zca_whitening():
    x = correlated(2048, 8)
    layer = IterNorm(8, group_size=8, iterations=15).double()
    torch.testing.assert_close(layer(x), zca(x), atol=1e-3, rtol=0)


@pytest.mark.parametrize("iterations, tolerance", [(10, 1e-2), (5, 0.3)])
def test_whitened_covariance_is_near_identity(iterations, tolerance):
    x = correlated(4096, 16).float().view(512, 8, 16).permute(0, 2, 1)  # (N, C, L)
    out = IterNorm(16, group_size=16, iterations=iterations)(x)
    rows = out.permute(0, 2, 1).reshape(-1, 16)
    cov = torch.cov(rows.T, correction=0)
    error = (cov - torch.eye(16)).abs().max()
    assert error < tolerance
    if iterations == 5:  # T = 5 whitens only partially, by design
        assert error > 1e-2


def test_groups_are_consecutive_channels_and_independent():
    layer = IterNorm(12, group_size=4)
    assert (layer.groups, layer.group_size) == (3, 4)
    x = torch.randn(16, 12, 5)
    y = x.clone()
    y[:, 4:8] = torch.randn(16, 4, 5) * 7  # another group changes
    a, b = layer(x), layer(y)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    torch.testing.assert_close(a[:, 8:], b[:, 8:])
    assert not torch.allclose(a[:, 4:8], b[:, 4:8])


def test_group_size_halves_until_it_divides_the_channels():
    """As the official constructor: no capping at C first, so 24 channels of group size 32 make groups of 8."""
    assert IterNorm(24, group_size=16).group_size == 8
    assert IterNorm(24, group_size=32).group_size == 8
    assert IterNorm(6, group_size=16).group_size == 2
    assert IterNorm(16, group_size=64).group_size == 16
    assert IterNorm(10, group_size=4).group_size == 2


def newton_whitened(x, iterations, eps=1e-5):
    """Algorithm 1 of the paper on (m, D) rows, step by step: eps on the diagonal before the trace."""
    xc = x - x.mean(0)
    sigma = eps * torch.eye(x.shape[1], dtype=x.dtype) + xc.T @ xc / len(x)
    trace = torch.trace(sigma)
    p = torch.eye(x.shape[1], dtype=x.dtype)
    for _ in range(iterations):
        p = 1.5 * p - 0.5 * p @ p @ p @ (sigma / trace)
    return xc @ (p / trace.sqrt()).T


@pytest.mark.parametrize("iterations", [0, 1, 5])
def test_output_is_exactly_the_newton_iteration_at_t(iterations):
    """T = 5 (the default) whitens partially; the output must be that partial whitening exactly, not a
    closer or looser one (one iteration more or less, or eps added after the trace, fails here)."""
    x = correlated(512, 8) * 1e-2  # small variances: where eps placement shows
    out = IterNorm(8, group_size=8, iterations=iterations, affine=False).double()(x)
    torch.testing.assert_close(out, newton_whitened(x, iterations), atol=1e-9, rtol=1e-7)
    other = newton_whitened(x, iterations + 1)
    assert (out - other).abs().max() > 1e-4


def test_eval_uses_running_whitening_matrix():
    layer = IterNorm(8, group_size=4, momentum=1.0)
    x = torch.randn(32, 8, 3, 3) + 1
    train_out = layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), train_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x)[:2], layer(x[:2]))  # batch-independent in eval


def test_running_statistics_are_averages_of_the_whitening_matrix():
    layer = IterNorm(4, group_size=4, momentum=0.1)
    x = torch.randn(64, 4)
    xc = x - x.mean(0)
    layer(x)
    assert layer.running_wm.shape == (1, 4, 4)
    wm = (layer.running_wm[0] - 0.9 * torch.eye(4)) / 0.1
    torch.testing.assert_close(layer.running_mean[0, :, 0], 0.1 * x.mean(0))
    torch.testing.assert_close(wm @ xc.T, IterNorm(4, group_size=4)(x).T, atol=1e-5, rtol=1e-5)


def test_gradients_flow_through_the_iterations():
    layer = IterNorm(4, group_size=2, iterations=3, affine=False).double()
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
