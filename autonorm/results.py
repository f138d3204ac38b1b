"""Reading a study back: trials with their configurations, metrics and failure reasons; the best one."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autonorm.config import TrialConfig
from autonorm.errors import SpecError
from autonorm.spec import OBJECTIVE_DIRECTIONS, load_spec
from autonorm.storage import mask_url, open_storage

_STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}

#: User attributes that hold metrics recorded by the trainer.
METRIC_KEYS = (
    "val_accuracy",
    "val_balanced_accuracy",
    "val_loss",
    "val_ece",
    "train_loss",
    "train_seconds",
    "params",
    "latency_ms",
    "peak_memory_mb",
)

#: The direction in which each metric is better (accuracies up; losses and costs down), to rank by any.
METRIC_DIRECTIONS = {**OBJECTIVE_DIRECTIONS, "train_loss": "minimize"}


#: The reason of a failed trial that recorded none: its process ended before it could (killed, or it
#: stopped sending heartbeats and the storage failed the trial; a worker then retries it).
STOPPED = "its process stopped without recording a reason (killed, or its heartbeats stopped)"


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the user sees it."""

    number: int
    state: str
    #: The (first) objective's value; for a pruned trial, its last reported one.
    value: float | None
    config: TrialConfig | None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: Every objective's value of a completed trial, in the study's order (one for a single objective).
    values: tuple[float, ...] = ()
    #: The earlier trial whose outcome this one reused (the same configuration proposed again), or None.
    repeat_of: int | None = None
    #: The earlier trial, stopped by the pruner, whose configuration this one trained again (late promotion).
    promoted_from: int | None = None
    #: The one-liner of the components a trial chose when it was rejected before it had a configuration.
    chosen: str | None = None
    #: The epochs a trial reported before it finished (a pruned trial: when the pruner stopped it).
    epochs_done: int | None = None

    @classmethod
    def from_frozen(cls, t: FrozenTrial) -> TrialRecord:
        values = tuple(t.values) if t.state == TrialState.COMPLETE and t.values else ()
        value = values[0] if values else _last(t.intermediate_values)
        config = t.user_attrs.get("config")
        return cls(
            number=t.number,
            state=_STATES[t.state],
            value=value if value is not None and math.isfinite(value) else None,
            config=TrialConfig.model_validate(config) if config else None,
            metrics={k: t.user_attrs[k] for k in METRIC_KEYS if k in t.user_attrs},
            reason=t.user_attrs.get("fail_reason", _default_reason(t)),
            params=dict(t.params),
            values=values,
            repeat_of=t.user_attrs.get("repeat_of"),
            promoted_from=t.user_attrs.get("promoted_from") if "repeat_of" not in t.user_attrs else None,
            chosen=t.user_attrs.get("summary"),
            epochs_done=t.last_step,
        )

    @property
    def summary(self) -> str | None:
        """The configuration's one-liner (for a trial rejected before it had one, the components it chose)."""
        return self.config.summary() if self.config is not None else self.chosen

    @property
    def rejected(self) -> bool:
        """Pruned for a reason (it diverged, or its components rule each other out), not for its score."""
        return self.state == "pruned" and self.reason is not None

    @property
    def counts_as_done(self) -> bool:
        """Finished for good: completed, pruned, or failed for a recorded reason other than an interruption
        (a trial whose process stopped is retried, as an interrupted one is)."""
        return self.state in ("complete", "pruned") or (self.state == "failed" and not _run_again(self.reason))


def _default_reason(t: FrozenTrial) -> str | None:
    """The reason of a trial that recorded none: a failed one's process stopped; a waiting one may be
    the rerun of an interrupted trial."""
    if t.state == TrialState.FAIL:
        return STOPPED
    if t.state == TrialState.WAITING and "retry_of" in t.user_attrs:
        return f"queued to run trial {t.user_attrs['retry_of']}'s configuration again"
    return None


def _run_again(reason: str | None) -> bool:
    """Whether a failed trial with this reason is run again: interrupted, or its process stopped."""
    return reason in (None, STOPPED) or reason.startswith("interrupted")


def is_run_again(t: FrozenTrial) -> bool:
    """A failed trial that is run again (interrupted, or its process stopped): it has no result of its own."""
    return t.state == TrialState.FAIL and _run_again(t.user_attrs.get("fail_reason"))


#: The reason of a trial a worker took after the study had its trials: it ran nothing, and is no place.
NOT_NEEDED = "interrupted: not needed, the study already had its trials"


