"""JEM: cross-entropy plus LSE f(x_sampled) - LSE f(x), with SGLD samples from a persistent replay buffer."""

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.jem import JEM, sgld_step
from torch import nn

import autonorm
from autonorm import TrainingMethod, build_model, load_spec
from autonorm.errors import TrialFailed
from autonorm.trainer import fit
from tests.helpers import registry_with_test_components
from tests.test_build import config
from tests.test_trainer import TRAIN


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))


def jem_on(x, **kwargs):
    jem = JEM(**kwargs)
    jem.setup_data(x, torch.zeros(len(x), dtype=torch.long), 1)
    return jem


def test_sgld_step_is_gradient_ascent_on_logsumexp_plus_gaussian_noise():
    model, x = tiny_model(), torch.randn(5, 3, 2, 2)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr).logsumexp(1).sum(), xr)
    torch.manual_seed(7)
    expected = x + 0.3 * grad + 0.05 * torch.randn_like(x)
    torch.manual_seed(7)
    stepped = sgld_step(model, x, 0.3, 0.05)
    torch.testing.assert_close(stepped, expected)
    assert all(p.grad is None for p in model.parameters())  # SGLD differentiates w.r.t. x only
    # without noise, a small step raises LSE f(x) for every chain
    with torch.no_grad():
        assert (model(sgld_step(model, x, 1e-3, 0.0)).logsumexp(1) > model(x).logsumexp(1)).all()


def test_buffer_starts_uniform_over_the_data_range_and_reinitializes_a_fraction_rho():
    x = torch.cat([torch.full((1, 3, 2, 2), -2.0), torch.full((1, 3, 2, 2), 3.0)])
    jem = jem_on(x, buffer_size=500, reinit=0.2)
    assert jem.buffer.shape == (500, 3, 2, 2) and jem.buffer.min() >= -2 and jem.buffer.max() <= 3
    assert jem.buffer.mean().item() == pytest.approx(0.5, abs=0.05)
    jem.buffer.fill_(100.0)  # any fresh chain is now recognizable
    torch.manual_seed(0)
    chains, idx = jem.initial_chains(20000)
    fresh = (chains != 100.0).all(dim=(1, 2, 3))
    assert fresh.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert ((chains == 100.0).all(dim=(1, 2, 3)) | fresh).all()
    assert idx.min() >= 0 and idx.max() < 500


def test_sampling_writes_back_only_the_drawn_rows_and_restores_the_mode():
    model, x = tiny_model(), torch.randn(16, 3, 2, 2)
    jem = jem_on(x, buffer_size=50, steps=3)
    before = jem.buffer.clone()
    torch.manual_seed(3)
    _, idx = jem.initial_chains(8)
    torch.manual_seed(3)
    modes = []
    model.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    samples = jem.sample(model.train(), 8)
    assert modes == [False] * 3 and model.training  # SGLD in eval mode, training mode back afterwards
    drawn = idx.tolist()
    for k, i in enumerate(drawn):
        if drawn.count(i) == 1:  # a repeated index keeps one of its chains
            assert torch.equal(jem.buffer[i], samples[k])
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(jem.buffer[untouched], before[untouched])
    assert not samples.requires_grad


class Quadratic(nn.Module):
    """One logit, -a |x|^2 / 2 of x = (z - c) / k: LSE f = -a |x|^2 / 2, so grad_x LSE f = -a x."""

    def __init__(self, a, k, c):
        super().__init__()
        self.a, self.k, self.c = a, k, c

    def forward(self, z):
        x = (z - self.c) / self.k
        return -self.a / 2 * x.flatten(1).pow(2).sum(1, keepdim=True)


def test_sgld_on_standardized_data_is_the_papers_chain_in_minus_one_one_mapped_by_k():
    """Data z = k x + c with x in [-1, 1]: the plugin's chain in z is k * (the paper's chain in x) + c."""
    k, c, a = 2.5, 0.3, 0.2
    x = torch.rand(64, 2, 2, 2) * 2 - 1
    x[0], x[1] = -1.0, 1.0  # the range [-1, 1] exactly
    jem = jem_on(k * x + c, steps=4)  # the paper's step size 1 and noise 0.01
    model = Quadratic(a, k, c)
    torch.manual_seed(5)
    start, _ = jem.initial_chains(8)
    chain = (start - c) / k  # the paper's U(-1, 1) or buffer start
    for _ in range(4):  # x <- x + 1 * grad_x LSE f(x) + 0.01 * N(0, I), with the plugin's random draws
        chain = chain + 1.0 * (-a * chain) + 0.01 * torch.randn_like(chain)
    torch.manual_seed(5)
    torch.testing.assert_close(jem.sample(model, 8), k * chain + c)


