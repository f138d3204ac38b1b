"""The training loop's definitions: the learning-rate schedule, the optimizers, what is measured and how,
and what ``autonorm train`` trains on, saves and reproduces."""

import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autonorm
import autonorm.final
import autonorm.trainer
from autonorm import TrainingMethod
from autonorm.config import ComponentChoice
from autonorm.data import Data, load_data
from autonorm.trainer import evaluate, fit, latency_ms, make_optimizer
from tests.test_build import config
from tests.test_trainer import TRAIN


def tiny_data(n_train=40, n_val=10, features=4, classes=3) -> Data:
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(n_train, features, generator=g), torch.randn(n_val, features, generator=g)
    y, yv = torch.arange(n_train) % classes, torch.arange(n_val) % classes
    return Data(x_train=x, y_train=y, x_val=xv, y_val=yv, x_test=xv, y_test=yv, num_classes=classes)


def tiny_model(features=4, classes=3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, classes))


# ---------------------------------------------------------------- learning-rate schedule


class LrRecorder(TrainingMethod):
    """Records every group's lr at each optimizer step and right after it; may add a parameter group."""

    def __init__(self, extra_lr=None):
        self.extra_lr = extra_lr
        self.used, self.after = [], []

    def setup(self, model, optimizer):
        self.optimizer = optimizer
        if self.extra_lr is not None:
            extra = nn.Parameter(torch.zeros(3))
            optimizer.add_param_group({"params": [extra], "lr": self.extra_lr, "weight_decay": 0.0})

    def after_backward(self, model):  # before this step's optimizer step: the lr the step uses
        self.used.append([g["lr"] for g in self.optimizer.param_groups])

    def after_step(self, model):  # after the step and the scheduler's step
        self.after.append([g["lr"] for g in self.optimizer.param_groups])


def cosine(base, t, total):
    return base * (1 + math.cos(math.pi * t / total)) / 2


