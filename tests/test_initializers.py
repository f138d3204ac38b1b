"""The initializers' defining properties: BN scale init and its learning rate (Davis & Frank), GradInit's
lower loss after one step, AutoInit's unit-variance signal, the variance-preserving residual sum."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.autoinit import autoinit, mapped_moments
from autonorm_plugins.baseline_pooling import GlobalAvgPool
from autonorm_plugins.bn_gamma import ScaleLearningRate
from autonorm_plugins.gradinit import gradinit
from autonorm_plugins.kaiming import kaiming
from autonorm_plugins.nf_residual import Scaled
from autonorm_plugins.resnet import BasicBlock
from torch import nn

from autonorm import TrialConfig, build_model
from autonorm.trainer import make_optimizer, make_schedule

INITIALIZERS = ["bn_gamma", "gradinit", "autoinit", "nf_residual"]


def config(init, params=None, model="resnet", norm="none", shape=(1, 8, 8), **model_params):
    return TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=shape,
        num_classes=10,
        model={"name": model, "params": model_params},
        components={
            "normalization": {"name": norm},
            "activation": {"name": "relu"},
            "pooling": {"name": "avg"},
            "head": {"name": "linear"},
            "initializer": {"name": init, "params": params or {}},
        },
        epochs=1,
        train={},
    )


@pytest.fixture(scope="module")
def digits():
    """A standardized batch of digits with labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images[:48, None], dtype=torch.float32)
    x = (x - x.mean()) / x.std()
    return x, torch.tensor(bunch.target[:48])


def build(init, sample=None, labels=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model(config(init, **kwargs), sample, sample_labels=labels)


def module_outputs(model, x, kind, statistic):
    """``statistic(out)`` of every module of type ``kind``, in forward order."""
    found = []
    hooks = [m.register_forward_hook(lambda m, i, o: found.append(statistic(o).item())) for m in model.modules()
             if isinstance(m, kind)]  # fmt: skip
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return found


def second_moments(model, x, kind):
    """E[out^2] of every module of type ``kind``, in forward order."""
    return module_outputs(model, x, kind, lambda out: out.pow(2).mean())


# ---------------------------------------------------------------- every initializer, without data


@pytest.mark.parametrize("init", INITIALIZERS)
@pytest.mark.parametrize("model, shape", [("resnet", (1, 8, 8)), ("small_cnn", (3, 16))])
def test_initializers_work_without_a_sample_batch(init, model, shape):
    net = build_model(config(init, model=model, norm="batchnorm", shape=shape, width=4))
    out = net(torch.randn(4, *shape))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


# ---------------------------------------------------------------- bn_gamma


def test_bn_gamma_sets_every_batchnorm_scale_and_zeroes_shifts():
    net = build("bn_gamma", norm="batchnorm", params={"gamma": 0.3}, depth=8, width=4)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) > 5
    for bn in bns:
        assert torch.equal(bn.weight, torch.full_like(bn.weight, 0.3))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    conv = net.blocks[0].conv1  # He fan_in: std sqrt(2 / fan_in)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / conv.weight[0].numel()), rel=0.15)


