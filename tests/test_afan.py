"""A-FAN: feature-space PGD at a stage boundary plus adversarial feature normalization."""

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.afan import AFAN, feature_pgd, mix_feature, split_model
from torch import nn

import autonorm
from autonorm import build_model, load_spec
from autonorm.errors import TrialFailed
from tests.helpers import registry_with_test_components
from tests.test_build import config


def model_and_batch(model="resnet", **params):
    torch.manual_seed(0)
    net = build_model(config(model=model, **params))
    return net, torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))


@pytest.mark.parametrize(
    ("model", "params", "stage"), [("resnet", {"depth": 8, "width": 4}, 2), ("small_cnn", {"depth": 2, "width": 4}, 1)]
)
def test_split_reproduces_the_model(model, params, stage):
    net, x, _ = model_and_batch(model, **params)
    net.eval()
    head, tail = split_model(net, stage)
    torch.testing.assert_close(tail(head(x)), net(x), rtol=0, atol=0)


def test_pgd_stays_in_the_eps_ball_and_increases_the_loss():
    net, x, y = model_and_batch("small_cnn", depth=2, width=4)
    net.eval()
    head, tail = split_model(net, 1)
    h = head(x).detach()
    clean = F.cross_entropy(tail(h), y)
    eps, step = 0.05, 0.02
    clipped = feature_pgd(tail, h, y, steps=5, step_size=step, eps=eps, clip=True, rand_init=True)
    assert 0 < (clipped - h).abs().max() <= eps + 1e-6
    free = feature_pgd(tail, h, y, steps=5, step_size=step, eps=eps)
    delta = (free - h).abs().max().item()
    assert eps < delta <= 5 * step + 1e-6  # no clip: bounded by steps * step_size only
    assert F.cross_entropy(tail(clipped), y) > clean
    assert F.cross_entropy(tail(free), y) > clean
    assert all(p.grad is None for p in net.parameters())  # PGD differentiates the feature only


@pytest.mark.parametrize("stat_mix", [1.0, 0.3])
@pytest.mark.parametrize(("stats", "dims"), [("batch", (0, 2, 3)), ("channel", (1,))])
def test_normalized_features_carry_the_mixed_moments(stats, dims, stat_mix):
    torch.manual_seed(0)
    h = torch.randn(8, 3, 4, 4) * 2 + 1
    h_adv = torch.randn(8, 3, 4, 4) * 0.5 - 3 + h
    mean_c, std_c = h.mean(dims, keepdim=True), (h.var(dims, keepdim=True, unbiased=False) + 1e-5).sqrt()
    mean_a, std_a = h_adv.mean(dims, keepdim=True), (h_adv.var(dims, keepdim=True, unbiased=False) + 1e-5).sqrt()
    target_mean = (1 - stat_mix) * mean_c + stat_mix * mean_a
    target_std = (1 - stat_mix) * std_c + stat_mix * std_a
    mixed = mix_feature(h, h_adv, stats, stat_mix)
    torch.testing.assert_close(mixed, (h - mean_c) / std_c * target_std + target_mean)
    torch.testing.assert_close(mixed.mean(dims, keepdim=True), target_mean, rtol=0, atol=1e-4)
    # std = target std up to the 1e-5 added to the clean variance: sqrt(var_c / (var_c + 1e-5))
    shrink = h.std(dims, keepdim=True, unbiased=False) / std_c
    torch.testing.assert_close(mixed.std(dims, keepdim=True, unbiased=False), target_std * shrink, rtol=1e-4, atol=0)
    if stat_mix == 1.0:  # the paper's rule: the adversarial moments replace the clean ones
        torch.testing.assert_close(mixed.mean(dims, keepdim=True), mean_a, rtol=0, atol=1e-4)


