"""Batch Kalman Normalization: batch statistics mixed with a prior predicted from the layer below."""

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.baseline_norms import batchnorm
from autonorm_plugins.batch_kalman_norm import PRIOR, BatchKalmanNorm, kalman_conv, kalman_statistics
from sklearn.datasets import load_digits
from torch import nn

import autonorm
from autonorm import build_model
from tests.conftest import write
from tests.test_build import config

CONV = {1: F.conv1d, 2: F.conv2d}


def bn(x):
    return F.batch_norm(x, None, None, training=True, eps=1e-5)


def moments(x):
    var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
    return mean, var


def expected_prior(conv, x, mean, var, noise):
    """Statistics of conv(ReLU(s)), s = mean + sqrt(var) * noise, computed with the functional conv."""
    shape = (1, -1, *[1] * (x.dim() - 2))
    sample = torch.relu(mean.view(shape) + var.sqrt().view(shape) * noise)
    return moments(CONV[x.dim() - 2](sample, conv.weight, None, conv.stride, conv.padding))


def mixed(x, prior, p):
    mean, var = kalman_statistics(*moments(x), *prior, p)
    shape = (1, -1, *[1] * (x.dim() - 2))
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5)


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


def chain(dims, p=0.9):
    torch.manual_seed(0)
    return (
        kalman_conv(dims, 3, 4, 3, padding=1),
        BatchKalmanNorm(4, prior_weight=p),
        kalman_conv(dims, 4, 5, 3, stride=2, padding=1),
        BatchKalmanNorm(5, prior_weight=p),
    )