class Reseed(TrainingMethod):
    """Seeds the training loop, so runs with and without JEM's buffer draws see the same batches."""

    def setup(self, model, optimizer):
        torch.manual_seed(1)


def test_weight_x_zero_trains_as_plain_cross_entropy_only_without_data_noise(digits):
    """Two epochs, so that a sampler run (its random draws) would change the second epoch's batches."""

    def trained(*methods):
        torch.manual_seed(0)
        model = build_model(config(model="small_cnn", norm="groupnorm", depth=2, width=8))
        fit(model, digits, TRAIN, 2, methods=[*methods, Reseed()])
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = trained()
    assert torch.equal(trained(JEM(weight_x=0.0, data_noise=0.0)), plain)
    assert not torch.allclose(trained(JEM(weight_x=0.0)), plain)  # the labelled batch still gets the 0.03 noise


def seeded(x, **kwargs):
    torch.manual_seed(1)
    return jem_on(x, **kwargs)


def test_loss_is_cross_entropy_plus_the_energy_difference():
    model, x, y = tiny_model(), torch.randn(6, 3, 2, 2), torch.randint(0, 3, (6,))
    loss = seeded(x, steps=2, weight_x=0.7).loss(model, x, y)
    samples = seeded(x, steps=2).sample(model, 6)
    expected = F.cross_entropy(model(x), y) + 0.7 * (model(samples).logsumexp(1).mean() - model(x).logsumexp(1).mean())
    torch.testing.assert_close(loss, expected)
    # the samples are constants of the loss: the parameter gradients are those of the formula with them fixed
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)
    # a constant added to every logit leaves the loss (and the samples) unchanged
    with torch.no_grad():
        model[3].bias.add_(5.0)
    torch.testing.assert_close(seeded(x, steps=2, weight_x=0.7).loss(model, x, y), loss, rtol=1e-5, atol=1e-5)
    # weight_x = 0: plain cross-entropy and no sampling
    zero = jem_on(x, weight_x=0.0)
    buffer = zero.buffer.clone()
    torch.testing.assert_close(zero.loss(model, x, y), F.cross_entropy(model(x), y))
    assert torch.equal(zero.buffer, buffer)


def test_generative_gradient_does_not_flow_into_the_samples():
    model, x, y = tiny_model(), torch.randn(6, 3, 2, 2), torch.randint(0, 3, (6,))
    jem = jem_on(x, steps=2)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    jem.loss(model, x, y).backward()
    sample_input = seen[-1]  # the last forward pass is the energy of the samples
    assert not sample_input.requires_grad and sample_input.grad_fn is None
    assert all(p.grad is not None for p in model.parameters())


def test_batch_dependent_normalization_is_refused():
    model = build_model(config(model="small_cnn", norm="batchnorm", depth=1, width=4))
    with pytest.raises(TrialFailed, match="batch-dependent"):
        JEM().setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    registry = registry_with_test_components()
    assert "normalization:batchnorm" in registry.get("training", "jem").excludes


def test_search_with_jem_reports_ece():
    registry = registry_with_test_components()
    spec = load_spec(
        {
            "name": "jem",
            "model": {"backbone": "small_cnn", "depth": 1, "width": 4},
            "space": {
                "normalization": {"groupnorm": {"groups": 2}},
                "training": {"jem": {"steps": 2, "buffer_size": 100}},
            },
            "train": {"epochs": 1},
            "search": {"trials": 1, "pruner": "none", "objective": ["val_accuracy", "val_ece"]},
        },
        registry,
    )
    (trial,) = autonorm.search(spec, registry=registry).trials
    assert trial.state == "complete" and trial.config.components["training"].name == "jem"
    assert 0 <= trial.metrics["val_ece"] <= 1
