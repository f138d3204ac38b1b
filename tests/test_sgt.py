"""Softmax gradient tampering changes only the backward pass: dL/dz = (softmax(alpha z) - q) / N."""

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.sgt import sgt_cross_entropy


def logits_and_target(n=6, k=5):
    torch.manual_seed(0)
    return (3 * torch.randn(n, k, dtype=torch.float64)).requires_grad_(), torch.randint(0, k, (n,))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_alpha_one_is_cross_entropy(smoothing):
    z, t = logits_and_target()
    (g,) = torch.autograd.grad(sgt_cross_entropy(z, t, 1.0, smoothing), z)
    (ref,) = torch.autograd.grad(F.cross_entropy(z, t, label_smoothing=smoothing), z)
    torch.testing.assert_close(g, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_forward_is_unchanged_and_backward_uses_softmax_of_alpha_z(alpha):
    z, t = logits_and_target()
    loss = sgt_cross_entropy(z, t, alpha, 0.1)
    assert torch.equal(loss, F.cross_entropy(z, t, label_smoothing=0.1))
    (g,) = torch.autograd.grad(3 * loss, z)
    q = F.one_hot(t, 5).double() * 0.9 + 0.02
    torch.testing.assert_close(g, 3 * (torch.softmax(alpha * z.detach(), 1) - q) / 6, rtol=0, atol=1e-12)
    torch.testing.assert_close(g.sum(1), torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)
    if alpha == 0:
        torch.testing.assert_close(g, 3 * (0.2 - q) / 6, rtol=0, atol=1e-12)


def test_chain_rule_reaches_the_head_weights():
    torch.manual_seed(0)
    a, w, t = torch.randn(8, 4), torch.randn(5, 4, requires_grad=True), torch.randint(0, 5, (8,))
    sgt_cross_entropy(a @ w.T, t, 0.25).backward()
    expected = (torch.softmax(0.25 * (a @ w.T).detach(), 1) - F.one_hot(t, 5)).T @ a / 8
    torch.testing.assert_close(w.grad, expected)