@pytest.mark.parametrize("extra_lr", [None, 0.05])
def test_cosine_schedule_anneals_every_group_to_zero_over_all_steps(extra_lr):
    """lr_t = lr (1 + cos(pi t / T)) / 2 with T = steps per epoch * epochs (the last partial batch is
    dropped); a group a training method adds in ``setup`` follows the schedule from its own lr."""
    data, epochs, batch_size = tiny_data(n_train=43), 3, 8
    total = (43 // batch_size) * epochs  # 5 full batches per epoch
    recorder = LrRecorder(extra_lr)
    fit(tiny_model(), data, {**TRAIN, "batch_size": batch_size}, epochs, methods=[recorder])
    groups = len(recorder.optimizer.param_groups)
    assert groups == (3 if extra_lr else 2)  # decayed weights, undecayed biases, the method's group
    bases = [TRAIN["lr"], TRAIN["lr"], extra_lr][:groups]
    assert len(recorder.used) == len(recorder.after) == total
    for t in range(total):
        for g, base in enumerate(bases):
            assert recorder.used[t][g] == pytest.approx(cosine(base, t, total), abs=1e-9), (t, g)
            assert recorder.after[t][g] == pytest.approx(cosine(base, t + 1, total), abs=1e-9), (t, g)
    assert recorder.after[-1] == pytest.approx([0.0] * groups, abs=1e-12)  # annealed to 0 by the last step


def test_constant_schedule_keeps_the_lr():
    recorder = LrRecorder(0.05)
    fit(tiny_model(), tiny_data(), {**TRAIN, "batch_size": 8, "schedule": "constant"}, 2, methods=[recorder])
    assert recorder.after[-1] == [TRAIN["lr"], TRAIN["lr"], 0.05]


# ---------------------------------------------------------------- optimizers


def one_step(train, grad):
    """One optimizer step of ``make_optimizer`` on a single weight matrix of ones with a given gradient."""
    model = nn.Linear(2, 2, bias=False)
    optimizer = make_optimizer(model, {**TRAIN, **train})
    with torch.no_grad():
        model.weight.fill_(1.0)
    model.weight.grad = torch.full_like(model.weight, grad)
    optimizer.step()
    return optimizer, model.weight.detach()


def test_sgd_uses_nesterov_momentum_when_momentum_is_positive():
    """Nesterov's first step moves by lr (1 + m) g (the gradient plus the momentum buffer m g);
    heavy-ball momentum would move by lr g."""
    optimizer, w = one_step({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}, grad=1.0)
    assert type(optimizer) is torch.optim.SGD and all(g["nesterov"] for g in optimizer.param_groups)
    torch.testing.assert_close(w, torch.full((2, 2), 1 - 0.1 * 1.9), rtol=0, atol=1e-7)
    optimizer, w = one_step({"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}, grad=1.0)
    assert not any(g["nesterov"] for g in optimizer.param_groups)  # plain SGD without momentum
    torch.testing.assert_close(w, torch.full((2, 2), 1 - 0.1), rtol=0, atol=1e-7)


def test_adam_couples_weight_decay_to_the_gradient_and_adamw_decouples_it():
    """With a zero gradient, Adam's L2 term wd * w becomes the gradient, whose first normalized step is
    lr (w: 1 -> 1 - lr); AdamW shrinks the weight by lr * wd outside the adaptive step (1 -> 1 - lr wd)."""
    lr, wd = 0.01, 0.1
    _, w = one_step({"optimizer": "adam", "lr": lr, "weight_decay": wd}, grad=0.0)
    torch.testing.assert_close(w, torch.full((2, 2), 1 - lr), rtol=0, atol=1e-6)
    _, w = one_step({"optimizer": "adamw", "lr": lr, "weight_decay": wd}, grad=0.0)
    torch.testing.assert_close(w, torch.full((2, 2), 1 - lr * wd), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- evaluation


class GradModeRecorder(nn.Module):
    """A linear model that records, for every forward pass, (training mode, gradients enabled)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.linear(x)


def test_evaluation_and_latency_build_no_autograd_graph():
    model = GradModeRecorder()
    fit(model, tiny_data(), {**TRAIN, "batch_size": 8}, 2)
    assert any(mode == (True, True) for mode in model.calls)  # training passes record gradients
    eval_calls = [grad for training, grad in model.calls if not training]
    assert eval_calls and not any(eval_calls)  # every evaluation and latency pass runs under no_grad
    model.calls.clear()
    with torch.enable_grad():
        evaluate(model, torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), batch_size=4)
    assert model.calls == [(False, False), (False, False)]  # two eval batches, no graph recorded


def test_val_loss_is_the_per_sample_mean_across_uneven_eval_batches():
    """6 samples in batches of 4 and 2: the mean over samples, not the mean of the two batch means."""
    logits = torch.tensor([[4.0, 0, 0], [0, 4, 0], [0, 0, 4], [4, 0, 0], [0, 4, 0], [0, 0, 4]])
    y = torch.tensor([0, 1, 2, 0, 2, 0])  # the first batch is right and confident, the last two samples wrong
    per_sample = F.cross_entropy(logits, y, reduction="none")
    batch_means = (per_sample[:4].mean() + per_sample[4:].mean()).item() / 2
    assert abs(per_sample.mean().item() - batch_means) > 0.5  # the two definitions differ here
    metrics = evaluate(nn.Identity(), logits, y, batch_size=4)
    assert metrics["val_loss"] == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert metrics["val_accuracy"] == pytest.approx(4 / 6)


# ---------------------------------------------------------------- latency


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class SlowFirstCalls(nn.Module):
    """Its first 3 calls take 100 ms each (as a first call that allocates or compiles), later ones 1 ms."""

    def __init__(self, clock):
        super().__init__()
        self.clock, self.calls = clock, 0

    def forward(self, x):
        self.calls += 1
        self.clock.now += 0.1 if self.calls <= 3 else 0.001
        return x


def test_latency_is_the_median_after_the_warm_up_runs(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(autonorm.trainer, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    model = SlowFirstCalls(clock)
    # 3 timed runs after the warm-up: counting the 3 slow warm-up runs would put a slow one at the median
    assert latency_ms(model, torch.zeros(1, 4), repeats=3) == pytest.approx(1.0, rel=1e-6)
    assert model.calls == 6
    assert latency_ms(model, torch.zeros(1, 4)) == pytest.approx(1.0, rel=1e-6)  # the default repeats


# ---------------------------------------------------------------- training loss


class ScriptedLoss(TrainingMethod):
    """The loss of the k-th batch of an epoch is k (1, 2, ...), with zero gradients."""

    def __init__(self, steps):
        self.steps, self.count = steps, 0

    def loss(self, model, x, y):
        self.count += 1
        return model(x).sum() * 0 + float((self.count - 1) % self.steps + 1)


def test_train_loss_is_the_mean_of_the_epochs_batch_losses():
    steps = 40 // 8
    result = fit(tiny_model(), tiny_data(), {**TRAIN, "batch_size": 8}, 2, methods=[ScriptedLoss(steps)])
    mean = sum(range(1, steps + 1)) / steps  # 3.0, where the last batch alone gives 5.0
    assert [m["train_loss"] for m in result.history] == [pytest.approx(mean), pytest.approx(mean)]
    assert result.metrics["train_loss"] == pytest.approx(mean)


# ---------------------------------------------------------------- autonorm train


def final_config(**components):
    c = config(model="small_cnn", depth=1, width=4)
    return c.model_copy(
        update={
            "train": {**TRAIN, "batch_size": 128},
            "components": {**c.components, **{k: ComponentChoice(**v) for k, v in components.items()}},
        }
    )


def test_train_fits_on_train_and_val_and_saves_the_evaluated_model(monkeypatch, tmp_path):
    """EMAN evaluates its teacher, not the student it trains: the teacher is what is scored and saved."""
    c = final_config(training={"name": "eman", "params": {"momentum": 0.9}})
    split = load_data(c.dataset, c.val_fraction, c.test_fraction, c.data_seed)
    seen = {}

    def spy(model, data, train, epochs, methods=(), **kwargs):
        result = fit(model, data, train, epochs, methods=methods, **kwargs)
        evaluated = model
        for method in methods:
            evaluated = method.eval_model(evaluated)
        seen.update(data=data, student=_state(model), evaluated=_state(evaluated), methods=methods)
        return result

    monkeypatch.setattr(autonorm.final, "fit", spy)
    trained = autonorm.train(c, tmp_path / "out")

    data = seen["data"]
    assert torch.equal(data.x_train, torch.cat([split.x_train, split.x_val]))
    assert torch.equal(data.y_train, torch.cat([split.y_train, split.y_val]))
    assert torch.equal(data.x_val, split.x_test) and torch.equal(data.y_val, split.y_test)

    assert [type(m).__name__ for m in seen["methods"]] == ["EMAN"]
    saved = torch.load(trained.weights, weights_only=True)
    assert saved.keys() == seen["evaluated"].keys()
    assert all(torch.equal(saved[k], v) for k, v in seen["evaluated"].items())
    assert not all(torch.equal(saved[k], v) for k, v in seen["student"].items())  # teacher != student here


def test_train_is_reproducible_whatever_the_global_seed(tmp_path):
    c = final_config()
    torch.manual_seed(1)
    first = autonorm.train(c, tmp_path / "a")
    torch.manual_seed(2)
    second = autonorm.train(c, tmp_path / "b")
    a, b = (torch.load(t.weights, weights_only=True) for t in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.metrics["test_loss"] == second.metrics["test_loss"]


def _state(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