def assert_prior_used(h, norm, prior):
    """The conv output ``h`` carries ``prior``, and ``norm`` mixes it with ``h``'s batch statistics at its p."""
    for got, want in zip(h.grad_fn.metadata[PRIOR], prior, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(norm(h), mixed(h, prior, norm.prior_weight))


@pytest.mark.parametrize("dims", [1, 2])
def test_first_layer_is_bn_and_the_next_prior_is_the_transition_of_its_statistics(dims):
    conv0, norm0, conv1, norm1 = chain(dims)
    x = torch.randn(4, 3, *[7] * dims)
    h0 = conv0(x)
    y0 = norm0(h0)
    torch.testing.assert_close(y0, bn(h0))  # the data has no prior
    torch.manual_seed(1)
    h1 = conv1(torch.relu(y0))
    torch.manual_seed(1)
    noise = torch.randn(1, 4, *[7] * dims)  # one sample shaped like one input of conv1
    prior = expected_prior(conv1, y0, *moments(h0), noise)  # layer 0's corrected statistics are its batch's
    assert_prior_used(h1, norm1, prior)


def test_the_prior_is_resampled_every_step_and_gradients_reach_the_conv_weights_through_it():
    conv0, norm0, conv1, norm1 = chain(2)
    x = torch.randn(4, 3, 6, 6)
    y0 = torch.relu(norm0(conv0(x)))
    first, second = conv1(y0).grad_fn.metadata[PRIOR], conv1(y0).grad_fn.metadata[PRIOR]
    assert not torch.equal(first[0], second[0])
    grads = torch.autograd.grad(first[0].sum() + first[1].sum(), [conv1.weight, conv0.weight])
    assert all(g.abs().sum() > 0 and torch.isfinite(g).all() for g in grads)  # conv0: via layer 0's statistics


def test_a_residual_sum_carries_the_sum_of_the_paths_statistics():
    torch.manual_seed(0)
    branch, shortcut, after = (kalman_conv(2, c, 4, 3, padding=1) for c in (3, 3, 4))
    nb, ns, na = (BatchKalmanNorm(4, prior_weight=0.9) for _ in range(3))
    x = torch.randn(4, 3, 5, 5)
    hb, hs = branch(x), shortcut(x)
    block = torch.relu(nb(hb) + ns(hs))
    torch.manual_seed(2)
    h = after(block)
    torch.manual_seed(2)
    (mb, vb), (ms, vs) = moments(hb), moments(hs)
    prior = expected_prior(after, block, mb + ms, vb + vs, torch.randn(1, 4, 5, 5))
    assert_prior_used(h, na, prior)


def test_no_prior_after_another_activation_or_without_autograd():
    conv0, norm0, conv1, norm1 = chain(2)
    x = torch.randn(4, 3, 6, 6)
    h = conv1(F.elu(norm0(conv0(x))))
    assert PRIOR not in h.grad_fn.metadata
    torch.testing.assert_close(norm1(h), bn(h))
    with torch.no_grad():
        h = conv1(torch.relu(norm0(conv0(x))))
        torch.testing.assert_close(norm1(h), bn(h))


def test_guard_falls_back_to_batch_norm_and_p_zero_chain_is_batch_norm():
    conv0, norm0, conv1, norm1 = chain(2)
    x = torch.randn(4, 3, 6, 6)
    h = conv1(torch.relu(norm0(conv0(x) * 1000)))  # prior variance ~1e6 times the batch's
    torch.testing.assert_close(norm1(h), bn(h))
    conv0, norm0, conv1, norm1 = chain(2, p=0.0)
    h = conv1(torch.relu(norm0(conv0(x))))
    torch.testing.assert_close(norm1(h), bn(h))


def official_kalman(batch_mean, batch_var, prior_mean, prior_var, p):
    """The combined moments of the official ``kalman_filter`` (``KalmanNorm/kalman_norm.py``): those of the
    mixture of the prior (weight p) and batch Gaussians."""
    mean = p * prior_mean + (1 - p) * batch_mean
    var = p * prior_var + (1 - p) * batch_var + p * (1 - p) * (batch_mean - prior_mean) ** 2
    return mean, var


@pytest.mark.parametrize("ratios, guarded", [((50.0, 148.0), False), ((52.0, 150.0), True)], ids=["99", "101"])
def test_guard_ignores_the_prior_from_a_mean_variance_ratio_of_100(ratios, guarded):
    """Official guard: the prior is used while ``mean_c(v_prior / v_batch) < 100`` (here 99 or 101; the
    channels' batch variances differ, so the ratio of the mean variances would be about 138)."""
    x = torch.randn(16, 2, 4, 4) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    h = x.requires_grad_() * 1.0  # a conv output stand-in: an autograd node to carry the prior
    batch_mean, batch_var = moments(h.detach())
    prior = torch.tensor([0.5, -1.0]), torch.tensor(ratios) * batch_var
    h.grad_fn.metadata[PRIOR] = prior
    mean, var = (batch_mean, batch_var) if guarded else official_kalman(batch_mean, batch_var, *prior, 0.5)
    expected = (h - mean.view(1, 2, 1, 1)) / torch.sqrt(var.view(1, 2, 1, 1) + 1e-5)
    torch.testing.assert_close(BatchKalmanNorm(2, prior_weight=0.5)(h), expected)


def test_running_statistics_average_the_combined_ones_and_eval_is_bn_with_them():
    """Running averages (momentum 0.1, from 0 and 1) of the official combined mean and variance, with the
    batch variance unbiased in the latter as in BN."""
    conv0, norm0, conv1, norm1 = chain(2)
    x = torch.randn(4, 3, 6, 6)
    h = conv1(torch.relu(norm0(conv0(x))))
    prior = [s.detach() for s in h.grad_fn.metadata[PRIOR]]
    batch_mean, batch_var = moments(h.detach())
    count = h.numel() // h.shape[1]
    mean, var = official_kalman(batch_mean, batch_var * count / (count - 1), *prior, 0.9)
    norm1(h)
    torch.testing.assert_close(norm1.running_mean, 0.1 * mean)
    torch.testing.assert_close(norm1.running_var, 0.9 + 0.1 * var)
    norm1.eval()
    ref = F.batch_norm(h, norm1.running_mean, norm1.running_var, norm1.weight, norm1.bias, False, 0.0, 1e-5)
    torch.testing.assert_close(norm1(h), ref)


def test_batch_dependent_in_training_independent_in_eval():
    layer = BatchKalmanNorm(3, prior_weight=0.5)
    x = torch.randn(8, 3, 4, 4)
    for _ in range(3):
        layer(x)
    assert not torch.allclose(layer(x)[:2], layer(x[:2]))
    layer.eval()
    torch.testing.assert_close(layer(x)[:2], layer(x[:2]))


@pytest.mark.parametrize("model", ["resnet", "small_cnn"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32)])
def test_every_conv_but_the_first_hands_a_prior_in_the_backbones(model, shape):
    net = build_model(config(model, "batch_kalman", shape=shape))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    priors = []
    for conv in convs:
        conv.register_forward_hook(lambda m, i, out: priors.append(PRIOR in out.grad_fn.metadata))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(3):
        priors.clear()
        loss = F.cross_entropy(net(torch.randn(2, *shape)), torch.tensor([0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        assert len(priors) == len(convs) and not priors[0] and all(priors[1:])
    net.eval()
    assert torch.isfinite(net(torch.randn(2, *shape))).all()


SPACE = """
name: bkn
data: {dataset: digits}
model: {backbone: MODEL, depth: DEPTH, width: 4}
space:
  normalization:
    batch_kalman: {prior_weight: [0.9]}
  activation: [relu]
train:
  epochs: 1
  batch_size: 64
  lr: 0.05
search:
  trials: 1
  pruner: none
  seed: 0
"""


@pytest.mark.parametrize("model, depth", [("resnet", 8), ("small_cnn", 2)])
def test_a_short_search_trains(tmp_path, model, depth):
    spec = write(tmp_path / "bkn.yaml", SPACE.replace("MODEL", model).replace("DEPTH", str(depth)))
    results = autonorm.search(spec)
    assert results.trials and all(t.state == "complete" for t in results.trials), results.trials


def test_at_the_default_prior_weight_a_fresh_resnet_normalizes_a_real_batch():
    """The default is the official large-batch p = 0.05 (autonorm trains whole batches, the official
    ``split_num=1``): each layer's output is near zero mean and unit variance on a batch of 64, which
    the micro-batch p = 0.9 is far from (channel means up to about 2.4 away)."""
    x = torch.tensor(load_digits().images[:64], dtype=torch.float32).unsqueeze(1) / 16

    def spread(p):
        torch.manual_seed(0)
        model = build_model(config("resnet", "batch_kalman", depth=14, width=16))
        outs = []
        for m in model.modules():
            if isinstance(m, BatchKalmanNorm):
                m.prior_weight = m.prior_weight if p is None else p
                m.register_forward_hook(lambda mod, args, out: outs.append(out.detach()))
        model.train()(x)
        means = torch.cat([o.mean((0, 2, 3)) for o in outs]).abs().max()
        variances = torch.cat([o.var((0, 2, 3)) for o in outs])
        return float(means), float(variances.min()), float(variances.max())

    mean, low, high = spread(None)
    assert mean < 0.2 and 0.6 < low and high < 1.2
    assert spread(0.9)[0] > 1.0
