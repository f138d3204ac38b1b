"""PSWA / PWALKS / PSWM: at each period end the weights become the mean (last-K mean, EMA) of the period's samples."""

import copy

import pytest
import torch
import torch.nn.functional as F
from autonorm_plugins.periodic_averaging import PSWA, PSWM, PWALKS, recompute_statistics, training_batches
from torch.nn.modules.batchnorm import _BatchNorm

import autonorm
from autonorm import load_spec
from tests.helpers import registry_with_test_components
from tests.test_build import config


def model_and_method(method, n_train=40):
    torch.manual_seed(0)
    model = build(depth=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    x_train = torch.randn(n_train, 1, 8, 8)
    method.setup_data(x_train, torch.randint(0, 10, (n_train,)), 2)
    method.setup(model, optimizer)
    return model, optimizer, method


def build(depth):
    return autonorm.build_model(config(model="small_cnn", depth=depth, width=4))


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def train(model, optimizer, method, n):
    """n optimizer steps; returns the parameters after each one."""
    torch.manual_seed(1)
    model.train()
    after = []
    for _ in range(n):
        x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        method.after_step(model)
        after.append(params(model))
    return after


def assert_params(model, expected, **tol):
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, **tol)


def test_pswa_loads_back_the_arithmetic_mean_of_the_samples():
    model, optimizer, pswa = model_and_method(PSWA(every=2))
    after = train(model, optimizer, pswa, 7)
    samples = after[1::2]  # steps 2, 4, 6
    assert len(samples) == 3 and pswa.count == 3
    pswa.end_epoch(model, 0)
    mean = [torch.stack(group).mean(0) for group in zip(*samples, strict=True)]
    assert_params(model, mean, rtol=0, atol=1e-6)
    assert not torch.equal(mean[0], after[-1][0])  # the load-back did change the weights
    # the next period starts afresh: its mean is over its own samples only
    after = train(model, optimizer, pswa, 2)
    pswa.end_epoch(model, 1)
    assert_params(model, after[1], rtol=0, atol=0)


def test_pwalks_uses_exactly_the_last_k_samples():
    model, optimizer, pwalks = model_and_method(PWALKS(every=1, k=3))
    after = train(model, optimizer, pwalks, 7)
    pwalks.end_epoch(model, 0)
    last = [torch.stack(group).mean(0) for group in zip(*after[-3:], strict=True)]
    four = [torch.stack(group).mean(0) for group in zip(*after[-4:], strict=True)]
    assert_params(model, last, rtol=0, atol=1e-6)
    assert not torch.allclose(last[0], four[0], rtol=0, atol=1e-6)


def test_pswm_loads_back_the_exponential_average_started_at_the_first_sample():
    beta = 0.8
    model, optimizer, pswm = model_and_method(PSWM(every=1, beta=beta))
    after = train(model, optimizer, pswm, 5)
    pswm.end_epoch(model, 0)
    ema = after[0]
    for sample in after[1:]:
        ema = [beta * a + (1 - beta) * s for a, s in zip(ema, sample, strict=True)]
    assert_params(model, ema, rtol=0, atol=1e-6)


