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


def test_alpha_one_trains_a_network_exactly_as_cross_entropy():
    """Every parameter's gradient, not only the logits': alpha = 1 is plain training."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5)).double()
    x, t = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 5, (7,))
    tampered = torch.autograd.grad(sgt_cross_entropy(net(x), t, 1.0), list(net.parameters()))
    plain = torch.autograd.grad(F.cross_entropy(net(x), t), list(net.parameters()))
    for a, b in zip(tampered, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.7])
def test_the_distribution_its_gradient_uses_keeps_the_ranking_and_is_flatter(alpha):
    """The backward pass uses p~ = p^alpha / sum p^alpha (read back from the gradient: p~ = N dL/dz + q):
    the same argmax as p, and no less entropy for alpha < 1."""
    z, t = logits_and_target(n=50, k=7)
    (g,) = torch.autograd.grad(sgt_cross_entropy(z, t, alpha), z)
    tampered = 50 * g + F.one_hot(t, 7).double()
    p = torch.softmax(z.detach(), 1)
    torch.testing.assert_close(tampered, p**alpha / (p**alpha).sum(1, keepdim=True), rtol=0, atol=1e-12)
    assert torch.equal(tampered.argmax(1), p.argmax(1))

    def entropy(q):
        return -(q * q.log()).sum(1)

    assert bool((entropy(tampered) >= entropy(p) - 1e-12).all())