def test_bn_gamma_scales_train_at_lr_over_c_without_weight_decay_and_follow_the_schedule():
    net = build("bn_gamma", norm="batchnorm", depth=8, width=4)
    train = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 1e-3, "weight_decay_on": "weights"}
    opt = make_optimizer(net, train)
    params = {id(p): p for p in net.parameters()}
    ScaleLearningRate(lr_divisor=100.0).setup(net, opt)
    scales = {id(m.weight) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert len(groups) == len(list(net.parameters()))
    for pid, group in groups.items():
        expected = (0.001, 0.0) if pid in scales else (0.1, 1e-3 if params[pid].ndim >= 2 else 0.0)
        assert (group["lr"], group["weight_decay"]) == pytest.approx(expected)
    gamma = net.blocks[0].norm_act1[0].weight
    before = gamma.detach().clone()
    F.cross_entropy(net(torch.randn(8, 1, 8, 8)), torch.arange(8)).backward()
    opt.step()
    torch.testing.assert_close(gamma.detach(), before - 0.001 * gamma.grad)
    schedule = make_schedule(opt, "cosine", 10)
    for _ in range(5):
        opt.step()
        schedule.step()
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs[0] == pytest.approx(lrs[1] / 100) and lrs[1] < 0.1


def peaks(model, x, kind):
    """max |out| of every module of type ``kind``, in forward order."""
    return module_outputs(model, x, kind, lambda out: out.abs().max())


def test_bn_gamma_shrinks_the_overly_large_values_batchnorm_passes_on_in_a_deep_resnet(digits):
    """Davis & Frank: with scale 1, BatchNorm still passes on overly large values (normalized values of several
    standard deviations); a scale gamma < 1 shrinks them. On ResNet-20 at init, with the same weights, every
    BatchNorm output, every block output and the logits are gamma times the standard ones (the net is positively
    homogeneous between BatchNorms), so the initial predictions are near uniform. It is a uniform rescaling: the
    residual stream still grows along each stage as with scale 1."""
    x, y = digits
    bn = nn.modules.batchnorm._BatchNorm
    standard = build("kaiming", params={"mode": "fan_in"}, norm="batchnorm", depth=20, width=16)
    small = build("bn_gamma", norm="batchnorm", depth=20, width=16)  # gamma = 0.1
    large, shrunk = peaks(standard, x, bn), peaks(small, x, bn)
    assert len(large) == 21 and min(large) > 3.5  # every BatchNorm passes on values beyond 3.5 std
    assert shrunk == pytest.approx([0.1 * v for v in large], rel=0.01) and max(shrunk) < 0.7
    stream, small_stream = second_moments(standard, x, BasicBlock), second_moments(small, x, BasicBlock)
    assert small_stream == pytest.approx([0.01 * v for v in stream], rel=0.02)
    assert stream[2] / stream[0] > 2 and small_stream[2] / small_stream[0] > 2  # 3 blocks per stage
    with torch.no_grad():
        logits, small_logits = standard(x), small(x)
    torch.testing.assert_close(small_logits, 0.1 * logits, rtol=0.01, atol=2e-3)  # logits: rms 0.2
    assert F.cross_entropy(logits, y).item() > math.log(10) + 1.0
    assert F.cross_entropy(small_logits, y).item() == pytest.approx(math.log(10), abs=0.05)


# ---------------------------------------------------------------- nf_residual


def test_nf_residual_block_sums_scaled_shortcut_and_branch():
    net = build("nf_residual", params={"branch_scale": 0.6}, depth=8, width=4)
    block = net.blocks[1]  # a downsampling block: projection shortcut
    assert block.norm2.scale.item() == pytest.approx(0.6) and block.shortcut.scale.item() == pytest.approx(0.8)
    x = torch.randn(3, 4, 8, 8)
    branch = block.norm2.module(block.conv2(block.norm_act1(block.conv1(x))))
    expected = torch.relu(0.8 * block.shortcut.module(x) + 0.6 * branch)
    torch.testing.assert_close(block(x), expected)


def test_nf_residual_keeps_the_signal_in_a_band_where_the_plain_sum_explodes():
    x = torch.randn(32, 1, 8, 8)
    nf = second_moments(build("nf_residual", depth=20, width=16), x, BasicBlock)
    plain = second_moments(build("kaiming", params={"mode": "fan_in"}, depth=20, width=16), x, BasicBlock)
    assert max(plain) / plain[0] > 20
    assert 0.05 < min(nf) and max(nf) < 2.0
    # at most the documented drift of about 0.75 per block, never growth
    assert all(0.5 < b / a < 1.3 for a, b in zip(nf, nf[1:], strict=False))


def test_nf_residual_learnable_scales_are_trained():
    net = build("nf_residual", params={"learnable": True}, depth=8, width=4)
    scales = [m.scale for m in net.modules() if isinstance(m, Scaled)]
    assert len(scales) == 6 and all(isinstance(s, nn.Parameter) for s in scales)
    net(torch.randn(4, 1, 8, 8)).pow(2).sum().backward()
    assert all(s.grad is not None and s.grad.abs() > 0 for s in scales)


# ---------------------------------------------------------------- gradinit


def one_step_loss(net, x, y, eta=0.1):
    """Loss on (x, y) after one normalized-gradient SGD step of length ``eta``, and the gradient norm."""
    net.train()
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(net.parameters(), grads, strict=True):
            p.sub_(eta * g / norm)
        return F.cross_entropy(net(x), y).item(), norm.item()


def test_gradinit_lowers_the_loss_after_one_step_and_the_gradient_norm(digits):
    x, y = digits
    base_loss, base_norm = one_step_loss(build("kaiming", depth=14, width=4), x, y)
    net = build("gradinit", x, y, params={"iters": 8}, depth=14, width=4)
    loss, norm = one_step_loss(net, x, y)
    assert loss < base_loss - 0.05
    assert norm < base_norm / 2


def test_gradinit_without_labels_is_its_he_base_and_keeps_batchnorm_statistics(digits):
    x, y = digits
    base = build("kaiming", norm="batchnorm", depth=8, width=4)
    unlabeled = build("gradinit", x, None, norm="batchnorm", depth=8, width=4)
    for a, b in zip(base.state_dict().values(), unlabeled.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    net = build("gradinit", x, y, norm="batchnorm", params={"iters": 3}, depth=8, width=4)
    for name, buf in net.named_buffers():
        torch.testing.assert_close(buf, base.state_dict()[name])
    assert any(not torch.equal(p, base.state_dict()[n]) for n, p in net.named_parameters())


# ---------------------------------------------------------------- autoinit


def test_mapped_moments_match_the_closed_form_for_relu_and_identity():
    mean, var = mapped_moments(torch.relu, 0.0, 1.0)
    assert mean == pytest.approx(1 / math.sqrt(2 * math.pi), abs=1e-4)
    assert var == pytest.approx(0.5 - 1 / (2 * math.pi), abs=1e-4)
    assert mapped_moments(lambda t: t, 0.3, 2.0) == pytest.approx((0.3, 2.0))


def test_autoinit_gives_every_weighted_layer_unit_second_moment_on_a_plain_stack():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(3, 256, 5, padding=2), nn.ELU(), nn.Conv1d(256, 256, 3, padding=1), nn.Sigmoid(),
        nn.Conv1d(256, 256, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256 * 64, 64),
    )  # fmt: skip
    x = torch.randn(64, 3, 64) * 2 + 1
    autoinit(net, x)
    moments = second_moments(net, x, (nn.Conv1d, nn.Linear))
    assert moments == pytest.approx([1.0] * 4, rel=0.3)  # finite width: 256 channels


def medians(rows):
    """Per position, the median over the rows."""
    return [statistics.median(column) for column in zip(*rows, strict=True)]


RELU_MEAN, RELU_VAR = 1 / math.sqrt(2 * math.pi), 0.5 - 1 / (2 * math.pi)  # ReLU(X), X ~ N(0, 1)


def test_autoinit_dropout_divides_the_variance_by_the_keep_probability():
    """Dropout ``p``: ``(mean, var / (1 - p))``, so the layer after it gets ``Var(W) = (1 - p) / fan_in``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 256), nn.Dropout(0.25), nn.Linear(256, 512))
    autoinit(net)
    assert net[2].weight.var().item() == pytest.approx(0.75 / 256, rel=0.03)


@pytest.mark.parametrize(
    "pool, averaged, positions",
    [(nn.AvgPool2d(2), 4, 16), (GlobalAvgPool(), 64, 1), (nn.AdaptiveAvgPool2d(1), 64, 1),
     (nn.AdaptiveAvgPool2d(2), 16, 4)],
    ids=["avg_pool", "global", "adaptive_1", "adaptive_2"],
)  # fmt: skip
def test_autoinit_average_pooling_keeps_the_mean_and_divides_the_variance_by_the_values_averaged(
    pool, averaged, positions
):
    """Averaging ``k`` values taken as independent (the official estimator): ``(mean, var / k)``. After
    conv (``(0, 1)``) and ReLU the linear layer gets ``Var(W) = 1 / (fan_in * (var / k + mean^2))``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 64, 1), nn.ReLU(), pool, nn.Flatten(), nn.Linear(64 * positions, 1024))
    autoinit(net, torch.randn(4, 1, 8, 8))  # the sample supplies the 8x8 shapes
    second_moment = RELU_VAR / averaged + RELU_MEAN**2
    assert net[4].weight.var().item() == pytest.approx(1 / (64 * positions * second_moment), rel=0.03)