def place(study: optuna.Study, number: int) -> int:
    """Trial ``number``'s place in its search: the place of the trial it runs again (``retry_of``: an
    interrupted trial, or one whose process stopped), or else the number of trials before it that are
    not such reruns (nor trials a worker found not needed). A search interrupted and resumed gives each
    trial the place it had uninterrupted, however late a rerun comes (a killed worker's is queued only
    when its heartbeats stop), and with it its training seed (``search.seed`` + place) and its sampler's
    seed (:class:`~autonorm.backends.optuna.PlaceSeeded`)."""
    # from the storage: the study a sampler is given may hold some trials only (Hyperband's brackets)
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    by_number = {t.number: t for t in trials}
    while (original := by_number.get(number, None)) is not None and original.user_attrs.get("retry_of") in by_number:
        number = original.user_attrs["retry_of"]
    return sum(t.number < number and _takes_place(t) for t in trials)


def _takes_place(t: FrozenTrial) -> bool:
    return "retry_of" not in t.user_attrs and t.user_attrs.get("fail_reason") != NOT_NEEDED


def _last(values: dict[int, float]) -> float | None:
    return values[max(values)] if values else None


@dataclass
class StudyResults:
    """A study's trials, newest state, and its best trial.

    ``objective``/``direction`` are the first objective's; a multi-objective study lists all of them
    in ``objectives``/``directions``, ranks its leaderboard by the first and has a :attr:`pareto_front`.
    """

    name: str
    storage: str
    objective: str
    direction: str
    trials: list[TrialRecord]
    objectives: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.objectives = self.objectives or [self.objective]
        self.directions = self.directions or [self.direction, *(OBJECTIVE_DIRECTIONS[o] for o in self.objectives[1:])]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def best(self) -> TrialRecord | None:
        """The best completed trial by the first objective, or None if no trial completed."""
        ranked = self.leaderboard()
        return ranked[0] if ranked and ranked[0].state == "complete" else None

    @property
    def pareto_front(self) -> list[TrialRecord]:
        """Completed trials that no other completed trial dominates on every objective, best first."""
        trials = [t for t in self.trials if t.state == "complete" and t.repeat_of is None]
        sign = -1.0 if self.direction == "maximize" else 1.0
        return sorted(nondominated(trials, self.directions), key=lambda t: (sign * t.values[0], t.number))

    def choose(
        self, by: str | None = None, at_most: dict[str, float] | None = None, at_least: dict[str, float] | None = None
    ) -> TrialRecord | None:
        """The completed trial best on metric ``by`` (default: the first objective) among those whose
        metrics satisfy every bound, e.g. ``choose(at_most={"latency_ms": 0.5})``; None if none does."""
        by = by or self.objective
        for metric in (by, *(at_most or {}), *(at_least or {})):
            if metric not in METRIC_DIRECTIONS:
                raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRIC_KEYS)}")
        sign = -1.0 if METRIC_DIRECTIONS[by] == "maximize" else 1.0
        bounds = [(k, v, 1.0) for k, v in (at_most or {}).items()] + [(k, v, -1.0) for k, v in (at_least or {}).items()]

        def ok(t: TrialRecord) -> bool:
            return by in t.metrics and all(k in t.metrics and s * t.metrics[k] <= s * v for k, v, s in bounds)

        feasible = [t for t in self.trials if t.state == "complete" and ok(t)]
        return min(feasible, key=lambda t: (sign * t.metrics[by], t.number), default=None)

    def failures(self) -> list[TrialRecord]:
        """Failed trials and those rejected for a reason (diverged, incompatible), each configuration once;
        not those that are run again (interrupted, or whose process stopped), which the counts show."""
        return [
            t for t in self.trials if (t.state == "failed" and t.counts_as_done) or (t.rejected and t.repeat_of is None)
        ]

    def failure_groups(self) -> list[tuple[list[int], str | None, str | None]]:
        """The failures as (trial numbers, configuration one-liner, reason), trials that chose the same
        components and failed for the same reason together (incompatible choices proposed again)."""
        groups: dict[tuple[str | None, str | None], list[int]] = {}
        for t in self.failures():
            groups.setdefault((t.summary, t.reason), []).append(t.number)
        return [(numbers, summary, reason) for (summary, reason), numbers in groups.items()]

    def leaderboard(self, limit: int | None = None) -> list[TrialRecord]:
        """Completed trials best first, then pruned ones (by their last reported value); a trial that only
        reused an earlier trial's outcome is left out, the earlier one stands for both, and so is a
        rejected one."""
        sign = -1.0 if self.direction == "maximize" else 1.0

        def key(t: TrialRecord) -> tuple:
            return (t.state != "complete", sign * t.value)

        trained = (t for t in self.trials if t.repeat_of is None and not t.rejected)
        ranked = sorted((t for t in trained if t.state in ("complete", "pruned") and t.value is not None), key=key)
        return ranked[:limit] if limit else ranked

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    def counts(self) -> str:
        """Trials by state, as in ``5 complete, 10 pruned (3 diverged, 1 incompatible), 1 failed``, then
        those interrupted, those whose process stopped (both are run again), running and waiting, if any."""
        why = Counter(t.reason.partition(":")[0] for t in self.trials if t.rejected)
        pruned = f"{self.count('pruned')} pruned"
        if why:
            pruned += " (" + ", ".join(f"{n} {reason}" for reason, n in sorted(why.items())) + ")"
        retried = [t for t in self.trials if t.state == "failed" and not t.counts_as_done and t.reason != NOT_NEEDED]
        stopped = sum(t.reason in (None, STOPPED) for t in retried)
        failed = sum(t.state == "failed" and t.counts_as_done for t in self.trials)
        parts = [f"{self.count('complete')} complete", pruned, f"{failed} failed"]
        extra = {
            "interrupted": len(retried) - stopped,
            "stopped": stopped,
            "running": self.count("running"),
            "waiting": self.count("waiting"),
        }
        return ", ".join(parts + [f"{n} {what}" for what, n in extra.items() if n])


