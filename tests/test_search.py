"""Searches through the Python API: results, resume, failures recorded while the search goes on."""

import math

import pytest
import torch

import autonorm
from autonorm import load_spec
from tests.conftest import TINY_SPACE, write
from tests.helpers import registry_with_test_components


def test_search_then_load_best_and_rebuild(tmp_path):
    results = autonorm.search(write(tmp_path / "tiny.yaml", TINY_SPACE))
    assert results.count("complete") == 3
    loaded = autonorm.load_study("tiny")
    assert [t.value for t in loaded.trials] == [t.value for t in results.trials]
    best = loaded.best
    assert best.value == max(t.value for t in loaded.trials)
    assert best.metrics["params"] > 0 and "latency_ms" in best.metrics
    model = autonorm.build_model(best.config)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_rerun_resumes_and_adds_only_missing_trials(tmp_path):
    path = write(tmp_path / "tiny.yaml", TINY_SPACE)
    first = autonorm.search(path, trials=2)
    assert len(first.trials) == 2
    second = autonorm.search(path, trials=5)
    assert len(second.trials) == 5
    assert [t.params for t in second.trials[:2]] == [t.params for t in first.trials]
    again = autonorm.search(path, trials=5)
    assert len(again.trials) == 5


def test_diverging_and_raising_trials_are_recorded_and_the_search_finishes(tmp_path):
    registry = registry_with_test_components()
    spec = load_spec(
        {
            "name": "failing",
            "model": {"backbone": "small_cnn", "depth": 1, "width": 4},
            "space": {"normalization": ["explode", "batchnorm"], "activation": ["raises", "relu"]},
            "train": {"epochs": 1},
            "search": {"trials": 8, "sampler": "random", "pruner": "none", "seed": 1},
        },
        registry,
    )
    results = autonorm.search(spec, registry=registry)
    assert len(results.trials) == 8
    by_reason = {}
    for t in results.trials:
        comps = t.config.components
        if comps["activation"].name == "raises":
            assert t.state == "failed" and t.reason == "RuntimeError: boom inside a trial"
        elif comps["normalization"].name == "explode":
            assert t.state == "failed" and t.reason.startswith("diverged")
        else:
            assert t.state == "complete" and math.isfinite(t.value)
        by_reason[t.state] = by_reason.get(t.state, 0) + 1
    assert by_reason.get("complete") and by_reason.get("failed")
    study = __import__("optuna").load_study(study_name="failing", storage="sqlite:///failing.db")
    raised = [t for t in study.trials if t.user_attrs.get("fail_reason", "").startswith("RuntimeError")]
    assert raised and "Traceback" in raised[0].user_attrs["traceback"]
    # failed trials count as done: a rerun adds nothing
    assert len(autonorm.search(spec, registry=registry).trials) == 8


def test_interrupted_trial_is_recorded_and_rerun_on_resume():
    registry = registry_with_test_components()
    space = {
        "name": "ctrl_c",
        "model": {"backbone": "small_cnn", "depth": 1, "width": 4},
        "space": {"activation": ["interrupt"]},
        "train": {"epochs": 1},
        "search": {"trials": 2, "pruner": "none"},
    }
    with pytest.raises(KeyboardInterrupt):
        autonorm.search(load_spec(space, registry), registry=registry)
    (trial,) = autonorm.load_study("ctrl_c").trials
    assert trial.state == "failed" and trial.reason == "interrupted" and not trial.counts_as_done
    space["space"]["activation"] = ["relu"]
    resumed = autonorm.search(load_spec(space, registry), registry=registry)
    assert [t.state for t in resumed.trials] == ["failed", "complete", "complete"]