def test_weight_zero_is_plain_cross_entropy_and_the_adversarial_half_stops_at_the_feature():
    net, x, y = model_and_batch(depth=8, width=4)
    head, tail = split_model(net, 1)
    plain = F.cross_entropy(net(x), y)
    plain.backward()
    expected = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    afan = AFAN(adv_weight=0.0)
    afan.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    loss = afan.loss(net, x, y)
    torch.testing.assert_close(loss, plain)
    loss.backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], msg=n)
    # zero PGD steps, no normalization: tail(h_adv) == tail(h), so the tail gets the full CE gradient and the head
    # half of it (the adversarial half starts from the detached feature)
    net.zero_grad()
    AFAN(steps=0, normalize=False, adv_weight=0.5).loss(net, x, y).backward()
    head_ids = {id(p) for p in head.parameters()}
    for n, p in net.named_parameters():
        scale = 0.5 if id(p) in head_ids else 1.0
        torch.testing.assert_close(p.grad, scale * expected[n], msg=n)


def test_gradients_reach_the_parameters_and_the_adversarial_terms_train_only_the_tail():
    net, x, y = model_and_batch(depth=8, width=4)
    head, tail = split_model(net, 1)
    AFAN(steps=2, step_size=0.05).loss(net, x, y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters() if p.dim() > 1)
    net.zero_grad()
    AFAN(steps=2, step_size=0.05, adv_weight=1.0).loss(net, x, y).backward()
    assert all(p.grad is None or not p.grad.any() for p in head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tail.parameters())


def test_clean_bn_stats_see_only_the_clean_features():
    net, x, y = model_and_batch(depth=8, width=4)
    reference = build_model(config(model="resnet", depth=8, width=4))
    reference.load_state_dict(net.state_dict())
    AFAN(steps=2, step_size=0.05, bn_stats="clean").loss(net, x, y)
    reference(x)
    for (n, a), b in zip(net.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=n)
    AFAN(steps=2, step_size=0.05, bn_stats="update").loss(net, x, y)
    reference(x)
    assert any(not torch.equal(a, b) for a, b in zip(net.buffers(), reference.buffers(), strict=True))


def test_unsupported_model_or_stage_is_rejected_at_setup():
    with pytest.raises(TrialFailed, match="supported: resnet"):
        AFAN().setup(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), None)
    net, _, _ = model_and_batch("small_cnn", depth=2, width=4)
    with pytest.raises(TrialFailed, match="stage=3"):
        AFAN(stage=3).setup(net, None)
    with pytest.raises(ValueError, match="stats"):
        AFAN(stats="instance")


def test_search_with_afan():
    registry = registry_with_test_components()
    spec = load_spec(
        {
            "name": "afan",
            "model": {"backbone": "resnet", "depth": 8, "width": 4},
            "space": {"training": {"afan": {"stage": 1, "steps": 1}}},
            "train": {"epochs": 1},
            "search": {"trials": 1, "pruner": "none"},
        },
        registry,
    )
    (trial,) = autonorm.search(spec, registry=registry).trials
    assert trial.state == "complete" and trial.config.components["training"].name == "afan"


def test_loss_averages_the_clean_and_the_adversarial_terms():
    net, x, y = model_and_batch(depth=8, width=4)
    net.eval()  # fixed statistics: the terms can be recomputed outside the method
    head, tail = split_model(net, 1)
    h = head(x).detach()
    h_adv = feature_pgd(tail, h, y, steps=2, step_size=0.05, eps=2 / 255)
    ce_clean, ce_adv = F.cross_entropy(tail(h), y), F.cross_entropy(tail(h_adv), y)
    ce_mix = F.cross_entropy(tail(mix_feature(h, h_adv)), y)
    loss = AFAN(steps=2, step_size=0.05, adv_weight=0.3).loss(net, x, y)
    torch.testing.assert_close(loss, 0.7 * ce_clean + 0.3 * (ce_adv + ce_mix) / 2)
    loss = AFAN(steps=2, step_size=0.05, normalize=False).loss(net, x, y)
    torch.testing.assert_close(loss, (ce_clean + ce_adv) / 2)
