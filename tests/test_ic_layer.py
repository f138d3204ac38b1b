"""IC layer: BN then Dropout, its statistics, and its placement before every weight layer."""

import pytest
import torch
from autonorm_plugins.ic_layer import ICLayer
from torch import nn

from autonorm import TrialConfig, build_model


def test_matches_batchnorm_then_dropout_with_the_same_random_masks():
    layer, ref = ICLayer(6, p=0.1), nn.Sequential(nn.BatchNorm2d(6), nn.Dropout(0.1))
    x = torch.randn(8, 6, 5, 5) * 2 + 1
    torch.manual_seed(0)
    out = layer(x)
    torch.manual_seed(0)
    torch.testing.assert_close(out, ref(x))
    torch.testing.assert_close(layer[0].running_var, ref[0].running_var)
    layer.eval(), ref.eval()
    torch.testing.assert_close(layer(x), ref(x))
    torch.testing.assert_close(layer(x[:1]), layer(x)[:1])  # eval: batch-independent, deterministic


def test_p_zero_is_batchnorm_and_dropout_keeps_the_expectation():
    x = torch.randn(16, 4, 10)
    bn = nn.BatchNorm1d(4)
    torch.testing.assert_close(ICLayer(4, p=0.0)(x), bn(x))
    layer = ICLayer(4, p=0.2)
    outs = torch.stack([layer(x) for _ in range(2000)])
    assert (outs == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    torch.testing.assert_close(outs.mean(0), bn(x), atol=0.1, rtol=0)


def test_dropout_after_bn_scales_the_correlation_of_two_units_by_1_minus_p():
    p, rho = 0.2, 0.8
    z = torch.randn(20000, 2)
    x = torch.stack([z[:, 0], rho * z[:, 0] + (1 - rho**2) ** 0.5 * z[:, 1]], dim=1)  # corr(x0, x1) = rho
    out = ICLayer(2, p=p)(x)
    corr = torch.corrcoef(out.T)[0, 1].item()
    assert corr == pytest.approx((1 - p) * rho, abs=0.02)
    assert out.var(0).mean().item() == pytest.approx(1 / (1 - p), rel=0.05)


@pytest.mark.parametrize("model", ["resnet", "small_cnn"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32)])
def test_every_weight_layer_after_the_stem_reads_an_ic_output_and_no_bn_feeds_a_relu(model, shape):
    config = TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=shape,
        num_classes=10,
        model={"name": model, "params": {}},
        components={
            "normalization": {"name": "ic_layer", "params": {"p": 0.1}},
            "activation": {"name": "elu"},
            "pooling": {"name": "avg"},
            "head": {"name": "linear"},
        },
        epochs=1,
        train={},
    )
    net = build_model(config).train()
    made_by: dict[int, type] = {}
    keep = []  # hold outputs so that their ids are not reused
    reads: list[tuple[nn.Module, type | None]] = []

    def record(module, inputs, output):
        keep.append(output)
        made_by[id(output)] = type(module)

    def check(module, inputs):
        reads.append((module, made_by.get(id(inputs[0]))))

    leaves = [m for m in net.modules() if not list(m.children())]
    for m in leaves:
        m.register_forward_hook(record)
        m.register_forward_pre_hook(check)
    net(torch.randn(4, *shape))
    kinds = {type(m) for m in leaves}
    assert nn.ELU not in kinds and nn.ReLU in kinds  # the searched activation is replaced
    assert all(m.p == 0.1 for m in net.modules() if isinstance(m, nn.Dropout))
    weight_reads = [(m, src) for m, src in reads if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert weight_reads[0][1] is None  # the stem reads the input
    assert all(src is nn.Dropout for _, src in weight_reads[1:])
    assert [src for m, src in reads if m is net.pool] == [nn.Dropout]  # then the linear head
    bn_reads = [src for m, src in reads if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    relu_reads = [src for m, src in reads if isinstance(m, nn.ReLU)]
    assert bn_reads and all(src is nn.ReLU for src in bn_reads)
    assert not any(issubclass(src, nn.modules.batchnorm._BatchNorm) for src in relu_reads if src)
