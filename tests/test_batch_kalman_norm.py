"""Batch Kalman Normalization (per-layer form): batch statistics mixed with a prior estimate."""

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.baseline_norms import batchnorm
from autonorm_plugins.batch_kalman_norm import BatchKalmanNorm, kalman_statistics


@pytest.mark.parametrize("shape", [(8, 4, 6), (8, 4, 3, 5), (8, 4)])
def test_prior_weight_zero_is_batch_norm_in_training_and_eval(shape):
    ours, ref = BatchKalmanNorm(4, prior_weight=0.0), batchnorm(4)
    for step in range(3):
        x = torch.randn(*shape) * (step + 1) + step
        torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    x = torch.randn(*shape)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


def test_combined_statistics_are_the_moments_of_the_mixture():
    gen = torch.Generator().manual_seed(0)
    p = 0.3
    m_prior, v_prior = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])
    m_batch, v_batch = torch.tensor([3.0, 0.0]), torch.tensor([1.5, 0.25])
    n = 400_000
    from_prior = torch.rand(n, 1, generator=gen) < p
    samples = torch.where(
        from_prior,
        m_prior + v_prior.sqrt() * torch.randn(n, 2, generator=gen),
        m_batch + v_batch.sqrt() * torch.randn(n, 2, generator=gen),
    )
    mean, var = kalman_statistics(m_batch, v_batch, m_prior, v_prior, p)
    torch.testing.assert_close(mean, samples.mean(0), atol=1e-2, rtol=0)
    torch.testing.assert_close(var, samples.var(0), atol=2e-2, rtol=0)


def normalized(x, mean, var, eps=1e-5):
    return (x - mean.view(1, -1, 1)) / torch.sqrt(var.view(1, -1, 1) + eps)


def test_training_output_mixes_the_running_prior_with_its_data_share():
    layer = BatchKalmanNorm(3, prior_weight=0.9, momentum=0.1)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
        layer.num_batches_tracked.fill_(4)
    prior_mean, prior_var = layer.running_mean.clone(), layer.running_var.clone()
    x = torch.randn(4, 3, 5) + 1
    p = 0.9 * (1 - 0.9**4)
    batch_var, batch_mean = torch.var_mean(x, dim=(0, 2), unbiased=False)
    mean, var = kalman_statistics(batch_mean, batch_var, prior_mean, prior_var, p)
    torch.testing.assert_close(layer(x), normalized(x, mean, var))
    torch.testing.assert_close(layer.running_mean, 0.9 * prior_mean + 0.1 * mean)


def test_first_step_and_guard_fall_back_to_batch_norm():
    x = torch.randn(4, 3, 5)
    reference = F.batch_norm(x, None, None, training=True, eps=1e-5)
    torch.testing.assert_close(BatchKalmanNorm(3, prior_weight=0.9)(x), reference)  # no data in the prior yet
    guarded = BatchKalmanNorm(3, prior_weight=0.9)
    with torch.no_grad():
        guarded.num_batches_tracked.fill_(100)
        guarded.running_var.fill_(101 * x.var(dim=(0, 2), unbiased=False).max())
    torch.testing.assert_close(guarded(x), reference)


def test_batch_dependent_in_training_independent_in_eval():
    layer = BatchKalmanNorm(3, prior_weight=0.5)
    x = torch.randn(8, 3, 4, 4)
    for _ in range(3):
        layer(x)
    assert not torch.allclose(layer(x)[:2], layer(x[:2]))
    layer.eval()
    torch.testing.assert_close(layer(x)[:2], layer(x[:2]))