def test_autoinit_knows_a_pooling_window_from_its_type_without_a_sample_batch():
    """``AvgPool2d(2)`` averages 4 values whether or not a sample batch gives the shapes (it counted 2)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 64, 1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64 * 16, 1024))
    autoinit(net)
    second_moment = RELU_VAR / 4 + RELU_MEAN**2
    assert net[4].weight.var().item() == pytest.approx(1 / (64 * 16 * second_moment), rel=0.03)


def test_autoinit_sets_every_weighted_layer_output_to_the_signal_variance():
    """``signal_variance`` 2.5: ``Var(W) = 2.5 / fan_in`` on the unit-variance input, then ReLU halves the
    second moment to 1.25, so ``Var(W) = 2.5 / (fan_in * 1.25)``; the output variance is 2.5."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 256))
    autoinit(net, signal_variance=2.5)
    assert net[0].weight.var().item() == pytest.approx(2.5 / 64, rel=0.03)
    assert net[2].weight.var().item() == pytest.approx(2.5 / (1024 * 1.25), rel=0.03)
    with torch.no_grad():
        assert net(torch.randn(4096, 64)).var().item() == pytest.approx(2.5, rel=0.1)


@pytest.mark.parametrize(
    "norm, layers, head", [("none", (0.3, 4.0), (0.3, 3.0)), ("batchnorm", (0.7, 1.6), (0.4, 1.6))]
)
def test_autoinit_keeps_a_deep_resnet_near_unit_variance_over_seeds(digits, norm, layers, head):
    """ResNet-20, width 8: per seed, the finite width spreads the signal (head output variance from 0.26 to
    8.6 over these 9 seeds without normalization), so each conv's second moment and the head output variance
    are taken as medians over the seeds. He init lets the second moments drift several times more across
    layers."""
    x, _ = digits
    convs, outputs, he = [], [], []
    for seed in range(9):
        net = build("autoinit", x, seed=seed, norm=norm, depth=20, width=8)
        convs.append(second_moments(net, x, nn.Conv2d))
        with torch.no_grad():
            outputs.append(net(x).var().item())
        he.append(second_moments(build("kaiming", seed=seed, norm=norm, depth=20, width=8), x, nn.Conv2d))
    convs, he = medians(convs), medians(he)
    assert layers[0] < min(convs) and max(convs) < layers[1]
    assert head[0] < statistics.median(outputs) < head[1]
    assert max(he) / min(he) > 2 * max(convs) / min(convs)


