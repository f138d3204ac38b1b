"""The Ray Tune backend: the same define-by-run space, run as Ray trials, recorded in the same Optuna study.

The driver samples each trial's configuration with Ray Tune's ``OptunaSearch`` on the spec's Optuna
study and storage, so ``autonorm results``, ``best`` and resume read a Ray search exactly as they
read a local one. A Ray trial trains that configuration with the same objective as the Optuna
backend (the sampled parameters replayed through :class:`optuna.trial.FixedTrial`), reports the
objective every epoch to the scheduler (ASHA, HyperBand or the median rule stop weak trials early)
and sends its metrics, failure reason and traceback back in its last report. Only the driver
touches the storage, so the workers of a cluster need no route to the database.

The data is put once in Ray's object store (``tune.with_parameters``), not sent with every trial,
and actors are reused between trials. A Ray started here has no dashboard and runs on the loopback
address: its GCS, raylet, workers and agents listen on 127.0.0.1 only, so nothing of it can be
reached from other machines (Ray 2.60 would otherwise replace a ``127.0.0.1`` node address by the
machine's network address and listen on every interface). Tune's console output is off, so
``--jsonl`` keeps stdout to its JSON lines; Ctrl-C stops the trials, records them as interrupted
and ends the search with :class:`KeyboardInterrupt`, as the local backend does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray._private import ray_constants
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from autonorm.backends.optuna import (
    MEDIAN_WARMUP,
    Callback,
    done_count,
    first_rung,
    open_search_study,
)
from autonorm.data import Data
from autonorm.errors import SpecError, TrialFailed
from autonorm.objective import copy_outcome, earlier_trial, make_objective, record_interrupted
from autonorm.registry import Registry
from autonorm.results import StudyResults, place, results_of
from autonorm.space import sample_config
from autonorm.spec import RaySettings, SearchSpec
from autonorm.yamlfile import placed

#: Keys of a Ray trial's reports besides the objective.
NUMBER, EPOCH, FINAL, ATTRS = "autonorm_trial", "epoch", "autonorm_final", "autonorm_attrs"
#: In a trial's config: its place in the search (:func:`~autonorm.results.place`), which seeds its training.
PLACE = "autonorm_place"
#: In a trial's config: the earlier trial whose outcome it reuses (the same configuration), and its value.
REPEAT, REPEAT_VALUE = "autonorm_repeat_of", "autonorm_repeat_value"
#: In a trial's final report: it was rejected (it diverged, or is incompatible), to record as pruned.
PRUNED = "autonorm_pruned"

#: Recorded on a trial whose Ray actor raised (so its own objective could not record a reason).
RAY_ERROR = "the Ray trial raised; see Ray's logs"


def run_ray(spec: SearchSpec, registry: Registry, callbacks: Sequence[Callback] = ()) -> StudyResults:
    """Run the trials the spec's study still lacks as Ray Tune trials and return the study's results."""
    data = spec.load_data(registry)
    study = open_search_study(spec)
    missing = spec.search.trials - done_count(study)
    if missing <= 0:
        return results_of(study, spec.storage)
    settings, started_here = spec.search.ray, False
    try:
        started_here = connect(settings.address)
        if started_here and not settings.address:
            check_resources(settings)
    except SpecError as exc:
        if started_here:
            ray.shutdown()
        raise placed(exc, spec.source) from None
    searcher = StudySearch(spec, study, data, callbacks)
    resources = {"cpu": settings.resources_per_trial.cpu, "gpu": settings.resources_per_trial.gpu}
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, spec=spec, data=data, registry=registry), resources
    )
    stop = StopOnSignal()
    try:
        with tempfile.TemporaryDirectory(prefix="autonorm-ray-") as scratch, stop.catching():
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=make_scheduler(spec),
                    num_samples=missing,
                    max_concurrent_trials=settings.max_concurrent,
                    reuse_actors=True,
                    time_budget_s=spec.search.timeout,
                ),
                run_config=tune.RunConfig(name=spec.name, storage_path=scratch, verbose=0, stop=stop),
            )
            with warnings.catch_warnings():  # ask/tell on a heartbeat storage: heartbeats serve the workers
                warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
                tuner.fit()
    finally:
        searcher.interrupt_unfinished()
        if started_here:
            ray.shutdown()
    if stop.signalled:
        raise KeyboardInterrupt
    return results_of(study, spec.storage)


def connect(address: str | None, **local: Any) -> bool:
    """Join the Ray at ``address`` (``auto``: this machine's cluster), or start a local one on the
    loopback address (``local``: more ``ray.init`` options, such as ``num_gpus``); True if started."""
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:  # "auto" with no cluster here: Ray's message names flags autonorm lacks
            raise SpecError(
                f"no Ray cluster to join ({str(exc).splitlines()[0].split('.')[0]}): start one with `ray start "
                "--head`, set $RAY_ADDRESS, or leave the address out to start a Ray for this search",
                path="search.ray.address",
            ) from None
        return True
    # Ray turns a node address of 127.0.0.1 into the machine's network address unless multi-node
    # clusters are off (as on macOS and Windows); then the node is 127.0.0.1 and its servers bind there
    clusters = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    # "Token authentication is enabled for this Ray cluster": a local Ray's default, said on every search
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        ray.init(address="local", include_dashboard=False, **quiet, **local)  # not a `ray start` cluster
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters
        notice.setLevel(level)
    return True


def _check_reachable(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) that nothing answers at is an error at once: Ray itself
    would wait for minutes, retrying, with nothing but its own log lines."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # "auto", or a form Ray resolves itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SpecError(
            f"nothing answers at {address} ({exc.strerror or exc}): start the cluster there (`ray start --head`), "
            "or leave the address out to start a Ray on this machine",
            path="search.ray.address",
        ) from None


def check_resources(settings: RaySettings) -> None:
    """Ray on this machine never runs a trial that asks for more CPUs or GPUs than the machine has: it
    would wait for them for ever, showing nothing."""
    have = ray.cluster_resources()
    for key, name in (("cpu", "CPU"), ("gpu", "GPU")):
        asked = getattr(settings.resources_per_trial, key)
        if asked > have.get(name, 0):
            raise SpecError(
                f"{asked:g} {name}(s) per trial, but this machine's Ray has {have.get(name, 0):g}",
                path=f"search.ray.resources_per_trial.{key}",
            )


class StopOnSignal(Stopper):
    """Ends the Tune run at Ctrl-C (SIGINT): trials stop and the caller learns it from :attr:`signalled`.

    Replaces Tune's own handler, which ends the run as if finished and stays installed afterwards.
    A second Ctrl-C raises :class:`KeyboardInterrupt` at once. Tune's console output is switched off
    for the run too (its new output engine prints even at ``verbose=0``).
    """

    def __init__(self) -> None:
        self.signalled = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.signalled

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signalled:
            raise KeyboardInterrupt
        self.signalled = True

    @contextmanager
    def catching(self) -> Iterator[None]:
        settings = {"TUNE_DISABLE_SIGINT_HANDLER": "1", "RAY_AIR_NEW_OUTPUT": "0"}
        before = {key: os.environ.get(key) for key in settings}
        os.environ.update(settings)
        handlers = {}
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in handlers.items():  # Tune installs a SIGUSR1 handler of its own
                if handler is not None:
                    signal.signal(sig, handler)
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def make_scheduler(spec: SearchSpec) -> Any:
    """The Ray scheduler matching the spec's pruner. One step is one epoch; the last epoch's is the
    trial's final report, so a scheduler's decision there cannot cut a trained trial's result."""
    metric, mode = spec.search.objective, "max" if spec.search.direction == "maximize" else "min"
    max_t = spec.epochs
    if spec.search.pruner == "asha":
        return AsyncHyperBandScheduler(
            metric=metric, mode=mode, max_t=max_t, grace_period=first_rung(spec), reduction_factor=3
        )
    if spec.search.pruner == "hyperband":
        return HyperBandScheduler(metric=metric, mode=mode, max_t=max_t)
    if spec.search.pruner == "median":
        return MedianStoppingRule(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            grace_period=MEDIAN_WARMUP,
            min_samples_required=4,
        )
    return FIFOScheduler()


class _ReplayedTrial(optuna.trial.FixedTrial):
    """The driver's sampled parameters, replayed in a Ray actor at the trial's place in the search; reports
    go to Ray Tune, each with the trial's attributes so far (the driver keeps them for a trial the
    scheduler stops, which sends no final report)."""

    def __init__(self, params: dict[str, Any], number: int, place: int, objective: str, epochs: int) -> None:
        super().__init__(params, number)
        self.place, self._objective, self._epochs = place, objective, epochs

    def report(self, value: float, step: int) -> None:
        if step < self._epochs:  # the last epoch's value comes with the final report
            tune.report({self._objective: value, EPOCH: step, ATTRS: json.dumps(self.user_attrs)})


def train_trial(config: dict[str, Any], spec: SearchSpec, data: Data, registry: Registry) -> None:
    """A Ray Tune function trainable: train the sampled configuration and report its outcome last."""
    params = {k: v for k, v in config.items() if k not in (NUMBER, PLACE, REPEAT, REPEAT_VALUE)}
    trial = _ReplayedTrial(params, config[NUMBER], config[PLACE], spec.search.objective, spec.epochs)
    trial.set_user_attr("ray_node", ray.get_runtime_context().get_node_id())
    pruned = False
    if REPEAT in config:  # the driver found this configuration already trained: nothing to train
        trial.set_user_attr("repeat_of", config[REPEAT])
        value = config[REPEAT_VALUE]
    else:
        try:
            value = make_objective(spec, data, registry)(trial)
        except optuna.TrialPruned:  # rejected (diverged, incompatible): the driver records it as pruned
            value, pruned = float("nan"), True
    # as JSON text: Ray Tune flattens nested dictionaries in results
    attrs = json.dumps(trial.user_attrs)
    report = {spec.search.objective: value, EPOCH: spec.epochs, FINAL: True, ATTRS: attrs, PRUNED: pruned}
    tune.report(report)


class StudySearch(OptunaSearch):
    """Ray Tune's OptunaSearch on the spec's study, recording what each Ray trial sends back."""

    def __init__(self, spec: SearchSpec, study: optuna.Study, data: Data, callbacks: Sequence[Callback] = ()) -> None:
        input_shape, num_classes = data.input_shape, data.num_classes

        def space(trial: Any) -> dict[str, Any]:
            which = {NUMBER: trial.number, PLACE: place(trial.study, trial.number)}
            try:
                dumped = sample_config(trial, spec, input_shape, num_classes).model_dump(mode="json")
                trial.set_user_attr("config", dumped)
            except TrialFailed:  # the Ray trial replays the same choices and records the reason
                return which
            earlier = earlier_trial(trial, spec, dumped)
            if earlier is None:
                return which
            value = earlier.value if earlier.state == TrialState.COMPLETE else float("nan")
            return {**which, REPEAT: earlier.number, REPEAT_VALUE: value}

        self._attrs: dict[str, str | None] = {}  # each running trial's attributes, from its last report
        super().__init__(
            space=space,
            metric=spec.search.objective,
            mode="max" if spec.search.direction == "maximize" else "min",
            sampler=study.sampler,  # seeded trial by trial (PlaceSeeded)
            study_name=study.study_name,
            storage=study._storage,
        )
        self._callbacks = list(callbacks)

    def __getstate__(self) -> dict[str, Any]:
        """What Tune pickles when the Tuner is made: all but the callbacks, which may hold what cannot be
        pickled (the live progress display's locks) and belong to this process."""
        return {**self.__dict__, "_callbacks": []}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not result.get(FINAL) and trial_id not in self._completed_trials:
            self._ot_trials[trial_id].report(result[self.metric], result[EPOCH])
            self._attrs[trial_id] = result.get(ATTRS)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        trial = self._ot_trials[trial_id]
        result = result or {}
        if result.get(FINAL):
            attrs = json.loads(result[ATTRS])
            if "repeat_of" in attrs:  # the outcome of the earlier trial with the same configuration
                earlier = self._ot_study.get_trials(deepcopy=False)[attrs["repeat_of"]]
                copy_outcome(trial, earlier)
                trial.set_user_attr("ray_node", attrs["ray_node"])
                self._finish(trial_id, earlier.state, earlier.value if earlier.state == TrialState.COMPLETE else None)
                return
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            if result.get(PRUNED):
                self._finish(trial_id, TrialState.PRUNED)
                return
            value = result[self.metric]
            ok = "fail_reason" not in attrs and value is not None and math.isfinite(value)
            last = (attrs.get("history") or [{}])[-1]
            if ok and self.metric in last:  # the last epoch's report, which came with this final one
                trial.report(last[self.metric], len(attrs["history"]))
            self._finish(trial_id, TrialState.COMPLETE if ok else TrialState.FAIL, value if ok else None)
        elif error:
            trial.set_user_attr("fail_reason", RAY_ERROR)
            self._finish(trial_id, TrialState.FAIL)
        else:  # stopped early by the scheduler, on a report it passed to the scheduler only
            if result.get(self.metric) is not None and EPOCH in result:
                trial.report(result[self.metric], result[EPOCH])
            last = result.get(ATTRS) or self._attrs.get(trial_id)
            for key, value in (json.loads(last) if last else {}).items():  # its parameters, the epochs it trained
                trial.set_user_attr(key, value)
            self._finish(trial_id, TrialState.PRUNED)

    def interrupt_unfinished(self) -> None:
        """Record the trials Ray did not finish (the search was stopped) as interrupted, to rerun on resume."""
        for trial_id, trial in self._ot_trials.items():
            if trial_id not in self._completed_trials:
                record_interrupted(trial)
                self._finish(trial_id, TrialState.FAIL)

    def _finish(self, trial_id: str, state: TrialState, value: float | None = None) -> None:
        trial = self._ot_trials[trial_id]
        frozen = self._ot_study.tell(trial, value, state=state)
        self._completed_trials.add(trial_id)
        for callback in self._callbacks:
            callback(self._ot_study, frozen)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna storage holds the search's state, and resume reads it from there."""
