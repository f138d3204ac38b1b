"""Label smoothing: cross-entropy against (1 - eps) onehot + eps / K."""

import math

import torch
from autonorm_plugins.label_smoothing import LabelSmoothing
from torch import nn


def test_loss_is_cross_entropy_against_the_smoothed_target_and_eps_zero_is_plain():
    torch.manual_seed(0)
    model, x, y = nn.Linear(3, 4), torch.randn(6, 3), torch.randint(0, 4, (6,))
    q = torch.nn.functional.one_hot(y, 4) * 0.8 + 0.05
    expected = -(q * torch.log_softmax(model(x), 1)).sum(1).mean()
    torch.testing.assert_close(LabelSmoothing(0.2).loss(model, x, y), expected)
    assert torch.equal(LabelSmoothing(0.0).loss(model, x, y), torch.nn.functional.cross_entropy(model(x), y))


def test_minimum_is_the_entropy_of_the_smoothed_target_at_finite_logits():
    eps, k = 0.1, 4
    gap = math.log((1 - eps + eps / k) / (eps / k))
    logits = torch.tensor([[gap, 0.0, 0.0, 0.0]], requires_grad=True)
    loss = LabelSmoothing(eps).loss(nn.Identity(), logits, torch.tensor([0]))
    (g,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(g, torch.zeros_like(g), rtol=0, atol=1e-6)
    q = torch.tensor([1 - eps + eps / k] + [eps / k] * 3)
    torch.testing.assert_close(loss, -(q * q.log()).sum())
