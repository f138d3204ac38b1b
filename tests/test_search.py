"""Searches through the Python API: results, resume, failures recorded while the search goes on."""

import io
import logging
import math

import optuna
import pytest
import torch
from rich.console import Console

import autonorm
from autonorm import display, load_spec
from autonorm.backends.optuna import make_pruner, open_search_study
from autonorm.data import load_data
from autonorm.objective import make_objective
from autonorm.results import NOT_NEEDED, is_run_again, place
from autonorm.space import sample_config
from tests.conftest import TINY_SPACE, write
from tests.helpers import registry_with_test_components


def search_small_cnn(name: str, space: dict, train: dict, **search) -> list:
    """Search a one-block small_cnn over ``space`` with the test components; the trials."""
    registry = registry_with_test_components()
    raw = {
        "name": name,
        "model": {"backbone": "small_cnn", "depth": 1, "width": 8},
        "space": space,
        "train": train,
        "search": {"pruner": "none", "seed": 0, **search},
    }
    return autonorm.search(load_spec(raw, registry), registry=registry)


def test_search_then_load_best_and_rebuild(tmp_path):
    results = autonorm.search(write(tmp_path / "tiny.yaml", TINY_SPACE))
    assert results.count("complete") == 3
    loaded = autonorm.load_study("tiny")
    assert [t.value for t in loaded.trials] == [t.value for t in results.trials]
    by_file = autonorm.load_study(tmp_path / "tiny.yaml")  # as the commands take it: the space file's study
    assert [t.value for t in by_file.trials] == [t.value for t in results.trials]
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


def test_a_resumed_search_does_not_propose_its_first_sessions_configurations_again(tmp_path):
    """Each trial's sampler is seeded by the search's seed and the trial's place: seeded once per session
    with the search's seed, a random sampler (or TPE's start-up) proposed the same lr again."""
    path = write(tmp_path / "tiny.yaml", TINY_SPACE.replace("epochs: 2", "epochs: 1") + "  sampler: random\n")
    autonorm.search(path, trials=2)
    resumed = autonorm.search(path, trials=4)
    lrs = [t.params["train.lr"] for t in resumed.trials]
    assert len(set(lrs)) == 4 and all(t.repeat_of is None for t in resumed.trials)
    path.with_suffix(".db").unlink()
    fresh = autonorm.search(path, trials=4)  # one session runs the same trials as two
    assert [t.params["train.lr"] for t in fresh.trials] == lrs


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # asked, not run by Study.optimize
def test_workers_sharing_a_study_propose_apart(tmp_path):
    spec = load_spec(write(tmp_path / "tiny.yaml", TINY_SPACE + "  sampler: random\n"))
    one, other = open_search_study(spec, worker=True), open_search_study(spec, worker=True)
    first, second = one.ask(), other.ask()  # running at once, with their own samplers
    assert first.number != second.number
    assert first.suggest_float("lr", 1e-3, 1.0) != second.suggest_float("lr", 1e-3, 1.0)


def straight_and_resumed(tmp_path, text: str, trials: int, interrupt_from: int) -> tuple:
    """The results of the space ``text`` searched straight through, and searched again (another study)
    with Ctrl-C in the first trial from ``interrupt_from`` on, then resumed."""
    straight = autonorm.search(write(tmp_path / "straight.yaml", text.replace("tiny", "straight")), trials=trials)
    registry = registry_with_test_components(interrupt_from=interrupt_from)
    spec = load_spec(write(tmp_path / "resumed.yaml", text.replace("tiny", "resumed")), registry)
    with pytest.raises(KeyboardInterrupt):
        autonorm.search(spec, registry=registry, trials=trials)
    return straight, autonorm.search(spec, registry=registry, trials=trials)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_search_interrupted_and_resumed_runs_the_trials_it_would_have_run_uninterrupted(tmp_path, sampler):
    """The interrupted trial's configuration runs again, in its place, and every trial after it has the
    sampler's seed and training seed it would have had: the same configurations, the same accuracies."""
    text = TINY_SPACE.replace("pruner: none", "pruner: asha").replace("epochs: 2", "epochs: 3")
    straight, resumed = straight_and_resumed(tmp_path, text + f"  sampler: {sampler}\n", 7, interrupt_from=3)

    (interrupted,) = [t for t in resumed.trials if not t.counts_as_done]
    assert interrupted.reason == "interrupted" and interrupted.number >= 3
    kept = [t for t in resumed.trials if t.counts_as_done]
    assert [(t.state, t.params, t.value, t.config.seed) for t in kept] == [
        (t.state, t.params, t.value, t.config.seed) for t in straight.trials
    ]

    def rungs(name: str) -> list[float]:  # what ASHA compares at its rungs: the rerun's, not the interrupted one's
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{name}.db")
        seen = [t for t in study.trials if not is_run_again(t)]
        return sorted(v for t in seen for k, v in t.system_attrs.items() if k.startswith("completed_rung"))

    assert rungs("resumed") == rungs("straight")


