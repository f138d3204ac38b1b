"""Stochastic depth: linear-decay survival, whole-branch skipping in training (kept branches divided by p_l),
the plain network in eval."""

import copy

import pytest
import torch
from autonorm_plugins.stochastic_depth import StochasticDepth, StochasticDepthGate, survival_probabilities

import autonorm
from autonorm import build_model
from tests.test_build import config


def resnet(depth=14):
    torch.manual_seed(0)
    return build_model(config(depth=depth, width=8))


def test_linear_decay_rule_and_expected_depth():
    p = survival_probabilities(54, 0.5)
    assert p[0] == pytest.approx(1 - 0.5 / 54) and p[-1] == pytest.approx(0.5)
    assert sum(p) == pytest.approx(54 - 0.5 * 55 / 2)  # 40.25 active blocks on average (paper, L = 54)


def test_eval_is_the_plain_network_so_trained_weights_reload_with_build_model():
    model = resnet().eval()
    plain = copy.deepcopy(model)
    StochasticDepth(0.5).setup(model, None)
    gates = [b.gate.survival for b in model.blocks]
    assert gates == pytest.approx(survival_probabilities(6, 0.5))
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), plain(x))


def test_a_kept_branch_is_scaled_so_the_training_output_is_the_eval_output_in_expectation():
    torch.manual_seed(0)
    gate, x = StochasticDepthGate(0.3), torch.randn(4)
    branch = torch.tanh
    mean = sum(gate(branch, x) for _ in range(20000)) / 20000
    torch.testing.assert_close(mean, gate.eval()(branch, x), atol=0.03, rtol=0)  # error ~ 1/sqrt(K)
    assert torch.equal(gate.eval()(branch, x), branch(x))


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


def test_trained_model_reloads_exactly_and_a_test_time_scale_outside_the_weights_is_caught(tmp_path, monkeypatch):
    spec = autonorm.load_spec({"model": {"backbone": "resnet", "depth": 8, "width": 4}, "train": {"epochs": 1}})
    train = {key: domain.suggest(None, key) for key, domain in spec.train.items()} | spec.train_options
    raw = config(depth=8, width=4).model_dump()
    raw["components"]["training"] = {"name": "stochastic_depth"}
    cfg = autonorm.TrialConfig.model_validate({**raw, "train": train})
    trained = autonorm.train(cfg, tmp_path / "sd")
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(autonorm.load_trained(tmp_path / "sd")(x), trained.model(x))

    def paper_form(self, branch, x):  # the paper's test-time scale, held outside the weights
        return branch(x) * (self.survival if not self.training else 1.0)

    monkeypatch.setattr(StochasticDepthGate, "forward", paper_form)
    with pytest.raises(autonorm.SpecError, match=r"a training method \(stochastic_depth\) changes the model"):
        autonorm.train(cfg, tmp_path / "paper")