def test_autoinit_passes_unknown_modules_through_with_a_warning_and_falls_back_when_untraceable():
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.warns(UserWarning, match="no estimator for module Doubler"):
        autoinit(nn.Sequential(nn.Linear(4, 4), Doubler(), nn.Linear(4, 4)))
    with pytest.warns(UserWarning, match="cannot be traced"):
        autoinit(Untraceable())


def two_layer_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))


def reference_gradinit(net, x, y, iters, gamma, optimizer="sgd", eta=0.1, lr=0.05, min_scale=0.01, clip=1.0):
    """GradInit on ``two_layer_net`` written out by hand (Zhu et al. 2021, Algorithm 1, and the official
    RescaleAdam): the scales of the two weight matrices, and how many steps of each kind were taken."""
    w1, b1, w2, b2 = (p.detach().clone() for p in (net[1].weight, net[1].bias, net[4].weight, net[4].bias))
    scales, second, counts = [1.0, 1.0], [0.0, 0.0], {True: 0, False: 0}
    first = {True: [0.0, 0.0], False: [0.0, 0.0]}  # by "is a constraint step"
    gen = torch.Generator().manual_seed(0)  # the split of the one sample batch, as the plugin draws it
    third = len(x) // 3
    for _ in range(iters):
        perm = torch.randperm(len(x), generator=gen)
        s0, s1 = perm[: 2 * third], torch.cat([perm[:third], perm[2 * third :]])
        a = torch.tensor(scales, requires_grad=True)
        params = [a[0] * w1, b1.clone().requires_grad_(), a[1] * w2, b2.clone().requires_grad_()]

        def loss(p, rows):
            hidden = torch.relu(x[rows].flatten(1) @ p[0].T + p[1])  # no dropout: it is off
            return F.cross_entropy(hidden @ p[2].T + p[3], y[rows])

        g = torch.autograd.grad(loss(params, s0), params, create_graph=True)
        if optimizer == "sgd":
            norm = torch.sqrt(sum((gi**2).sum() for gi in g))
            step = [(gi / norm).detach() for gi in g]
        else:
            norm = sum(gi.abs().sum() for gi in g)
            step = [gi.sign().detach() for gi in g]
        constraint = norm.item() > gamma
        objective = norm if constraint else loss([p - eta * s for p, s in zip(params, step, strict=True)], s1) / eta
        (grad,) = torch.autograd.grad(objective, a)
        counts[constraint] += 1
        total = counts[True] + counts[False]
        for i in range(2):
            gi = max(-clip, min(clip, grad[i].item()))
            first[constraint][i] = 0.9 * first[constraint][i] + 0.1 * gi
            second[i] = 0.999 * second[i] + 0.001 * gi * gi
            m = first[constraint][i] / (1 - 0.9 ** counts[constraint])
            v = second[i] / (1 - 0.999**total)
            scales[i] = max(min_scale, scales[i] - lr * m / (math.sqrt(v) + 1e-8))
    return scales, counts