def nondominated(
    trials: Iterable[TrialRecord], directions: Sequence[str], objectives: Sequence[int] | None = None
) -> list[TrialRecord]:
    """The trials that no other of them dominates (better on one objective, no worse on any) on the
    objectives at the positions ``objectives`` (all of ``directions`` by default); a trial without a
    finite value for each is left out."""
    objectives = range(len(directions)) if objectives is None else objectives
    signs = [-1.0 if directions[i] == "maximize" else 1.0 for i in objectives]
    points = [
        (t, tuple(s * t.values[i] for s, i in zip(signs, objectives, strict=True)))
        for t in trials
        if len(t.values) == len(directions) and all(math.isfinite(t.values[i]) for i in objectives)
    ]

    def dominated(p: tuple[float, ...]) -> bool:
        return any(all(a <= b for a, b in zip(q, p, strict=True)) and q != p for _, q in points)

    return [t for t, p in points if not dominated(p)]


def default_storage(name: str) -> str:
    return f"sqlite:///{name}.db"


def locate_study(study: str | Path, storage: str | None = None) -> tuple[str, str]:
    """The name and storage URL of a study named ``study``, made by the search-space YAML file ``study``
    (its name, and its ``search.storage``), or held in the SQLite file ``study`` (``NAME.db``, as a search
    names it); ``storage`` overrides the storage, which is otherwise ``sqlite:///NAME.db`` in the working
    directory for a name."""
    if str(study).endswith((".yaml", ".yml")):
        spec = load_spec(study)
        return spec.name, storage or spec.storage
    if str(study).endswith(".db"):
        return Path(study).stem, storage or f"sqlite:///{study}"
    return str(study), storage or default_storage(str(study))


def load_study(study: str | Path, storage: str | None = None) -> StudyResults:
    """Load a study by name, or by the search-space YAML file that made it (see :func:`locate_study`)."""
    name, url = locate_study(study, storage)
    return results_of(open_study(name, url), url)


def open_study(study: str | Path, storage: str | None = None) -> optuna.Study:
    """The Optuna study itself (for plots and importances); same arguments and errors as :func:`load_study`."""
    name, url = locate_study(study, storage)
    backend = open_storage(url, must_exist=True)
    try:
        return optuna.load_study(study_name=name, storage=backend)
    except KeyError:
        names = optuna.get_all_study_names(backend)
        raise SpecError(
            f"no study {name!r} in {mask_url(url)} (studies there: {', '.join(names) or 'none'})", path="study"
        ) from None


def results_of(study: optuna.Study, url: str) -> StudyResults:
    attrs = study.user_attrs
    directions = [d.name.lower() for d in study.directions]
    return StudyResults(
        name=study.study_name,
        storage=mask_url(url),
        objective=attrs.get("objective", "val_accuracy"),
        direction=directions[0],
        trials=[TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)],
        objectives=attrs.get("objectives", [attrs.get("objective", "val_accuracy")]),
        directions=directions,
    )
