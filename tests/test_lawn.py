"""LAWN: after the warm phase the final layers' weight norms stay at their end-of-warm values."""

import copy

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.lawn import LAWN, final_homogeneous_weights

from autonorm import build_model
from tests.test_build import config


def model_and_lawn(warm, epochs=4, norm="batchnorm"):
    torch.manual_seed(0)
    model = build_model(config(model="small_cnn", norm=norm, depth=2, width=8))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    lawn = LAWN(warm)
    lawn.setup_data(None, None, epochs)
    lawn.setup(model, optimizer)
    return model, optimizer, lawn


def steps(model, optimizer, lawn, n, epoch=None):
    torch.manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        lawn.after_step(model)
    if epoch is not None:
        lawn.end_epoch(model, epoch)


def test_constrained_layers_are_those_after_the_last_normalization():
    model, _, lawn = model_and_lawn(0.5)
    assert lawn.weights == [model.head.weight]
    torch.manual_seed(0)
    plain = build_model(config(model="small_cnn", norm="none", depth=2, width=8))
    assert final_homogeneous_weights(plain) == [plain.features[0].weight, plain.features[2].weight, plain.head.weight]


def test_warm_phase_is_the_base_optimizer_then_norms_stay_fixed():
    model, optimizer, lawn = model_and_lawn(warm=0.5)
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.05)
    steps(model, optimizer, lawn, 5, epoch=0)
    torch.manual_seed(1)
    for _ in range(5):  # the same steps without LAWN
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        ref_opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        ref_opt.step()
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )
    assert lawn.norms == []
    steps(model, optimizer, lawn, 1, epoch=1)  # end of the warm phase: norms recorded
    recorded = model.head.weight.norm().item()
    bias = model.head.bias.detach().clone()
    steps(model, optimizer, lawn, 20)
    assert model.head.weight.norm().item() == pytest.approx(recorded, rel=1e-6)
    assert not torch.equal(model.head.bias, bias)  # biases train freely


def test_projection_keeps_a_bias_free_head_function_up_to_scale():
    model, _, lawn = model_and_lawn(warm=0.0)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        model.head.bias.zero_()
        before = model.eval()(x)
        model.head.weight.mul_(7.5)
    lawn.after_step(model)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.SGD])
def test_weight_decay_stops_on_the_constrained_weights_only(optimizer):
    """With Adam the L2 decay is rescaled per entry, so the projection could not undo it: it turned the
    head's direction. Here only weight decay acts (the loss has no gradient)."""
    torch.manual_seed(0)
    model = build_model(config(model="small_cnn", depth=2, width=8))
    opt = optimizer(model.parameters(), lr=0.05, weight_decay=0.1)
    lawn = LAWN(0.0)
    lawn.setup_data(None, None, 4)
    lawn.setup(model, opt)
    head, other = model.head.weight.detach().clone(), model.features[0].weight.detach().clone()
    for _ in range(50):
        opt.zero_grad()
        (0 * model(torch.randn(4, 1, 8, 8)).sum()).backward()
        opt.step()
        lawn.after_step(model)
    cosine = F.cosine_similarity(model.head.weight.flatten(), head.flatten(), dim=0)
    assert cosine.item() == pytest.approx(1.0, abs=1e-6)
    assert model.features[0].weight.norm() < 0.9 * other.norm()  # the other weights still decay
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_the_projection_touches_the_constrained_weights_only():
    model, optimizer, lawn = model_and_lawn(0.0)
    steps(model, optimizer, lawn, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # every norm off its recorded value
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lawn.after_step(model)
    constrained = {id(w) for w in lawn.weights}
    for name, p in model.named_parameters():
        if id(p) in constrained:
            assert p.norm().item() == pytest.approx(before[name].norm().item() / 1.5)  # back to its recorded norm
        else:
            assert torch.equal(p, before[name]), name


@pytest.mark.parametrize(
    ("warm", "epochs", "warm_epochs"),
    [(0.25, 8, 2), (0.25, 2, 1), (0.9, 3, 2), (0.6, 1, 0), (0.0, 4, 0), (0.5, 5, 3)],
)
def test_the_warm_phase_rounds_half_up_and_leaves_at_least_the_last_epoch_constrained(warm, epochs, warm_epochs):
    """round(0.25 * 2) is 0 in Python, and round(0.9 * 3) = 3 epochs of warm phase left nothing constrained."""
    lawn = LAWN(warm=warm)
    lawn.setup_data(torch.zeros(4, 1), torch.zeros(4), epochs)
    assert lawn.warm_epochs == warm_epochs