def test_diverging_and_raising_trials_are_recorded_and_the_search_finishes(tmp_path):
    registry = registry_with_test_components()
    spec = load_spec(
        {
            "name": "failing",
            "model": {"backbone": "small_cnn", "depth": 1, "width": 8},
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
        elif comps["normalization"].name == "explode":  # pruned with its reason, so the sampler learns
            assert t.state == "pruned" and t.rejected and t.reason.startswith("diverged")
        else:
            assert t.state == "complete" and math.isfinite(t.value)
        by_reason[t.state] = by_reason.get(t.state, 0) + 1
    assert by_reason.get("complete") and by_reason.get("failed") and by_reason.get("pruned")
    assert "diverged" in results.counts() and not any(t.rejected for t in results.leaderboard())
    study = __import__("optuna").load_study(study_name="failing", storage="sqlite:///failing.db")
    raised = [t for t in study.trials if t.user_attrs.get("fail_reason", "").startswith("RuntimeError")]
    assert raised and "Traceback" in raised[0].user_attrs["traceback"]
    # failed trials count as done: a rerun adds nothing
    assert len(autonorm.search(spec, registry=registry).trials) == 8


def test_a_model_whose_evaluation_goes_non_finite_is_diverged_with_the_epochs_before(tmp_path):
    """Training stays finite but the evaluated model gives NaN in epoch 2: it used to be recorded as a
    killed process (and trained again on every resume), or as a complete trial at chance accuracy."""
    registry = registry_with_test_components()
    spec = load_spec(
        {
            "name": "naneval",
            "model": {"backbone": "small_cnn", "depth": 1, "width": 4},
            "space": {"normalization": ["nan_in_eval"]},
            "train": {"epochs": 3},
            "search": {"trials": 1, "pruner": "none", "objective": "val_loss"},
        },
        registry,
    )
    (trial,) = autonorm.search(spec, registry=registry).trials
    assert trial.state == "pruned" and trial.rejected and trial.counts_as_done
    assert trial.reason == "diverged: validation loss became nan in epoch 2"
    (frozen,) = __import__("optuna").load_study(study_name="naneval", storage="sqlite:///naneval.db").trials
    history = frozen.user_attrs["history"]  # the epoch before, as a pruned trial keeps its epochs
    assert len(history) == 1 and math.isfinite(history[0]["val_loss"])


def test_an_incompatible_combination_is_recorded_as_pruned_with_its_reason(tmp_path):
    space = {"normalization": ["no_elu", "batchnorm"], "activation": ["relu", "elu"]}
    results = search_small_cnn("incompatible", space, {"epochs": 1}, trials=10, sampler="random")
    clash = [t for t in results.trials if t.params == {"normalization": "no_elu", "activation": "elu"}]
    assert clash and all(t.state == "pruned" and t.rejected for t in clash)
    assert all(t.reason == "incompatible: normalization no_elu excludes activation elu" for t in clash)
    chosen = "small_cnn | no_elu | elu | avg | strided_conv | linear | kaiming | none | none"  # as configurations
    assert all(t.config is None and t.summary == chosen for t in clash)
    reason = "incompatible: normalization no_elu excludes activation elu"
    assert len(clash) > 1 and results.failure_groups() == [([t.number for t in clash], chosen, reason)]  # one row
    assert "incompatible" in results.counts() and all(t.state == "complete" for t in results.trials if t not in clash)


def test_values_that_cannot_build_the_model_are_recorded_as_pruned_with_the_reason():
    """Group counts that do not divide a layer's channels: the sampler should learn to avoid them."""
    space = {"normalization": {"groupnorm": {"groups": [3, 4]}}}
    results = search_small_cnn("unbuildable", space, {"epochs": 1}, trials=6, sampler="random")
    three = [t for t in results.trials if t.params["normalization.groupnorm.groups"] == 3]
    assert three and all(t.state == "pruned" for t in three)
    assert {t.reason for t in three} == {"incompatible: groupnorm: 8 channels cannot be split into 3 groups"}
    assert all(t.state == "complete" for t in results.trials if t not in three)


def test_tpe_stops_proposing_a_normalization_that_diverges(tmp_path):
    """Optuna's TPE leaves failed trials out of its model, so a choice that always diverges looks
    unexplored and keeps being proposed (recorded as failed: 12 to 19 of the 22 trials after the
    start-up ones, seeds 0 to 3); recorded as pruned, it counts against that choice."""
    space = {"normalization": ["explode", "batchnorm", "groupnorm", "layernorm"]}
    train = {"epochs": 1, "lr": {"loguniform": [0.01, 0.1]}}
    trials = search_small_cnn("avoid_divergence", space, train, trials=30, sampler="tpe").trials
    after_startup = [t for t in trials[8:] if t.repeat_of is None]
    assert len(after_startup) >= 15
    assert sum(t.config.components["normalization"].name == "explode" for t in after_startup) <= 6


def test_asha_decides_after_a_third_of_the_epochs_and_never_after_the_last(tmp_path):
    """Steps are epochs done (as Ray's schedulers count): with 8 epochs the first rung is after
    epoch 3 (the next, 9, is past the end), and a trial that trained all 8 completes."""
    space = {"normalization": ["batchnorm", "layernorm"], "pooling": ["avg", "max"]}
    train = {"epochs": 8, "lr": {"loguniform": [0.001, 0.3]}}
    search_small_cnn("rungs", space, train, trials=12, sampler="random", pruner="asha")
    trials = __import__("optuna").load_study(study_name="rungs", storage="sqlite:///rungs.db").trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(list(t.intermediate_values) == [1, 2, 3] for t in pruned)
    assert all(list(t.intermediate_values) == list(range(1, 9)) for t in trials if t.state.name == "COMPLETE")


def test_interrupted_trial_is_recorded_and_rerun_on_resume():
    registry = registry_with_test_components()
    space = {
        "name": "ctrl_c",
        "model": {"backbone": "small_cnn", "depth": 1, "width": 8},
        "space": {"activation": ["interrupt"]},
        "train": {"epochs": 1},
        "search": {"trials": 2, "pruner": "none"},
    }
    with pytest.raises(KeyboardInterrupt):
        autonorm.search(load_spec(space, registry), registry=registry)
    trial, retry = autonorm.load_study("ctrl_c").trials  # its parameters wait to be run again
    assert trial.state == "failed" and trial.reason == "interrupted" and not trial.counts_as_done
    assert retry.state == "waiting" and retry.reason == "queued to run trial 0's configuration again"
    space["space"]["activation"] = ["relu"]
    resumed = autonorm.search(load_spec(space, registry), registry=registry)
    assert [t.state for t in resumed.trials] == ["failed", "complete", "complete"]


def test_a_repeated_configuration_reuses_the_earlier_outcome_unless_asked_to_retrain(tmp_path):
    def space(name: str, retrain: bool) -> dict:
        return {
            "name": name,
            "model": {"backbone": "small_cnn", "depth": 1, "width": 8},
            "space": {"normalization": ["batchnorm", "groupnorm"]},
            "train": {"epochs": 1, "batch_size": 128, "lr": 0.05},
            "search": {"trials": 5, "pruner": "none", "sampler": "random", "retrain_repeats": retrain,
                       "storage": f"sqlite:///{tmp_path / 'repeats.db'}"},
        }

    reused = autonorm.search(space("reused", retrain=False))
    trials = optuna.load_study(study_name="reused", storage=f"sqlite:///{tmp_path / 'repeats.db'}").trials
    first = {}
    for trial in trials:  # 5 trials over 2 configurations: each is trained once
        norm = trial.params["normalization"]
        if norm in first:
            assert trial.user_attrs["repeat_of"] == first[norm].number and trial.value == first[norm].value
            assert trial.user_attrs["train_seconds"] == first[norm].user_attrs["train_seconds"]
        else:
            first[norm] = trial
            assert "repeat_of" not in trial.user_attrs
    assert len(first) == 2 and reused.count("complete") == 5
    assert [t.number for t in reused.leaderboard()] == sorted((t.number for t in first.values()),
                                                                key=lambda n: -trials[n].value)  # fmt: skip
    assert "3 repeated an earlier configuration and reused its outcome" in display.summary(reused)

    autonorm.search(space("retrained", retrain=True))
    trials = optuna.load_study(study_name="retrained", storage=f"sqlite:///{tmp_path / 'repeats.db'}").trials
    assert not any("repeat_of" in t.user_attrs for t in trials)
    assert len({t.user_attrs["train_seconds"] for t in trials}) == 5  # every one trained


def test_a_late_rerun_takes_the_place_of_the_trial_it_runs_again():
    """A killed worker's trial is queued again only when its heartbeats stop, after other trials began: its
    rerun used to take the place (and training seed) of the trial before it."""
    study = optuna.create_study()
    create, fail = optuna.trial.create_trial, optuna.trial.TrialState.FAIL
    study.add_trial(create(state=fail))  # 0: its process was killed
    study.add_trial(create(value=0.5))  # 1
    study.add_trial(create(value=0.5, user_attrs={"retry_of": 0}))  # 2: trial 0 again
    study.add_trial(create(state=fail, user_attrs={"fail_reason": NOT_NEEDED}))  # 3: a worker came too late
    study.add_trial(create(value=0.5, user_attrs={"retry_of": 2}))  # 4: trial 0 again, once more
    assert [place(study, n) for n in range(6)] == [0, 1, 0, 2, 0, 2]


def test_a_search_from_python_keeps_optunas_own_messages_out_and_restores_their_level(tmp_path, caplog):
    optuna.logging.set_verbosity(optuna.logging.INFO)
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.INFO, logger="optuna"):
            autonorm.search(write(tmp_path / "tiny.yaml", TINY_SPACE), trials=1)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.disable_propagation()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert not [r for r in caplog.records if r.name.startswith("optuna")], caplog.text


def test_a_pruned_trial_records_its_parameters_and_the_epochs_it_trained():
    registry = registry_with_test_components()
    spec = load_spec(
        {"model": {"backbone": "small_cnn", "depth": 1, "width": 8}, "train": {"epochs": 3, "batch_size": 128}},
        registry,
    )
    data = load_data(spec.dataset_choice, spec.val_fraction, spec.test_fraction)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study.optimize(make_objective(spec, data, registry), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["params"] > 0 and len(trial.user_attrs["history"]) == 1  # pruned after epoch 1
    assert set(trial.user_attrs["history"][0]) >= {"train_loss", "val_accuracy", "val_loss"}
    assert autonorm.results.TrialRecord.from_frozen(trial).metrics == {"params": trial.user_attrs["params"]}


@pytest.mark.parametrize(("earlier_accuracy", "trains"), [(0.9, True), (0.1, False)])
def test_a_pruned_configuration_proposed_again_trains_if_the_pruner_would_now_let_it_go_on(
    earlier_accuracy, trains
):
    """ASHA's late promotion: the earlier measurements are judged against the trials that reached their
    epoch since (here, the median pruner's four at 0.5); above them the configuration trains again."""
    registry = registry_with_test_components()
    spec = load_spec(
        {
            "name": "late",
            "model": {"backbone": "small_cnn", "depth": 1, "width": 8},
            "space": {"normalization": ["batchnorm", "groupnorm"]},
            "train": {"epochs": 4, "batch_size": 128, "lr": 0.05},
            "search": {"pruner": "median"},
        },
        registry,
    )
    data = load_data(spec.dataset_choice, spec.val_fraction, spec.test_fraction)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec))
    norm = optuna.distributions.CategoricalDistribution(["batchnorm", "groupnorm"])

    def past(choice: str, accuracy: float, state: optuna.trial.TrialState) -> None:
        config = sample_config(optuna.trial.FixedTrial({"normalization": choice}), spec, data.input_shape, 10)
        study.add_trial(optuna.trial.create_trial(
            state=state, params={"normalization": choice}, distributions={"normalization": norm},
            user_attrs={"config": config.model_dump(mode="json")},
            intermediate_values={step: accuracy for step in (1, 2, 3)},
            value=accuracy if state == optuna.trial.TrialState.COMPLETE else None,
        ))  # fmt: skip

    past("batchnorm", earlier_accuracy, optuna.trial.TrialState.PRUNED)
    for _ in range(4):
        past("groupnorm", 0.5, optuna.trial.TrialState.COMPLETE)
    study.enqueue_trial({"normalization": "batchnorm"})
    study.optimize(make_objective(spec, data, registry), n_trials=1)
    again = study.trials[-1]
    if trains:
        assert again.state == optuna.trial.TrialState.COMPLETE and again.user_attrs["promoted_from"] == 0
        assert "repeat_of" not in again.user_attrs and len(again.user_attrs["history"]) == 4
        study.enqueue_trial({"normalization": "batchnorm"})  # its latest training speaks for it now
        study.optimize(make_objective(spec, data, registry), n_trials=1)
        third = study.trials[-1]
        assert third.user_attrs["repeat_of"] == again.number and third.value == again.value
        assert "promoted_from" not in third.user_attrs and "rejudges" not in third.user_attrs
    else:
        assert again.state == optuna.trial.TrialState.PRUNED and again.user_attrs["repeat_of"] == 0
        assert "promoted_from" not in again.user_attrs and "history" not in again.user_attrs


