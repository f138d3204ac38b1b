"""The long-tailed digits variant, the balanced-accuracy objective, and noise images inside the trainer."""

from pathlib import Path

import numpy as np
import pytest
import torch
from autonorm_plugins.digits import digits, long_tail_counts
from autonorm_plugins.noise_images import PureNoiseImages
from torch import nn

from autonorm import ComponentChoice, SpecError, build_model, get_registry, load_spec
from autonorm.data import load_data
from autonorm.trainer import evaluate, fit
from tests.test_build import config
from tests.test_trainer import TRAIN


def test_exponential_profile_on_the_training_split_only():
    counts = long_tail_counts(np.full(10, 100), 10.0)
    np.testing.assert_array_equal(counts, np.floor(100 * 10.0 ** (-np.arange(10) / 9)))
    assert counts[0] == 100 and counts[-1] == 10
    arrays = digits(20.0)
    train = np.bincount(arrays.y)
    assert train[0] / train[-1] >= 20 and np.all(np.diff(train) <= 0)
    val = np.bincount(arrays.y_val)
    assert val.max() - val.min() <= 1  # validation stays balanced
    balanced = load_data(ComponentChoice(name="digits"), 0.2, 0.2, seed=0)
    assert len(arrays.y_test) == len(balanced.y_test) and len(arrays.y_val) == len(balanced.y_val)


@pytest.mark.parametrize("imbalance, ratio", [(10, 113 / 11), (50, 56.5), (100, 113), (113, 113)])
def test_whole_counts_make_the_ratio_113_over_the_floored_tail(imbalance, ratio):
    train = np.bincount(digits(imbalance).y)
    assert train[0] == 113 and train[0] / train[-1] == pytest.approx(ratio)


def test_an_imbalance_the_head_class_cannot_express_is_refused():
    component = get_registry().get("dataset", "digits")
    assert component.values({"imbalance": 113})["imbalance"] == 113
    with pytest.raises(SpecError, match="imbalance: expected at most 113"):
        component.values({"imbalance": 114})


class Constant(nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 3).index_fill_(1, torch.tensor([0]), 1.0)  # always predicts class 0


def test_balanced_accuracy_is_the_mean_recall_over_classes():
    y = torch.tensor([0] * 8 + [1, 2])
    metrics = evaluate(Constant(), torch.zeros(10, 1), y)
    assert metrics["val_accuracy"] == 0.8
    assert abs(metrics["val_balanced_accuracy"] - 1 / 3) < 1e-7


def test_noise_images_train_inside_the_trainer_on_the_long_tail_space():
    spec = load_spec(Path(__file__).parent.parent / "search_spaces" / "long_tail.yaml")
    assert spec.search.objective == "val_balanced_accuracy" and spec.data_params == {"imbalance": 20}
    assert [c.name for c in spec.space["augmentation"]] == ["none", "noise_images"]
    data = load_data(spec.dataset_choice, 0.2, 0.2, seed=0)
    torch.manual_seed(0)
    model = build_model(config(model="small_cnn", depth=2, width=8))
    method = PureNoiseImages(start=0.0)
    masks = []
    original = method.add_noise
    method.add_noise = lambda x, y: masks.append(original(x, y)[1]) or (x, masks[-1])
    train = {**TRAIN, "lr": 0.05, "weight_decay": 0}
    result = fit(model, data, {**train, "schedule": "cosine"}, 1, methods=[method])
    assert len(masks) == len(data.y_train) // 64 and sum(int(m.sum()) for m in masks) > 0
    assert 0 <= result.metrics["val_balanced_accuracy"] <= 1 and method.router.mask is None
