"""Pure-noise images and the routing of batch statistics: noise never reaches the natural rows' statistics."""

import copy

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.baseline_norms import batchnorm
from autonorm_plugins.noise_images import PureNoiseImages
from torch import nn

import autonorm
from autonorm import Component, Registry, build_model
from autonorm.routing import route_batch_statistics
from tests.test_build import config


class BatchCentering(nn.Module):
    """A batch-dependent normalization that is no BatchNorm: subtracts the batch mean, keeps a running one."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))

    def forward(self, x):
        shape = (1, -1, *[1] * (x.dim() - 2))
        if self.training:
            mean = x.mean((0, *range(2, x.dim())))
            with torch.no_grad():
                self.running_mean.lerp_(mean, 0.1)
        else:
            mean = self.running_mean
        return (x - mean.view(shape)) * self.scale.view(shape)


class CenteringPlugin:
    @autonorm.hookimpl
    def autonorm_components(self):
        return [Component(kind="normalization", name="centering", factory=BatchCentering, batch_dependent=True)]


@pytest.fixture(scope="module")
def registry():
    registry = Registry()
    registry.load_entry_points()
    registry.register(CenteringPlugin(), "centering")
    return registry


def counts_data(counts, shape=(1, 8, 8)):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return torch.randn(len(y), *shape) * 2 + 1, y


def noise_method(x, y, **params):
    method = PureNoiseImages(start=0, **params)
    method.setup_data(x, y, epochs=1)
    return method


def running_stats(model):
    return {k: v for k, v in model.state_dict().items() if "running" in k}


@pytest.mark.parametrize("norm", ["batchnorm", "centering"])
@pytest.mark.parametrize("noise_grad", ["no_grad", "detach"])
def test_running_statistics_after_training_equal_natural_rows_alone(registry, norm, noise_grad):
    torch.manual_seed(0)
    model = build_model(config(norm=norm, depth=8, width=8), registry=registry)
    x, y = counts_data([40, 20, 10, 5])
    method = noise_method(x, y, delta=0.9, noise_grad=noise_grad)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method.setup(model, optimizer)
    plain = copy.deepcopy(model)
    assert not running_stats(model) == {}
    seen_noise = 0
    for _ in range(4):
        xb, yb = method.transform_batch(x[:32], y[:32])
        mask = method.router.mask
        seen_noise += int(mask.sum())
        plain.load_state_dict(model.state_dict())
        plain.train()(xb[~mask])  # plain modules fed only the natural rows
        model.train()
        loss = F.cross_entropy(model(xb), yb)
        for key, value in running_stats(plain).items():
            torch.testing.assert_close(running_stats(model)[key], value, rtol=0, atol=1e-6, msg=key)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(model)
    assert seen_noise > 8 and method.router.mask is None


def test_an_all_false_mask_is_bit_identical_to_plain_batchnorm():
    torch.manual_seed(0)
    model = build_model(config(model="small_cnn", depth=2, width=8))
    plain = copy.deepcopy(model)
    route_batch_statistics(model).mask = torch.zeros(16, dtype=torch.bool)
    x = torch.randn(16, 1, 8, 8)
    out, ref = model(x), plain(x)
    assert torch.equal(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), plain.buffers(), strict=True))
    assert model.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("shape", [(64, 3, 5, 5), (64, 3, 9)])
def test_noise_rows_are_normalized_by_their_own_statistics_with_the_same_affine(shape):
    torch.manual_seed(0)
    bn = batchnorm(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, -0.5, 1.5]))
        bn.bias.copy_(torch.tensor([1.0, -3.0, 0.25]))
    holder = nn.Sequential(bn)
    mask = torch.arange(shape[0]) % 3 == 0
    route_batch_statistics(holder).mask = mask
    x = torch.randn(shape) * 5 + 7
    out = holder(x)[mask].transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(out.mean(1), bn.bias.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(1, unbiased=False), bn.weight.detach().abs(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("noise_grad", ["no_grad", "detach"])
def test_normalization_parameters_are_trained_by_natural_rows_only(noise_grad):
    torch.manual_seed(1)
    model = build_model(config(model="small_cnn", depth=2, width=8))
    natural_only = copy.deepcopy(model)
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 10, (24,))
    mask = torch.rand(24) < 0.4
    route_batch_statistics(model, noise_grad).mask = mask
    logits = model(x)
    F.cross_entropy(logits, y, reduction="sum").backward()
    ref = natural_only(x[~mask])
    F.cross_entropy(ref, y[~mask], reduction="sum").backward()
    torch.testing.assert_close(logits[~mask], ref, rtol=0, atol=1e-6)
    affine = [(n, p) for n, p in model.named_parameters() if p.dim() == 1 and "features" in n]
    assert len(affine) == 4  # weight and bias of both BatchNorms
    others = dict(natural_only.named_parameters())
    for name, p in affine:
        torch.testing.assert_close(p.grad, others[name].grad, rtol=1e-5, atol=1e-6, msg=name)
    conv = "features.0.weight"
    differs = not torch.allclose(dict(model.named_parameters())[conv].grad, others[conv].grad, rtol=1e-4, atol=1e-6)
    assert differs == (noise_grad == "detach")  # only 'detach' lets noise gradients reach the first conv


def test_eval_outputs_do_not_depend_on_the_mask():
    torch.manual_seed(0)
    model = build_model(config(depth=8, width=8)).eval()
    router = route_batch_statistics(model)
    x = torch.randn(8, 1, 8, 8)
    ref = model(x)
    router.mask = torch.tensor([True, False] * 4)
    assert torch.equal(model(x), ref)


def test_noise_keeps_labels_and_replaces_each_class_at_the_papers_rate():
    torch.manual_seed(0)
    counts = torch.tensor([400, 200, 100, 40])
    x, y = counts_data(counts.tolist(), shape=(2, 3))
    method = noise_method(x, y, delta=0.5)
    yb = y[torch.randint(len(y), (20000,))]
    xb, mask = method.add_noise(x[:1].expand(len(yb), 2, 3), yb)
    rate = torch.stack([mask[yb == c].float().mean() for c in range(4)])
    expected = 0.5 * (1 - counts / counts.max())
    torch.testing.assert_close(rate, expected, atol=0.02, rtol=0)
    assert rate[0] == 0  # the largest class never gets noise
    noise = xb[mask]
    assert not torch.equal(noise[0], x[0])
    torch.testing.assert_close(noise.mean((0, 2)), x.mean((0, 2)), atol=0.05, rtol=0)  # dataset statistics
    torch.testing.assert_close(noise.std((0, 2)), x.std((0, 2)), atol=0.05, rtol=0)


def test_batches_are_class_balanced_in_the_noise_phase_only():
    torch.manual_seed(0)
    x, y = counts_data([300, 30, 3], shape=(1, 4))
    method = PureNoiseImages(start=0.5)
    method.setup_data(x, y, epochs=4)
    method.setup(nn.Sequential(nn.BatchNorm1d(1)), None)
    xb, yb = method.transform_batch(x[:64], y[:64])
    assert torch.equal(yb, y[:64]) and method.router.mask is None  # first half of training: plain
    method.end_epoch(None, 1)
    _, yb = method.transform_batch(x[:64], y[:64])
    assert method.router.mask is not None and len(yb) == 64
    _, yb = method.balanced_batch(6000)
    torch.testing.assert_close(torch.bincount(yb).float() / 6000, torch.full((3,), 1 / 3), atol=0.02, rtol=0)


@pytest.mark.parametrize("norm", autonorm.get_registry().names("normalization"))
def test_every_normalization_keeps_noise_out_of_the_natural_rows(norm):
    """Whatever the normalization: natural rows' outputs and every buffer are those of the natural rows alone."""
    torch.manual_seed(0)
    model = build_model(config(norm=norm, act="relu", depth=8, width=8)).train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # so both runs are deterministic (the IC layer has dropout)
    plain = copy.deepcopy(model)
    x = torch.randn(24, 1, 8, 8)
    mask = torch.arange(24) % 4 == 1
    x[mask] = 5 * torch.randn(6, 1, 8, 8) + 3
    route_batch_statistics(model).mask = mask
    torch.manual_seed(1)  # the same random draws in both runs (Batch Kalman Norm samples its prior)
    out = model(x)
    torch.manual_seed(1)
    ref = plain(x[~mask])
    torch.testing.assert_close(out[~mask], ref, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    out.sum().backward()


@pytest.mark.parametrize(
    ("start", "epochs", "noise_epochs"),
    [
        (0.95, 1, [0]),
        (0.95, 2, [1]),
        (0.95, 10, [9]),
        (0.8, 10, [8, 9]),
        (0.8, 200, list(range(160, 200))),
        (0.5, 5, [3, 4]),
        (0.0, 3, [0, 1, 2]),
    ],
)
def test_noise_starts_at_start_times_epochs_rounded_half_up_and_runs_at_least_the_last_epoch(
    start, epochs, noise_epochs
):
    """round(0.95 * 10) = 10 in Python left no OPeN epoch; 0.8 of 200 epochs is the reimplementation's last 40."""
    x, y = counts_data([20, 4], shape=(1, 2))
    method = PureNoiseImages(start=start)
    method.setup_data(x, y, epochs)
    method.setup(nn.Sequential(nn.BatchNorm1d(1)), None)
    seen = []
    for epoch in range(epochs):
        method.transform_batch(x[:8], y[:8])
        if method.router.mask is not None:
            seen.append(epoch)
        method.after_step(None)
        method.end_epoch(None, epoch)
    assert seen == noise_epochs