def test_a_search_stops_when_the_study_has_its_trials_even_those_a_joined_worker_finished(tmp_path):
    """``autonorm worker`` may join a plain search: their trials together make the count, not each one's."""
    path = write(tmp_path / "tiny.yaml", TINY_SPACE.replace("trials: 3", "trials: 4"))

    def another_worker_finishes_two(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number == 0:
            for _ in range(2):
                study.add_trial(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                                          value=0.5, user_attrs={"worker": "elsewhere"}))  # fmt: skip

    results = autonorm.search(path, callbacks=[another_worker_finishes_two])
    assert len(results.trials) == 4 and results.count("complete") == 4


def test_a_resumed_space_with_other_fixed_settings_trains_its_configurations_again(tmp_path):
    """The same choices under other epochs (or data, model, fixed settings) are another experiment."""
    raw = {
        "name": "changed",
        "model": {"backbone": "small_cnn", "depth": 1, "width": 8},
        "space": {"normalization": ["batchnorm", "groupnorm"]},
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.05},
        "search": {"trials": 4, "pruner": "none", "sampler": "random"},
    }
    first = autonorm.search(raw)
    assert {t.config.epochs for t in first.trials} == {1} and len({t.repeat_of for t in first.trials}) > 1
    longer = autonorm.search({**raw, "train": {**raw["train"], "epochs": 2}}, trials=8)
    later = longer.trials[4:]
    assert all(t.repeat_of is None or t.repeat_of >= 4 for t in later)
    assert {t.config.epochs for t in later} == {2}
    board = io.StringIO()
    Console(file=board, width=200).print(display.leaderboard_table(longer))
    assert "epochs" in board.getvalue()  # the trials of both sessions are told apart


