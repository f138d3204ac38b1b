"""Define-by-run sampling: a component's hyperparameters exist only in trials that chose it."""

import optuna
import pytest

from autonorm import SpecError, load_spec
from autonorm.errors import TrialFailed
from autonorm.space import sample_config
from tests.helpers import registry_with_test_components


def sample_many(spec, n=30):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(n):
        trial = study.ask()
        try:
            outcome = sample_config(trial, spec, (1, 8, 8), 10)
        except TrialFailed as exc:
            outcome = exc
        configs.append((trial.params, outcome))
        study.tell(trial, 0.0)
    return configs


def test_own_parameters_are_sampled_only_when_chosen():
    spec = load_spec({"space": {"normalization": {"batchnorm": {}, "groupnorm": {"groups": [2, 4, 8]}}}})
    seen = set()
    for params, config in sample_many(spec):
        norm = config.components["normalization"]
        seen.add(norm.name)
        if norm.name == "groupnorm":
            # three or more numbers are an ordered choice: the parameter is the position
            assert (2, 4, 8)[params["normalization.groupnorm.groups"]] == norm.params["groups"]
        else:
            assert not any(k.startswith("normalization.groupnorm") for k in params)
            assert norm.params == {"momentum": 0.1}  # fixed default, never a search parameter
    assert seen == {"batchnorm", "groupnorm"}


def test_a_kind_excluded_by_a_choice_is_not_sampled():
    registry = registry_with_test_components()
    spec = load_spec({"space": {"normalization": ["batchnorm", "shift_tanh"], "activation": ["relu", "elu"]}}, registry)
    outcomes = {config.components["normalization"].name: (params, config) for params, config in sample_many(spec)}
    params, config = outcomes["shift_tanh"]
    assert "activation" not in config.components and "activation" not in params
    assert "activation" in outcomes["batchnorm"][1].components


def test_incompatible_pair_fails_the_trial_with_its_reason():
    registry = registry_with_test_components()
    spec = load_spec({"space": {"normalization": ["no_elu"], "activation": ["relu", "elu"]}}, registry)
    results = [c for _, c in sample_many(spec)]
    failures = [r for r in results if isinstance(r, TrialFailed)]
    assert failures and all("no_elu excludes activation elu" in str(f) for f in failures)
    assert any(not isinstance(r, TrialFailed) for r in results)


def test_impossible_combinations_are_errors_when_the_file_is_read():
    registry = registry_with_test_components()
    with pytest.raises(SpecError, match="no_elu cannot be combined with activation 'elu', the only activation offered"):
        load_spec({"space": {"normalization": ["no_elu"], "activation": ["elu"]}}, registry)
    with pytest.raises(SpecError, match="needs_resnet requires model 'resnet'"):
        load_spec({"model": {"backbone": "small_cnn"}, "space": {"pooling": ["needs_resnet"]}}, registry)
