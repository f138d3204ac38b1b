"""A third-party plugin's mistakes at run time are errors that name it: a module that breaks its kind's
promise (a normalization that changes the shape), a factory that returns something else than a module,
a dataset that fails or returns something else than arrays. Before, the first trained to nothing and
the others failed deep inside PyTorch or NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import autonorm
from autonorm import Arrays, Component, Registry, SpecError, TrialConfig, build_model
from autonorm.config import ComponentChoice
from autonorm.data import load_data


class Mean(nn.Module):
    """Averages the last dimension away: shape (N, C, H, 1) for (N, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1, keepdim=True)


class Half(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : x.shape[1] // 2]


def _blobs(n: int = 60) -> Arrays:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    return Arrays(x=rng.normal(y[:, None, None] * 2.0, 1.0, (n, 1, 8)).astype(np.float32), y=y)


class Mistakes:
    @autonorm.hookimpl
    def autonorm_components(self) -> list[Component]:
        return [
            Component(kind="normalization", name="mean_norm", factory=lambda num_channels: Mean()),
            Component(kind="normalization", name="half_norm", factory=lambda num_channels: Half()),
            Component(kind="normalization", name="tensor_norm", factory=lambda num_channels: torch.ones(num_channels)),
            Component(kind="activation", name="half_act", factory=lambda num_channels: Half()),
            Component(kind="pooling", name="no_pool", factory=lambda: nn.Identity()),
            Component(kind="head", name="wide_head", factory=lambda in_features, num_classes: nn.Linear(8, 3)),
            Component(kind="dataset", name="as_dict", factory=lambda: {"x": 1}),
            Component(kind="dataset", name="raising", factory=lambda: 1 / 0),
            Component(kind="dataset", name="as_torch", factory=lambda: _torch(_blobs())),
        ]


def _torch(arrays: Arrays) -> Arrays:
    return Arrays(x=torch.from_numpy(arrays.x), y=torch.from_numpy(arrays.y))


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry()
    registry.load_entry_points()
    registry.register(Mistakes(), "mistakes")
    return registry


def _config(**components: str) -> TrialConfig:
    chosen = {"normalization": "batchnorm", "activation": "relu", "pooling": "avg", "head": "linear", **components}
    return TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=(1, 8, 8),
        num_classes=10,
        model={"name": "small_cnn", "params": {"depth": 1, "width": 8}},
        components={kind: {"name": name} for kind, name in chosen.items()},
        epochs=1,
        train={},
    )


@pytest.mark.parametrize(
    "components, message",
    [
        (
            {"normalization": "mean_norm"},
            "normalization mean_norm (plugin 'mistakes'): its module returned (2, 8, 8, 1) for an input of shape "
            "(2, 8, 8, 8); expected (2, 8, 8, 8)",
        ),
        ({"normalization": "half_norm"}, "normalization half_norm (plugin 'mistakes'): its module returned (2, 4, 8,"),
        ({"activation": "half_act"}, "activation half_act (plugin 'mistakes'): its module returned (2, 4, 8, 8)"),
        ({"pooling": "no_pool"}, "pooling no_pool (plugin 'mistakes'): its module returned (2, 8, 8, 8) for an input"),
        ({"head": "wide_head"}, "head wide_head (plugin 'mistakes'): its module returned (2, 3) for an input of shape"),
    ],
)
def test_a_module_that_breaks_its_kinds_promise_is_an_error_naming_it(registry, components, message):
    model = build_model(_config(**components), registry=registry)
    with pytest.raises(TypeError) as info:
        model(torch.randn(2, 1, 8, 8))
    assert str(info.value).startswith(message), info.value


def test_a_factory_returning_no_module_is_an_error_naming_it(registry):
    with pytest.raises(TypeError, match=r"^normalization tensor_norm \(plugin 'mistakes'\): its factory returned "
                                        r"Tensor, not a torch.nn.Module$"):  # fmt: skip
        build_model(_config(normalization="tensor_norm"), registry=registry)


def test_the_trial_of_a_broken_module_fails_with_its_reason_and_the_search_goes_on(registry):
    results = autonorm.search(
        {
            "name": "broken",
            "model": {"backbone": "small_cnn", "depth": 1, "width": 8},
            "space": {"normalization": ["mean_norm", "batchnorm"]},
            "train": {"epochs": 1},
            "search": {"trials": 2, "sampler": "random"},
        },
        registry=registry,
    )
    broken = [t for t in results.trials if t.reason and "mean_norm" in t.reason]
    assert broken and all(t.state == "failed" for t in broken), results.trials
    assert all(t.state == "complete" for t in results.trials if t not in broken)


@pytest.mark.parametrize(
    "name, message",
    [
        ("as_dict", "data.dataset: dataset as_dict (plugin 'mistakes') returned dict, not autonorm.Arrays"),
        ("raising", "data.dataset: dataset raising (plugin 'mistakes') failed: ZeroDivisionError: division by zero"),
    ],
)
def test_a_dataset_that_fails_is_an_error_naming_it(registry, name, message):
    with pytest.raises(SpecError) as info:
        load_data(ComponentChoice(name=name), 0.2, 0.2, 0, registry)
    assert str(info.value) == message


def test_a_dataset_may_return_torch_tensors(registry):
    data = load_data(ComponentChoice(name="as_torch"), 0.2, 0.2, 0, registry)
    assert data.num_classes == 3 and data.x_train.dtype == torch.float32 and data.input_shape == (1, 8)


def test_the_checks_cost_one_look_at_the_first_forward(registry):
    """After the first forward no check hook is left on the model's modules."""
    model = build_model(_config(), registry=registry)
    model(torch.randn(2, 1, 8, 8))
    assert not any(m._forward_hooks for m in model.modules())


def test_a_training_method_hook_with_other_parameters_is_refused_where_it_is_defined():
    with pytest.raises(TypeError, match=r"^WrongEnd.end_epoch\(self, model\): the trainer calls end_epoch\(self, "):

        class WrongEnd(autonorm.TrainingMethod):
            def end_epoch(self, model):
                pass


def test_a_method_named_almost_like_a_hook_is_refused_rather_than_never_called():
    with pytest.raises(TypeError, match="Typo.after_backwards: not a TrainingMethod hook.*mean 'after_backward'"):

        class Typo(autonorm.TrainingMethod):
            def after_backwards(self, model):
                pass


def test_hooks_taking_what_the_trainer_passes_are_accepted():
    class Fine(autonorm.TrainingMethod):
        def end_epoch(self, model, epoch):
            pass

        def loss(self, *args):
            return None

        def helper(self):  # any other name
            pass

    fine = Fine()
    assert isinstance(fine, autonorm.TrainingMethod) and fine.loss(None, None, None) is None