class Tracker:
    def __init__(self):
        self.events = []

    @autonorm.hookimpl
    def autonorm_trial_started(self, number):
        self.events.append(("started", number))

    @autonorm.hookimpl
    def autonorm_trial_reported(self, number, epoch, metrics):
        self.events.append(("reported", number, epoch, "val_accuracy" in metrics))

    @autonorm.hookimpl
    def autonorm_trial_finished(self, number, state):
        self.events.append(("finished", number, state))


class BrokenTracker:
    @autonorm.hookimpl
    def autonorm_trial_started(self):
        raise RuntimeError("tracker down")

    @autonorm.hookimpl
    def autonorm_trial_reported(self):
        raise RuntimeError("tracker down")

    @autonorm.hookimpl
    def autonorm_trial_finished(self):
        raise RuntimeError("tracker down")


def test_trackers_see_each_trial_and_one_that_raises_harms_neither_trials_nor_other_trackers(tmp_path):
    registry = registry_with_test_components()
    tracker = Tracker()
    registry.register(tracker, "tracker")
    registry.register(BrokenTracker(), "broken_tracker")  # registered last: pluggy calls it first
    spec = load_spec(write(tmp_path / "tiny.yaml", TINY_SPACE.replace("epochs: 2", "epochs: 1")), registry)
    with pytest.warns(UserWarning) as warned:
        results = autonorm.search(spec, registry=registry, trials=2)
    assert {str(w.message) for w in warned} == {
        f"plugin 'broken_tracker': autonorm_trial_{hook} raised RuntimeError: tracker down"
        for hook in ("started", "reported", "finished")
    }
    assert results.count("complete") == 2
    assert tracker.events == [
        ("started", 0), ("reported", 0, 0, True), ("finished", 0, "complete"),
        ("started", 1), ("reported", 1, 0, True), ("finished", 1, "complete"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "hidden, state, attrs",
    [
        ("an interrupted trial, beside its rerun", optuna.trial.TrialState.FAIL, {"fail_reason": "interrupted"}),
        ("a repeat, beside the trial it copies", optuna.trial.TrialState.PRUNED, {"repeat_of": 0}),
        ("a stopped trial, beside the trial judging it again", optuna.trial.TrialState.PRUNED, {}),
    ],
)
def test_asha_sees_each_configuration_once(hidden, state, attrs):
    """ASHA ranks a trial among all trials at its rung, failed and pruned ones included: a second copy of
    a configuration's measurement (0.95) raises the bar for the others (third of 7 instead of second of 6)."""
    spec = load_spec({"name": "rung", "train": {"epochs": 3}, "search": {"pruner": "asha"}})
    study = optuna.create_study(direction="maximize")
    create = optuna.trial.create_trial
    for value in (0.9, 0.1, 0.1, 0.1, 0.1):
        study.add_trial(create(value=value, intermediate_values={1: value}, system_attrs={"completed_rung_0": value}))
    rung = {"intermediate_values": {1: 0.95}, "system_attrs": {"completed_rung_0": 0.95}}
    study.add_trial(create(state=state, user_attrs=attrs, **rung))
    trial = study.ask()
    if not attrs:
        trial.set_user_attr("rejudges", 5)
    trial.report(0.85, 1)
    frozen = study._storage.get_trial(trial._trial_id)
    assert make_pruner(spec).prune(study, frozen) is False, hidden  # second of 6: promoted
    assert make_pruner(spec).pruner.prune(study, frozen) is True  # Optuna's own: third of 7, stopped


def test_a_trial_left_running_in_an_sqlite_study_is_rerun_in_its_place(tmp_path):
    """Ctrl-C while Optuna asks the sampler (or a process killed within the heartbeats' grace period)
    leaves a trial running that no heartbeat will ever find stale: one process at a time uses an SQLite
    file, so the next search fails it and runs its place again, as it would have run uninterrupted."""
    text = TINY_SPACE.replace("pruner: none", "pruner: asha") + "  sampler: random\n"
    straight = autonorm.search(write(tmp_path / "straight.yaml", text.replace("tiny", "straight")), trials=4)
    path = write(tmp_path / "stuck.yaml", text.replace("tiny", "stuck"))
    autonorm.search(path, trials=2)
    optuna.load_study(study_name="stuck", storage="sqlite:///stuck.db").ask()  # never told
    resumed = autonorm.search(path, trials=4)
    assert resumed.counts().endswith(", 0 failed, 1 stopped")  # none running, none waiting
    kept = [t for t in resumed.trials if t.counts_as_done]
    assert [(t.state, t.params, t.value) for t in kept] == [(t.state, t.params, t.value) for t in straight.trials]


def test_an_interrupted_nsga2_search_resumes_into_the_same_generations(tmp_path):
    """NSGA-II counted the rerun (fixed parameters) in no generation, and every later one shifted."""
    text = TINY_SPACE.replace("pruner: none", "sampler: nsga2\n  objective: [val_accuracy, params]")
    straight, resumed = straight_and_resumed(tmp_path, text, 10, interrupt_from=2)
    kept = [t for t in resumed.trials if t.counts_as_done]
    assert [(t.params, t.values) for t in kept] == [(t.params, t.values) for t in straight.trials]


def test_a_multi_objective_search_records_a_configuration_that_cannot_run_as_pruned(tmp_path):
    """As in a single-objective search: TPE leaves failed trials out of its model and would propose the
    configuration again and again; a pruned one counts against its region."""
    space = TINY_SPACE.replace("groups: [2, 4]", "groups: [3]")
    space = space.replace("pruner: none", "objective: [val_accuracy, params]")
    results = autonorm.search(write(tmp_path / "mo.yaml", space), trials=4)
    rejected = [t for t in results.trials if t.reason and t.reason.startswith("incompatible")]
    assert rejected and all(t.state == "pruned" for t in rejected), [(t.state, t.reason) for t in results.trials]
