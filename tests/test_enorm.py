"""Equi-normalization: a function-preserving rescaling of ReLU networks that minimizes the weights' L2 norm."""

import pytest
import torch
from autonorm_plugins.enorm import ENorm, candidate_pairs
from torch import nn

from autonorm import ComponentChoice, SpecError, build_model, load_spec
from autonorm.errors import Incompatible
from autonorm.trainer import fit
from tests.test_build import config
from tests.test_trainer import TRAIN


def relu_net() -> nn.Module:
    """Bias-free conv -> ReLU -> max pool -> conv -> ReLU -> flatten -> linear -> ReLU -> linear classifier:
    two balanced hidden layers (the second read by a linear layer through a flatten), the classifier's
    inputs left as they are."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 12, bias=False),
        nn.ReLU(),
        nn.Linear(12, 5),
    )


def enorm_on(model, c=1.0, optimizer=None, x=None):
    method = ENorm(c=c)
    x = torch.randn(32, 3, 8, 8) if x is None else x
    method.setup_data(x, torch.zeros(len(x), dtype=torch.long), 1)
    method.setup(model, optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    return method


def norms(p, q):
    incoming = p.weight.flatten(1).norm(dim=1)
    outgoing = q.weight.view(q.weight.shape[0], len(incoming), -1).transpose(0, 1).flatten(1).norm(dim=1)
    return incoming, outgoing


def squared_norm(model):
    return sum(float(m.weight.detach().pow(2).sum()) for m in model if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_the_hidden_layers_are_balanced_and_the_classifiers_inputs_are_not():
    model = relu_net()
    assert candidate_pairs(model) == [(model[0], model[3]), (model[3], model[6])]
    head = model[8].weight.clone()
    first = model[0].weight.clone()
    method = enorm_on(model)
    for _ in range(5):
        method.after_step(model)
    assert torch.equal(model[8].weight, head)
    # the first layer's inputs are not a hidden layer: each of its filters is only scaled as a whole
    ratio = (model[0].weight / first).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


def test_one_cycle_computes_every_factor_from_the_weights_before_it():
    model = relu_net()
    conv0, conv3, linear6 = (model[i].weight.detach().clone() for i in (0, 3, 6))
    c = 1.1
    norm = torch.linalg.vector_norm
    d1 = (norm(conv3, dim=(0, 2, 3)) / (c * norm(conv0, dim=(1, 2, 3)))).sqrt()  # the hidden layer after conv 0
    d2 = (norm(linear6.view(12, 6, 16), dim=(0, 2)) / (c * norm(conv3, dim=(1, 2, 3)))).sqrt()  # after conv 3
    enorm_on(model, c).after_step(model)
    torch.testing.assert_close(model[0].weight, conv0 * d1.view(-1, 1, 1, 1))
    torch.testing.assert_close(model[3].weight, conv3 * d2.view(-1, 1, 1, 1) / d1.view(1, -1, 1, 1))
    torch.testing.assert_close(model[6].weight, (linear6.view(12, 6, 16) / d2.view(1, -1, 1)).view(12, 96))


def test_a_dead_unit_is_left_as_it_is():
    model = relu_net()
    with torch.no_grad():
        model[0].weight[2] = 0
    x = torch.randn(8, 3, 8, 8)
    before = model(x)
    method = enorm_on(model)
    d = method.balancer(*method.pairs[0])
    assert d[2] == 1 and torch.all(d[[0, 1, 3]] != 1)
    method.after_step(model)
    assert all(torch.all(torch.isfinite(m.weight)) for m in (model[0], model[3], model[6]))
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c", [1.0, 1.2])
def test_a_cycle_leaves_the_function_unchanged(c):
    model, x = relu_net(), torch.randn(16, 3, 8, 8)
    before = model(x)
    method = enorm_on(model, c)
    weights = [m.weight.clone() for m in (model[0], model[3], model[6])]
    method.after_step(model)
    assert not any(torch.allclose(w, m.weight) for w, m in zip(weights, (model[0], model[3], model[6]), strict=True))
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c", [1.0, 1.2])
def test_cycles_converge_to_outgoing_norms_c_times_the_incoming_ones(c):
    model = relu_net()
    method = enorm_on(model, c)
    for _ in range(200):
        method.after_step(model)
    for p, q in method.pairs:
        incoming, outgoing = norms(p, q)
        torch.testing.assert_close(outgoing, c * incoming, rtol=1e-3, atol=0)


def test_with_c_one_the_total_norm_never_grows_and_reaches_the_minimum_over_rescalings():
    model = relu_net()
    with torch.no_grad():  # start from an unbalanced parameterization of the same function
        model[0].weight.mul_(4)
        model[3].weight.div_(4)
    method = enorm_on(model)
    totals = [squared_norm(model)]
    for _ in range(100):
        method.after_step(model)
        totals.append(squared_norm(model))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(totals, totals[1:], strict=False))
    assert totals[-1] < 0.5 * totals[0]
    # no further rescaling of a hidden layer lowers it: the balanced network is the minimum-norm one
    p, q = method.pairs[0]
    for d in (torch.full((8,), 1.05), torch.full((8,), 0.95), 1 + 0.1 * torch.randn(8).clamp(-0.5, 0.5)):
        trial = relu_net()
        trial.load_state_dict(model.state_dict())
        with torch.no_grad():
            trial[0].weight.mul_(d.view(-1, 1, 1, 1))
            trial[3].weight.div_(d.view(1, -1, 1, 1))
        assert squared_norm(trial) > totals[-1]


def test_momentum_buffers_are_rescaled_inversely_to_their_weights():
    model = relu_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 3, 8, 8)).pow(2).mean().backward()
    optimizer.step()
    method = enorm_on(model, optimizer=optimizer)
    layers = (model[0], model[3], model[6])
    products = [m.weight * optimizer.state[m.weight]["momentum_buffer"] for m in layers]
    method.after_step(model)
    for m, product in zip(layers, products, strict=True):
        torch.testing.assert_close(m.weight * optimizer.state[m.weight]["momentum_buffer"], product)


def test_a_resnet_without_normalization_balances_inside_its_blocks_only():
    model = build_model(config(model="resnet", norm="none", depth=8, width=8))
    method = enorm_on(model, x=torch.randn(16, 1, 8, 8))
    blocks = list(model.blocks)
    assert method.pairs == [(b.conv1, b.conv2) for b in blocks]
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    method.after_step(model)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("head", "pool", "down", "pairs"),
    [
        ("linear", "avg", "strided_conv", 2),
        ("hadamard", "max", "strided_conv", 2),  # a fixed head: the last conv feeds it, the one before is balanced
        ("class_centre", "avg", "strided_conv", 2),
        ("linear", "logavgexp", "logavgexp", 1),  # the conv before a learned pooling is not balanced across it
    ],
)
def test_heads_and_poolings_of_the_registry_keep_the_function(head, pool, down, pairs):
    cfg = config(model="small_cnn", norm="none", pool=pool, depth=3, width=8)
    cfg.components["head"].name, cfg.components["downsampling"] = head, ComponentChoice(name=down)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randn(16, 1, 8, 8)
    method = enorm_on(model, c=1.1, x=x)
    assert len(method.pairs) == pairs
    before = model(x)
    for _ in range(10):
        method.after_step(model)
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"act": "elu"}, "no hidden layer to balance"),
        ({"optimizer": "adam"}, "needs SGD"),
    ],
)
def test_a_model_or_optimizer_it_cannot_act_on_is_incompatible(digits, kw, message):
    optimizer = kw.pop("optimizer", "sgd")
    model = build_model(config(model="small_cnn", norm="none", depth=3, width=8, **kw))
    with pytest.raises(Incompatible, match=f"incompatible: enorm: {message}"):
        fit(model, digits, {**TRAIN, "optimizer": optimizer}, 1, methods=[ENorm()])


def test_training_with_it_learns(digits):
    torch.manual_seed(0)
    model = build_model(config(model="small_cnn", norm="none", depth=3, width=16))
    result = fit(model, digits, {**TRAIN, "lr": 0.05}, 2, methods=[ENorm()])
    assert result.metrics["val_accuracy"] > 0.65  # 0.72-0.78 over seeds 0-2; random guessing 0.1


def test_weights_in_channels_last_are_rescaled_in_place():
    model = relu_net().to(memory_format=torch.channels_last)
    assert not model[3].weight.is_contiguous()
    x = torch.randn(16, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    before = model(x)
    method = enorm_on(model, x=x)
    for _ in range(20):
        method.after_step(model)
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    incoming, outgoing = norms(*method.pairs[0])
    torch.testing.assert_close(outgoing, incoming, rtol=1e-2, atol=0)


@pytest.mark.parametrize("c", [0, -1, {"uniform": [0, 2]}])
def test_c_below_one_is_refused_when_the_file_is_read(c):
    with pytest.raises(SpecError, match=r"space.training.enorm.c: expected at least 1.0, got 0|got -1"):
        load_spec({"space": {"normalization": ["none"], "training": {"enorm": {"c": c}}}})


def test_a_space_whose_optimizer_can_never_be_sgd_is_refused_when_it_is_read():
    space = {"space": {"normalization": ["none"], "training": ["enorm"]}, "train": {"optimizer": "adam"}}
    with pytest.raises(SpecError, match=r"requires train.optimizer 'sgd', which the space does not offer \(adam\)"):
        load_spec(space)
    load_spec({**space, "train": {"optimizer": ["adam", "sgd"]}})  # adam trials are pruned as incompatible
