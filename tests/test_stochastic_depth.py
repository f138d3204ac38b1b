"""Stochastic depth: linear-decay survival, whole-branch skipping in training, p_l-scaled branches in eval."""

import copy

import pytest
import torch
from autonorm_plugins.stochastic_depth import StochasticDepth, StochasticDepthGate, survival_probabilities
from torch import nn

from autonorm import build_model
from tests.test_build import config


def resnet(depth=14):
    torch.manual_seed(0)
    return build_model(config(depth=depth, width=8))


def test_linear_decay_rule_and_expected_depth():
    p = survival_probabilities(54, 0.5)
    assert p[0] == pytest.approx(1 - 0.5 / 54) and p[-1] == pytest.approx(0.5)
    assert sum(p) == pytest.approx(54 - 0.5 * 55 / 2)  # 40.25 active blocks on average (paper, L = 54)


def test_eval_is_deterministic_with_branches_scaled_by_survival():
    model = resnet().eval()
    plain = copy.deepcopy(model)
    StochasticDepth(0.5).setup(model, None)
    gates = [b.gate.survival for b in model.blocks]
    assert gates == pytest.approx(survival_probabilities(6, 0.5))
    for block, p in zip(plain.blocks, gates, strict=True):  # independent reference: scale each branch's last norm
        block.norm2 = nn.Sequential(block.norm2, _Scale(p))
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), model(x))
    torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-6)


class _Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


def test_survival_one_is_plain_training():
    model, plain = resnet(), resnet()
    StochasticDepth(1.0).setup(model, None)
    x = torch.randn(8, 1, 8, 8)
    out, ref = model(x), plain(x)
    assert torch.equal(out, ref)
    out.sum().backward()
    ref.sum().backward()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), plain.parameters(), strict=True))


def test_a_dropped_branch_is_not_computed():
    model = resnet()
    block = model.blocks[-1]
    block.gate = StochasticDepthGate(0.0)  # always dropped
    before = copy.deepcopy(block.norm2.state_dict())
    x = torch.randn(8, 1, 8, 8)
    model(x).sum().backward()
    assert all(p.grad is None for p in block.conv1.parameters()) and block.conv2.weight.grad is None
    assert all(torch.equal(v, block.norm2.state_dict()[k]) for k, v in before.items())  # no statistics update
    h = model.blocks[:-1](model.stem(x))
    torch.testing.assert_close(block(h), block.act(block.shortcut(h)))


def test_survival_frequency_of_each_block():
    torch.manual_seed(0)
    gate = StochasticDepthGate(0.3)
    calls = []
    for _ in range(4000):
        gate(lambda x: calls.append(1) or x, torch.ones(1))
    assert len(calls) / 4000 == pytest.approx(0.3, abs=0.03)