def test_a_period_with_a_single_sample_is_a_bit_for_bit_no_op():
    for method in (PSWA(every=4), PWALKS(every=4, k=5), PSWM(every=4, beta=0.5), PWALKS(every=1, k=1)):
        model, optimizer, method = model_and_method(method)
        train(model, optimizer, method, 4)  # the only sample is the current weights
        before = params(model)
        method.end_epoch(model, 0)
        for p, b in zip(model.parameters(), before, strict=True):
            assert torch.equal(p, b), type(method).__name__
    model, optimizer, method = model_and_method(PSWA(every=5))
    train(model, optimizer, method, 4)  # no sample at all
    before = params(model)
    method.end_epoch(model, 0)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_on_a_convex_loss_the_average_is_no_worse_than_the_mean_sample_loss_and_fixed_weights_stay_put():
    torch.manual_seed(0)
    a, b = torch.randn(32, 5), torch.randn(32, 1)
    model = torch.nn.Linear(5, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pswa = PSWA()
    pswa.setup_data(a, b, 1)
    pswa.setup(model, optimizer)

    def loss():
        return ((model(a) - b) ** 2).mean()

    sample_losses = []
    for _ in range(6):
        batch = torch.randint(0, 32, (4,))  # noisy gradients
        optimizer.zero_grad()
        ((model(a[batch]) - b[batch]) ** 2).mean().backward()
        optimizer.step()
        pswa.after_step(model)
        sample_losses.append(loss().item())
    pswa.end_epoch(model, 0)
    assert loss().item() <= sum(sample_losses) / len(sample_losses)  # Jensen
    assert pswa.eval_model(model) is model  # no batch norm: nothing to recompute

    before = params(model)
    for _ in range(3):  # samples of unchanged weights average to the same weights, bit for bit
        pswa.after_step(model)
    pswa.end_epoch(model, 1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_evaluated_model_has_bn_statistics_of_a_fresh_pass_with_the_averaged_weights():
    n_train = 600  # two batches of 256 in the recomputation, the last 88 samples dropped
    model, optimizer, pswa = model_and_method(PSWA(), n_train=n_train)
    train(model, optimizer, pswa, 5)
    pswa.end_epoch(model, 0)
    reference = copy.deepcopy(model).train()
    (bn,) = [m for m in reference.modules() if isinstance(m, _BatchNorm)]
    inputs = []
    bn.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    with torch.no_grad():
        for i in range(2):
            reference(pswa.x[i * 256 : (i + 1) * 256])
    assert len(inputs) == 2
    mean = torch.stack([h.mean((0, 2, 3)) for h in inputs]).mean(0)
    var = torch.stack([h.var((0, 2, 3), unbiased=True) for h in inputs]).mean(0)

    evaluated = pswa.eval_model(model)
    assert evaluated is model and not evaluated.training
    (bn,) = [m for m in evaluated.modules() if isinstance(m, _BatchNorm)]
    torch.testing.assert_close(bn.running_mean, mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-5)
    assert_params(evaluated, params(reference), rtol=0, atol=0)  # the recomputation leaves the weights alone
    running = bn.running_mean.clone()
    pswa.eval_model(model)  # until the next load-back, evaluating again does not recompute
    assert torch.equal(bn.running_mean, running)


def test_training_batches_drop_the_last_partial_batch():
    assert [len(b) for b in training_batches(torch.zeros(600, 1))] == [256, 256]
    assert [len(b) for b in training_batches(torch.zeros(100, 1))] == [100]


@pytest.mark.parametrize("name, params", [("pswa", {}), ("pwalks", {"k": 3}), ("pswm", {"beta": 0.5})])
def test_search_with_periodic_averaging(name, params):
    registry = registry_with_test_components()
    spec = load_spec(
        {
            "name": name,
            "model": {"backbone": "small_cnn", "depth": 1, "width": 4},
            "space": {"training": {name: params}},
            "train": {"epochs": 2},
            "search": {"trials": 1, "pruner": "none"},
        },
        registry,
    )
    (trial,) = autonorm.search(spec, registry=registry).trials
    assert trial.state == "complete" and trial.config.components["training"].name == name


def test_after_a_load_back_iternorm_evaluates_with_statistics_of_the_averaged_weights():
    """IterNorm is no ``_BatchNorm``, which ``update_bn`` looks for, and kept the training-time averages
    of the weights before the load-back: now a fresh pass averages its statistics, as BatchNorm's."""
    torch.manual_seed(0)
    model = autonorm.build_model(config(model="small_cnn", norm="iternorm", depth=1, width=4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    pswa = PSWA()
    pswa.setup_data(torch.randn(96, 1, 8, 8), torch.randint(0, 10, (96,)), 2)  # one recomputation batch of 96
    pswa.setup(model, optimizer)
    train(model, optimizer, pswa, 3)
    pswa.end_epoch(model, 0)
    (layer,) = [m for m in model.modules() if type(m).__name__ == "IterNorm"]
    inputs = []
    layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    pswa.eval_model(model)
    assert len(inputs) == 1 and not model.training and layer.momentum == 0.1
    group = inputs[0].transpose(0, 1).reshape(layer.groups, layer.group_size, -1)
    mean = group.mean(-1, keepdim=True)
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_wm, layer.whitening_matrix(group - mean))


def test_the_recomputation_averages_over_the_batches():
    torch.manual_seed(0)
    model = autonorm.build_model(config(model="small_cnn", norm="iternorm", depth=1, width=4))
    (layer,) = [m for m in model.modules() if type(m).__name__ == "IterNorm"]
    inputs = []
    layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    recompute_statistics([torch.randn(32, 1, 8, 8) for _ in range(3)], model)
    means = [x.transpose(0, 1).reshape(layer.groups, layer.group_size, -1).mean(-1, keepdim=True) for x in inputs]
    torch.testing.assert_close(layer.running_mean, torch.stack(means).mean(0))


def test_the_recomputation_gives_batch_kalman_its_combined_statistics():
    """``update_bn`` set momentum None, which batch_kalman's update could not take; and without autograd
    it would find no prior, and average plain batch statistics."""
    torch.manual_seed(0)
    model = autonorm.build_model(config(model="small_cnn", norm="batch_kalman", depth=2, width=4))
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    batches = [torch.randn(32, 1, 8, 8) for _ in range(2)]
    recompute_statistics(batches, model)
    assert all(m.momentum == 0.1 and int(m.num_batches_tracked) == 2 for m in layers)
    kalman = [m.running_mean.clone() for m in layers]
    with torch.no_grad():  # the second layer's prior is what sets its statistics apart from batch ones
        recompute_statistics.__wrapped__(batches, model)
    assert torch.equal(layers[0].running_mean, kalman[0]) and not torch.equal(layers[1].running_mean, kalman[1])
