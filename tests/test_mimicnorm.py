"""MimicNorm: zero-mean conv filters (projected after every step) and one BN on the logits."""

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.mimicnorm import center_conv_weights, is_centred
from torch import nn

from autonorm import TrialConfig, build_model
from autonorm.build import build_training_methods
from autonorm.data import Data
from autonorm.trainer import fit
from tests.test_trainer import TRAIN


def config(shape=(3, 8, 8), norm="mimicnorm", depth=8):
    return TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=shape,
        num_classes=10,
        model={"name": "resnet", "params": {"depth": depth, "width": 8}},
        components={
            "normalization": {"name": norm},
            "activation": {"name": "relu"},
            "pooling": {"name": "avg"},
            "head": {"name": "linear"},
            "initializer": {"name": "kaiming"},
        },
        epochs=1,
        train={},
    )


def filter_means(conv):
    return conv.weight.mean(dim=tuple(range(1, conv.weight.dim())))


def test_eligibility_follows_the_official_code():
    assert is_centred(nn.Conv2d(8, 16, 3))  # fan-in 72
    assert not is_centred(nn.Conv2d(3, 16, 3))  # RGB stem, fan-in 27
    assert not is_centred(nn.Conv2d(50, 16, 1))  # fan-in exactly 50
    assert is_centred(nn.Conv1d(17, 4, 3))  # fan-in 51
    assert not is_centred(nn.Conv2d(64, 64, 3, groups=64))  # depthwise
    assert not is_centred(nn.Conv2d(64, 64, 3, groups=2))
    assert not is_centred(nn.Linear(100, 10))
    assert not is_centred(nn.ConvTranspose2d(64, 8, 3))


def test_projection_centres_eligible_filters_is_idempotent_and_leaves_the_rest():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv1d(32, 4, 3, groups=2), nn.Linear(20, 5))
    before = [p.detach().clone() for p in model.parameters()]
    center_conv_weights(model)
    assert filter_means(model[1]).abs().max() < 1e-6
    expected = before[2] - before[2].mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(model[1].weight, expected)
    for i in (0, 2, 3):  # stem, grouped conv, linear: untouched (weights are parameters 0, 4, 6)
        assert torch.equal(model[i].weight, before[2 * i])
    once = [p.detach().clone() for p in model.parameters()]
    center_conv_weights(model)
    for a, b in zip(once, model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_centred_filter_maps_a_constant_input_to_its_bias():
    conv = nn.Conv2d(16, 4, 3, padding=1)
    center_conv_weights(conv)
    out = conv(torch.full((1, 16, 6, 6), 3.7))
    interior = out[..., 1:-1, 1:-1]
    torch.testing.assert_close(interior, conv.bias.view(1, 4, 1, 1).expand_as(interior), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 32)])
def test_model_has_no_body_norm_and_a_last_bn_on_the_logits(shape):
    model = build_model(config(shape))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 1 and bns[0] is model.head[-1]
    assert bns[0].num_features == 10 and not bns[0].affine
    logits = model.train()(torch.randn(16, *shape) * 5 + 1)
    torch.testing.assert_close(logits.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.var(0, unbiased=False), torch.ones(10), atol=1e-3, rtol=0)


def test_body_is_batch_independent_and_eval_is_batch_independent():
    model = build_model(config())
    x = torch.randn(8, 3, 8, 8)
    body = nn.Sequential(model.stem, model.blocks, model.pool, model.head[0])
    torch.testing.assert_close(body(x)[:3], body(x[:3]))
    model(x)  # one training step's statistics
    model.eval()
    torch.testing.assert_close(model(x)[:3], model(x[:3]))
    bn = model.head[-1]
    ref = F.batch_norm(body(x), bn.running_mean, bn.running_var, training=False, eps=1e-5)
    torch.testing.assert_close(model(x), ref)


def test_training_method_projects_at_setup_and_after_each_step():
    model = build_model(config())
    (method,) = build_training_methods(config())
    convs = [m for m in model.modules() if is_centred(m)]
    assert len(convs) >= 4 and all(filter_means(c).abs().max() > 1e-4 for c in convs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method.setup(model, optimizer)
    assert all(filter_means(c).abs().max() < 1e-6 for c in convs)
    for _ in range(2):
        # a loss whose gradient is not centred: a plain step moves the filter means
        loss = F.cross_entropy(model(torch.randn(8, 3, 8, 8)), torch.randint(0, 10, (8,))) + sum(
            c.weight.sum() for c in convs
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert all(filter_means(c).abs().max() > 1e-4 for c in convs)
        method.after_step(model)
        assert all(filter_means(c).abs().max() < 1e-6 for c in convs)


def test_other_norms_keep_the_plain_head():
    assert isinstance(build_model(config(norm="batchnorm")).head, nn.Linear)


def test_trainer_keeps_the_filters_centred():
    cfg = config()
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 3, 8, 8, generator=gen), torch.randint(0, 10, (48,), generator=gen)
    data = Data(x[:32], y[:32], x[32:], y[32:], x[32:], y[32:], 10)
    train = {**TRAIN, "batch_size": 8}
    fit(model, data, {**train, "schedule": "constant", "device": "cpu"}, 1, methods=build_training_methods(cfg))
    convs = [m for m in model.modules() if is_centred(m)]
    assert convs and all(filter_means(c).abs().max() < 1e-6 for c in convs)
    assert model.head[-1].num_batches_tracked == 4


def test_one_branch_scalar_per_block_initialized_to_official_values():
    model = build_model(config(depth=14))  # 6 blocks over 3 stages: k runs over the whole network
    scales = [block.branch_scale.scale for block in model.blocks]
    assert len(scales) == 6 and all(s.shape == () and s.requires_grad for s in scales)
    assert [s.item() for s in scales] == pytest.approx([1.2**2 / k for k in range(1, 7)])
    names = [n for n, _ in model.named_parameters() if n.endswith("branch_scale.scale")]
    assert len(names) == 6


def test_branch_scalars_are_trained():
    model = build_model(config())
    loss = F.cross_entropy(model(torch.randn(8, 3, 8, 8)), torch.randint(0, 10, (8,)))
    loss.backward()
    assert all(b.branch_scale.scale.grad is not None and b.branch_scale.scale.grad != 0 for b in model.blocks)


def test_scalar_multiplies_the_branch_not_the_shortcut():
    model = build_model(config())
    for block in (model.blocks[0], model.blocks[1]):  # identity shortcut, projection shortcut
        with torch.no_grad():
            block.branch_scale.scale.fill_(0.37)
        x = torch.randn(4, block.conv1.in_channels, 8, 8)
        branch = block.norm2(block.conv2(block.norm_act1(block.conv1(x))))  # last conv plus its bias
        torch.testing.assert_close(block(x), torch.relu(branch * 0.37 + block.shortcut(x)))


def test_other_norms_get_no_branch_scalar():
    for norm in ("batchnorm", "groupnorm"):
        model = build_model(config(norm=norm))
        assert all(block.branch_scale is None for block in model.blocks)
        assert not any("branch_scale" in key for key in model.state_dict())
        assert not any("branch_scale" in name for name, _ in model.named_modules())
