"""AND_AIL, OR_AIL, XNOR_AIL against the exact logit-space operators, and their channel bookkeeping."""

import math

import pytest
import torch
from autonorm_plugins.logical_activations import VARIANTS, LogitLogic, and_ail, or_ail, xnor_ail
from torch.nn.functional import logsigmoid

from autonorm import TrialConfig, build_model, get_registry


def _logit_of_log(log_p):
    """logit(p) from log(p), accurate near p = 0 and p = 1."""
    return log_p - torch.log(-torch.expm1(log_p))


def exact_and(x, y):  # logit(σ(x) σ(y))
    return _logit_of_log(logsigmoid(x) + logsigmoid(y))


def exact_or(x, y):  # logit(1 - (1 - σ(x))(1 - σ(y))) = -logit((1 - σ(x))(1 - σ(y)))
    return -_logit_of_log(logsigmoid(-x) + logsigmoid(-y))


def exact_xnor(x, y):  # logit(σ(x) σ(y) + (1 - σ(x))(1 - σ(y)))
    both = torch.logaddexp(logsigmoid(x) + logsigmoid(y), logsigmoid(-x) + logsigmoid(-y))
    return _logit_of_log(both)


GRID = torch.linspace(-25, 25, 501, dtype=torch.float64)
X, Y = torch.meshgrid(GRID, GRID, indexing="ij")
CASES = [(and_ail, exact_and, math.log(3)), (or_ail, exact_or, math.log(3)), (xnor_ail, exact_xnor, math.log(2))]


@pytest.mark.parametrize("approx, exact, bound", CASES, ids=["and", "or", "xnor"])
def test_error_against_the_exact_operator_is_bounded_and_the_bound_is_reached(approx, exact, bound):
    err = (approx(X, Y) - exact(X, Y)).abs()
    assert torch.isfinite(err).all()
    assert err.max().item() <= bound + 1e-9
    assert err.max().item() >= bound - 1e-3  # AND/OR: at the origin; XNOR: far out on the diagonal


@pytest.mark.parametrize(
    "approx, exact, points",
    [
        # AND: both logits very negative (probabilities multiply), or one certainly true (AND = the other)
        (and_ail, exact_and, [(-30, -30), (-40, -35), (40, -3), (40, 0.5), (40, 3)]),
        # OR: the mirror image
        (or_ail, exact_or, [(30, 30), (40, 35), (-40, 3), (-40, -0.5), (-40, -3)]),
        # XNOR: one argument certain; the result is the other one, with its sign flipped when false
        (xnor_ail, exact_xnor, [(40, 3), (40, -2), (-40, 3), (-40, -2), (2, 45)]),
    ],
    ids=["and", "or", "xnor"],
)
def test_exact_in_the_asymptotes(approx, exact, points):
    x, y = torch.tensor(points, dtype=torch.float64).T
    torch.testing.assert_close(approx(x, y), exact(x, y), atol=1e-9, rtol=0)


def test_symmetry_and_de_morgan():
    for op in (and_ail, or_ail, xnor_ail):
        assert torch.equal(op(X, Y), op(Y, X))
    assert torch.equal(or_ail(X, Y), -and_ail(-X, -Y))
    assert torch.equal(xnor_ail(X, Y), xnor_ail(-X, -Y))


@pytest.mark.parametrize("shape", [(3, 12, 5), (3, 12, 4, 5)])
def test_pairs_consecutive_channels_and_ensembles_concatenate(shape):
    z = torch.randn(shape)
    x, y = z[:, 0::2], z[:, 1::2]
    torch.testing.assert_close(LogitLogic(12, ["and"])(z), and_ail(x, y))
    dup = LogitLogic(12, ["or", "and", "xnor"], "dup")(z)
    torch.testing.assert_close(dup, torch.cat([or_ail(x, y), and_ail(x, y), xnor_ail(x, y)], 1))
    # partition: 6 pairs, 2 per operator, in order
    part = LogitLogic(12, ["or", "and", "xnor"], "part")(z)
    expected = torch.cat([or_ail(x[:, :2], y[:, :2]), and_ail(x[:, 2:4], y[:, 2:4]), xnor_ail(x[:, 4:], y[:, 4:])], 1)
    torch.testing.assert_close(part, expected)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_declared_channel_ratio_is_the_real_one(name):
    comp = get_registry().get("activation", name)
    for channels in (8, 12, 16):
        out = comp.bind()(channels)(torch.randn(2, channels, 3))
        assert out.shape[1] == channels * comp.channel_ratio


def test_partition_keeps_ratio_when_pairs_do_not_split_evenly():
    out = LogitLogic(16, ["or", "and", "xnor"], "part")(torch.randn(2, 16, 3))
    assert out.shape == (2, 8, 3)


def test_odd_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="even number"):
        LogitLogic(11, ["or", "and", "xnor"])


@pytest.mark.parametrize("op", ["and", "or", "xnor"])
def test_normalized_operators_are_standard_for_unit_normal_inputs(op):
    z = torch.randn(2, 400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = LogitLogic(2, [op], normalize=True)(z.T.unsqueeze(-1))
    assert out.mean().item() == pytest.approx(0, abs=1e-2)
    assert out.std().item() == pytest.approx(1, abs=1e-2)


def _config(model, act, shape, width):
    return TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=shape,
        num_classes=10,
        model={"name": model, "params": {"width": width}},
        components={
            "normalization": {"name": "batchnorm"},
            "activation": {"name": act},
            "pooling": {"name": "avg"},
            "head": {"name": "linear"},
        },
        epochs=1,
        train={},
    )


@pytest.mark.parametrize("model, shape", [("resnet", (1, 8, 8)), ("small_cnn", (3, 16))])
@pytest.mark.parametrize("act", ["and_ail", "ail_or_and_dup", "ail_or_and_xnor_dup", "ail_or_and_xnor_part"])
def test_backbones_honour_the_channel_ratio_end_to_end(model, act, shape):
    ratio = get_registry().get("activation", act).channel_ratio
    net = build_model(_config(model, act, shape, width=12))
    seen = []
    for m in net.modules():
        if isinstance(m, LogitLogic):
            m.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].shape[1], out.shape[1])))
    out = net(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert seen and all(cout == cin * ratio and cout in (12, 24, 48) for cin, cout in seen)