def initial_gradient_norm(net, x, y, optimizer):
    """The gradient norm GradInit constrains: L2 for SGD, L1 for Adam."""
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    if optimizer == "sgd":
        return float(torch.sqrt(sum(g.square().sum() for g in grads)))
    return float(sum(g.abs().sum() for g in grads))


@pytest.mark.parametrize(
    "optimizer, share, clip",  # gamma as a share of the first gradient norm; at clip 1 every gradient is clipped
    [("sgd", math.inf, 100.0), ("sgd", 0.6, 100.0), ("sgd", 0.0, 100.0), ("adam", 0.6, 100.0), ("sgd", 0.6, 1.0)],
)
def test_gradinit_learns_the_scales_algorithm_1_gives(digits, optimizer, share, clip):
    """Scale by scale, as the algorithm written out by hand: the normalized (or sign) step treated as a
    constant, the loss after it on S1 over eta, the gradient-norm constraint, separate first moments for the
    two kinds of step, clipping and floors; and dropout off (with it on, the two would differ)."""
    x, y = digits
    torch.manual_seed(0)
    reference = two_layer_net()
    kaiming(reference)
    gamma = share * initial_gradient_norm(reference.eval(), x, y, optimizer)
    expected, counts = reference_gradinit(reference, x, y, iters=12, gamma=gamma, optimizer=optimizer, clip=clip)
    if 0 < share < math.inf:
        assert counts[True] and counts[False]  # both kinds of step are taken
    torch.manual_seed(0)
    net = two_layer_net()
    gradinit(net, x, y, optimizer=optimizer, gamma=gamma, iters=12, grad_clip=clip)
    with torch.no_grad():
        got = [float((net[i].weight * reference[i].weight).sum() / reference[i].weight.square().sum()) for i in (1, 4)]
    assert got == pytest.approx(expected, abs=1e-5)
    assert net.training and net[3].training  # modes restored
