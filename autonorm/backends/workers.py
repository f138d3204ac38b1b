"""Many Optuna worker processes sharing one study: ``autonorm search --workers N`` and ``autonorm worker``.

Each worker runs trials until the study holds the requested number of finished ones. When workers
race for the last trials, trial numbers decide: a trial that finds the study's quota already taken
by trials numbered before it steps aside before it trains (it is recorded as interrupted, "not
needed"), so the study ends with exactly the requested number of finished trials. A trial whose
worker was killed stops sending heartbeats (RDB storages); the next worker to look marks it failed
and Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` queues a copy with the same
parameters, which a worker picks up first (a journal file has no heartbeats: see :func:`fail_orphans`).
The study's own storage is the only channel between workers, so a worker on another machine joins
with nothing but the storage URL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from autonorm.backends.optuna import (
    TARGET_ATTR,
    WORKER_ATTR,
    Callback,
    fail_orphans,
    open_search_study,
    set_target,
    this_process,
)
from autonorm.errors import SpecError
from autonorm.objective import make_objective, record_interrupted
from autonorm.registry import Registry
from autonorm.results import NOT_NEEDED, StudyResults, TrialRecord, results_of
from autonorm.spec import SearchSpec, load_spec
from autonorm.storage import check_shareable, has_heartbeats, mask_url, open_storage

#: Environment variable a worker reads its storage URL from, so that a password is not on a command line.
STORAGE_ENV = "AUTONORM_STORAGE"


def _tally(trials: Sequence[optuna.trial.FrozenTrial], below: int | None = None) -> tuple[int, int, int]:
    """(finished for good, running, waiting) among the trials numbered below ``below`` (all by default)."""
    done = running = waiting = 0
    for t in trials:
        if below is not None and t.number >= below:
            continue
        if t.state == TrialState.RUNNING:
            running += 1
        elif t.state == TrialState.WAITING:
            waiting += 1
        else:
            done += TrialRecord.from_frozen(t).counts_as_done
    return done, running, waiting


def run_worker(
    spec: SearchSpec, registry: Registry, callbacks: Sequence[Callback] = (), poll: float = 1.0
) -> StudyResults:
    """Run trials of the spec's study until it holds ``spec.search.trials`` finished ones, with other workers."""
    data = spec.load_data(registry)
    study = open_search_study(spec, worker=True)
    objective = make_objective(spec, data, registry)
    target = spec.search.trials
    heartbeats = has_heartbeats(spec.storage)
    me = this_process()

    def claimed(trial: optuna.Trial) -> float:
        try:
            trial.set_user_attr(WORKER_ATTR, me)
            done, running, waiting = _tally(study.get_trials(deepcopy=False), below=trial.number)
        except KeyboardInterrupt:  # Ctrl-C before the trial started training: recorded like one during it
            record_interrupted(trial)
            raise
        if done + running + waiting >= target:
            trial.set_user_attr("fail_reason", NOT_NEEDED)
            return float("nan")
        return objective(trial)

    while True:
        if heartbeats:
            with warnings.catch_warnings():  # marked experimental; heartbeats are what crash recovery relies on
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        else:
            fail_orphans(study)
        done, running, waiting = _tally(study.get_trials(deepcopy=False))
        if done >= target:
            break
        if waiting or done + running < target:
            study.optimize(claimed, n_trials=1, callbacks=list(callbacks), gc_after_trial=False)
        elif heartbeats:  # the last trials run elsewhere: wait, to retry them should their worker die
            time.sleep(poll)
        else:
            break
    return results_of(study, spec.storage)


def worker_spec(study_name: str, storage: str, registry: Registry, trials: int | None = None) -> SearchSpec:
    """The search space of an existing study, as stored by the search that created it."""
    backend = open_storage(storage, must_exist=True)  # a worker joins a study: it never creates the file
    try:
        study = optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = optuna.get_all_study_names(backend)
        raise SpecError(
            f"no study {study_name!r} in {mask_url(storage)} (studies there: {', '.join(names) or 'none'})",
            path="study",
        ) from None
    raw = study.user_attrs.get("space")
    if raw is None:
        raise SpecError(f"study {study_name!r} was not made by autonorm: it has no search space", path="study")
    spec = load_spec(raw, registry)
    spec.name = study_name
    spec.override(storage=storage, trials=trials if trials is not None else study.user_attrs.get(TARGET_ATTR))
    return spec


def run_workers(spec: SearchSpec, workers: int, callbacks: Sequence[Callback] = (), poll: float = 1.0) -> StudyResults:
    """Start ``workers`` processes of ``autonorm worker`` on this machine and wait for them.

    Ctrl-C reaches every worker: each records its running trial as interrupted and stops; running
    the same search again finishes only the missing trials.
    """
    check_shareable(spec.storage, workers)
    study = open_search_study(spec)
    set_target(study, spec.search.trials)
    command = [sys.executable, "-m", "autonorm", "worker", spec.name, "--quiet"]
    env = {**os.environ, STORAGE_ENV: spec.storage}
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) for _ in range(workers)]
    seen: set[int] = set()

    def report() -> None:
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in seen:
                seen.add(t.number)
                if t.user_attrs.get("fail_reason") != NOT_NEEDED:
                    for callback in callbacks:
                        callback(study, t)

    seen.update(t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished())
    try:
        while any(p.poll() is None for p in procs):
            report()
            time.sleep(poll)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    report()
    done, _, _ = _tally(study.get_trials(deepcopy=False))
    if done < spec.search.trials:
        codes = ", ".join(str(p.returncode) for p in procs)
        raise SpecError(
            f"the workers stopped (exit codes {codes}) with {done} of {spec.search.trials} trials finished; "
            "run the same command again to resume",
            path=f"study {spec.name}",
        )
    return results_of(study, spec.storage)
