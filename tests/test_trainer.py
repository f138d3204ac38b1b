"""The training loop: it learns, reports every epoch, is reproducible, and stops a diverging run."""

import contextlib

import numpy as np
import pytest
import torch

from autonorm import ComponentChoice, TrainingMethod, TrialConfig, TrialFailed, build_model, trainer
from autonorm.data import _load, load_data
from autonorm.trainer import fit, latency_ms, make_optimizer
from tests.test_build import config

TRAIN = {
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.1,
    "weight_decay": 5e-4,
    "weight_decay_on": "weights",
    "momentum": 0.9,
    "schedule": "cosine",
}


def test_digits_split_is_fixed_and_standardized(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.x_train) + len(digits.x_val) + len(digits.x_test) == 1797
    assert abs(digits.x_train.mean().item()) < 1e-4 and abs(digits.x_train.std().item() - 1) < 1e-3
    _load.cache_clear()  # split again rather than answer from the cache
    again = load_data(ComponentChoice(name="digits"), 0.2, 0.2, seed=0)
    assert torch.equal(again.y_val, digits.y_val) and torch.equal(again.x_train, digits.x_train)


def test_features_are_standardized_per_channel(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(5, 2, (100, 1, 16)), rng.normal(-3, 0.1, (100, 1, 16))], axis=1)
    np.savez(tmp_path / "two.npz", x=x.astype(np.float32), y=np.arange(100) % 2)
    data = load_data(ComponentChoice(name="npz", params={"path": str(tmp_path / "two.npz")}), 0.2, 0.2)
    torch.testing.assert_close(data.x_train.mean(dim=(0, 2)), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(data.x_train.std(dim=(0, 2), correction=0), torch.ones(2), atol=1e-4, rtol=0)


def test_fit_learns_reports_each_epoch_and_records_costs(digits):
    torch.manual_seed(0)
    model = build_model(config(model="small_cnn", depth=2, width=16))
    reports = []
    result = fit(model, digits, TRAIN, 3, report=lambda e, m: reports.append((e, m)))
    assert [e for e, _ in reports] == [0, 1, 2]
    assert result.metrics["val_accuracy"] > 0.8
    assert result.metrics["params"] == sum(p.numel() for p in model.parameters())
    assert result.metrics["train_seconds"] > 0 and result.metrics["latency_ms"] > 0


class _NoSingleSample(torch.nn.Module):
    """Runs on batches only, like a group normalization with one value per group."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x):
        if len(x) == 1:
            raise RuntimeError("Expected more than 1 value per channel")
        return self.linear(x.flatten(1))


def test_a_model_that_cannot_run_one_sample_keeps_its_result_without_a_latency(digits):
    with pytest.warns(UserWarning, match="latency not measured: the model cannot run on a single sample"):
        result = fit(_NoSingleSample(), digits, TRAIN, 1)
    assert "latency_ms" not in result.metrics and result.metrics["val_accuracy"] > 0.5


def test_fit_is_reproducible(digits):
    def run():
        torch.manual_seed(3)
        return fit(build_model(config(model="small_cnn", depth=2, width=8)), digits, TRAIN, 1).metrics["val_loss"]

    assert run() == run()


@pytest.mark.parametrize("decay_on", ["weights", "all"])
def test_weight_decay_shrinks_conv_and_linear_weights_and_by_default_nothing_else(decay_on):
    model = build_model(config(norm="frn", depth=8, width=8))
    assert any(name.endswith("tau") for name, _ in model.named_parameters())
    train = {**TRAIN, "momentum": 0.0, "weight_decay": 0.1, "weight_decay_on": decay_on}
    optimizer = make_optimizer(model, train)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
            p.grad = torch.zeros_like(p)
    optimizer.step()  # a zero gradient: only weight decay moves a parameter, by lr * weight_decay
    for name, p in model.named_parameters():
        decayed = decay_on == "all" or p.ndim >= 2  # norm scales and shifts, biases, FRN's tau: 1-D
        assert torch.all(p == (0.99 if decayed else 1.0)), name


def test_a_configuration_from_before_weight_decay_on_keeps_decaying_every_parameter():
    old = config().model_dump(mode="json")
    old["train"] = {k: v for k, v in TRAIN.items() if k != "weight_decay_on"}
    assert TrialConfig.load(old).train["weight_decay_on"] == "all"
    assert TrialConfig.load({**old, "train": TRAIN}).train["weight_decay_on"] == "weights"


def test_non_finite_loss_is_reported_as_diverged(digits):
    from tests.helpers import registry_with_test_components

    model = build_model(
        config(model="small_cnn", norm="explode", depth=1, width=4), registry=registry_with_test_components()
    )
    with pytest.raises(TrialFailed, match="diverged: training loss became nan in epoch 1"):
        fit(model, digits, TRAIN, 2)


def test_train_seconds_leave_out_evaluation_and_reporting(digits, monkeypatch):
    """On a clock that only the report callback (a storage write, a pruner) advances, no training time
    passes: it used to count every epoch's evaluation and report."""
    clock = [0.0]
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock[0])

    def report(epoch, metrics):
        clock[0] += 100.0

    model = build_model(config(model="small_cnn", depth=1, width=4))
    assert fit(model, digits, TRAIN, 2, report).metrics["train_seconds"] == 0.0


def test_latency_is_measured_in_the_evaluation_precision():
    """Under the autocast the evaluation uses (bf16 with amp), each timed pass included."""
    entered = []

    @contextlib.contextmanager
    def autocast():
        entered.append(1)
        yield

    latency_ms(torch.nn.Linear(4, 2), torch.zeros(1, 4), autocast)
    assert len(entered) == 23  # 3 warm-up passes and 20 timed ones


class Recorder(TrainingMethod):
    """Counts the hook calls and replaces the loss by a constant one."""

    def __init__(self):
        self.calls = {"setup": 0, "batch": 0, "backward": 0, "step": 0, "epochs": []}
        self.gradient_seen = False

    def setup(self, model, optimizer):
        self.calls["setup"] += 1

    def transform_batch(self, x, y):
        self.calls["batch"] += 1
        return x[:-1], y[:-1]

    def loss(self, model, x, y):
        assert len(x) == 63  # sees the transformed batch
        return model(x).sum() * 0 + 5.0

    def after_backward(self, model):
        self.calls["backward"] += 1
        assert self.calls["backward"] == self.calls["step"] + 1  # before this step's optimizer step
        self.gradient_seen |= all(p.grad is not None for p in model.parameters())

    def after_step(self, model):
        self.calls["step"] += 1

    def end_epoch(self, model, epoch):
        self.calls["epochs"].append(epoch)


def test_training_methods_are_called_at_their_points(digits):
    recorder = Recorder()
    model = build_model(config(model="small_cnn", depth=1, width=4))
    result = fit(model, digits, TRAIN, 2, methods=[recorder])
    steps = 2 * (len(digits.x_train) // 64)
    assert recorder.calls == {"setup": 1, "batch": steps, "backward": steps, "step": steps, "epochs": [0, 1]}
    assert recorder.gradient_seen
    assert result.metrics["train_loss"] == 5.0
