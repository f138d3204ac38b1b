"""The downsampling slot: strided conv by default, pooling or all-conv alternatives of the same output size."""

import pytest
import torch
from autonorm_plugins.logavgexp import LocalLogAvgExp
from torch import nn

from autonorm import TrialConfig, build_model, get_registry


def config(shape, down=None, act="relu"):
    components = {
        "normalization": {"name": "batchnorm"},
        "activation": {"name": act},
        "pooling": {"name": "avg"},
        "head": {"name": "linear"},
    }
    if down is not None:
        components["downsampling"] = {"name": down}
    return TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=shape,
        num_classes=10,
        model={"name": "small_cnn", "params": {"depth": 3, "width": 12}},
        components=components,
        epochs=1,
        train={},
    )


def test_default_is_the_strided_conv_backbone():
    torch.manual_seed(0)
    default = build_model(config((1, 8, 8)))
    torch.manual_seed(0)
    strided = build_model(config((1, 8, 8), "strided_conv"))
    assert default.features[2].stride == (2, 2)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(default.eval()(x), strided.eval()(x))


@pytest.mark.parametrize("shape", [(1, 7, 7), (3, 13)])
@pytest.mark.parametrize("down", ["strided_conv", "all_conv", "max", "avg", "logavgexp"])
def test_every_downsampling_gives_the_strided_conv_sizes(shape, down):
    reference = build_model(config(shape, "strided_conv")).features
    net = build_model(config(shape, down, act="ail_or_and_xnor_dup"))
    x = torch.randn(2, *shape)
    assert net.features(x).shape == reference(x).shape
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_pooled_downsampling_is_a_conv_then_the_pool():
    net = build_model(config((1, 8, 8), "logavgexp"))
    conv, pool = net.features[2]
    assert conv.stride == (1, 1) and isinstance(pool, LocalLogAvgExp)
    assert isinstance(build_model(config((1, 8, 8), "max")).features[2][1], nn.MaxPool2d)
    all_conv = build_model(config((1, 8, 8), "all_conv")).features[2]
    assert [m.stride for m in all_conv if isinstance(m, nn.Conv2d)] == [(1, 1), (2, 2)]


def test_downsampling_is_a_searched_kind_with_a_default():
    from autonorm.spec import SEARCHED_KINDS

    assert SEARCHED_KINDS["downsampling"] == "strided_conv"
    assert {"strided_conv", "all_conv", "max", "avg", "logavgexp"} <= set(get_registry().names("downsampling"))
