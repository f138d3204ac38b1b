"""Models from configurations, and the defining properties of the baseline normalizations."""

import pytest
import torch
from torch import nn

import autonorm.results
from autonorm import SpecError, TrialConfig, build_model, get_registry


def config(model="resnet", norm="batchnorm", act="relu", pool="avg", shape=(1, 8, 8), **model_params):
    return TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=shape,
        num_classes=10,
        model={"name": model, "params": model_params},
        components={
            "normalization": {"name": norm},
            "activation": {"name": act},
            "pooling": {"name": pool},
            "head": {"name": "linear"},
            "initializer": {"name": "kaiming"},
        },
        epochs=1,
        train={},
    )


@pytest.mark.parametrize("model", ["resnet", "small_cnn"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32)])
@pytest.mark.parametrize("norm", ["batchnorm", "groupnorm", "layernorm", "instancenorm", "none"])
def test_models_build_for_1d_and_2d(model, shape, norm):
    net = build_model(config(model, norm, shape=shape))
    out = net(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_resnet_depth_sets_the_number_of_blocks():
    assert len(build_model(config(depth=14)).blocks) == 6
    with pytest.raises(SpecError, match=r"model.params.depth: expected one of \[8, 14, "):
        build_model(config(depth=9))  # a hand-edited configuration is checked against the declaration
    with pytest.raises(ValueError, match="6n\\+2"):
        get_registry().get("model", "resnet").factory((1, 8, 8), 10, None, depth=9)


def test_resnet_stages_double_the_width_and_halve_the_size_at_their_first_block():
    net = build_model(config(depth=14, width=4, shape=(1, 8, 8))).eval()
    x = net.stem(torch.randn(2, 1, 8, 8))
    shapes = []
    for block in net.blocks:
        x = block(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(4, 8, 8), (4, 8, 8), (8, 4, 4), (8, 4, 4), (16, 2, 2), (16, 2, 2)]


def test_resnet_block_applies_the_activation_after_adding_the_shortcut():
    net = build_model(config(depth=8, width=4, shape=(1, 8, 8))).eval()
    x = torch.randn(2, 4, 8, 8)
    for block in net.blocks[:2]:  # an identity shortcut, then a projection
        out = block(x)
        torch.testing.assert_close(out, torch.relu(block.branch(x) + block.shortcut(x)))
        assert out.min() == 0
        x = out


def test_config_roundtrip_through_yaml(tmp_path):
    cfg = config(norm="groupnorm")
    path = tmp_path / "best.yaml"
    path.write_text(cfg.to_yaml())
    torch.manual_seed(0)
    a = build_model(path)
    torch.manual_seed(0)
    b = build_model(cfg)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(a.eval()(x), b.eval()(x))


def norm(name, channels=8, **params):
    return get_registry().get("normalization", name).bind(params)(channels)


@pytest.mark.parametrize("shape", [(16, 8, 5), (16, 8, 5, 3)])
def test_batchnorm_matches_torch_and_normalizes_per_channel_over_batch_and_space(shape):
    x = torch.randn(*shape) * 3 + 2
    ours = norm("batchnorm")
    ref = (nn.BatchNorm1d if len(shape) == 3 else nn.BatchNorm2d)(8)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    dims = [0, *range(2, len(shape))]
    y = ours(x)
    torch.testing.assert_close(y.mean(dims), torch.zeros(8), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name, reduce",
    [("layernorm", (1, 2, 3)), ("instancenorm", (2, 3)), ("groupnorm", None)],
)
def test_batch_independent_norms_statistics_and_independence(name, reduce):
    layer = norm(name, groups=4) if name == "groupnorm" else norm(name)
    x = torch.randn(6, 8, 5, 5) * 4 + 1
    y = layer(x)
    if reduce is None:  # groups of 2 consecutive channels
        reduce, y = (2, 3, 4), y.view(6, 4, 2, 5, 5)
    torch.testing.assert_close(y.mean(reduce), torch.zeros(y.mean(reduce).shape), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(reduce, unbiased=False), torch.ones(y.var(reduce).shape), atol=1e-3, rtol=0)
    # a sample's output does not depend on the rest of the batch, in training mode
    torch.testing.assert_close(layer(x[:1]), layer(x)[:1])


def test_groupnorm_needs_divisible_channels():
    with pytest.raises(ValueError, match="6 channels cannot be split into 4 groups"):
        norm("groupnorm", channels=6, groups=4)


def test_kaiming_gives_he_variance():
    """Convolutions by their fan_out (torchvision's ResNets); the linear classifier by its fan_in, so that
    its logits do not scale with the width over the number of classes."""
    net = build_model(config(model="small_cnn", width=64))
    conv = net.features[2]
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    assert conv.weight.var().item() == pytest.approx(2 / fan_out, rel=0.1)
    (head,) = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert head.weight.var().item() == pytest.approx(2 / head.in_features, rel=0.2)


def test_build_model_of_a_trial_instead_of_its_config_says_what_it_takes():
    trial = autonorm.results.TrialRecord(number=0, state="complete", value=1.0, config=config())
    with pytest.raises(TypeError, match=r"a YAML file's path \(a trial's is its .config\), got TrialRecord"):
        build_model(trial)


def test_a_training_factory_that_returns_no_training_method_is_named():
    """A plugin's mistake fails its trial with a reason naming it, not an AttributeError in the trainer."""
    import autonorm
    from autonorm import Component, Registry
    from autonorm.build import build_training_methods

    class Forgetful:
        @autonorm.hookimpl
        def autonorm_components(self):
            return [Component(kind="training", name="forgetful", factory=lambda: None)]

    registry = Registry()
    registry.register(Forgetful(), "forgetful_plugin")
    chosen = config().model_copy(update={"components": {"training": autonorm.config.ComponentChoice(name="forgetful")}})
    with pytest.raises(TypeError, match="training forgetful .plugin 'forgetful_plugin'.: its factory returned None"):
        build_training_methods(chosen, registry)
