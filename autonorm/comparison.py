"""Compare the methods of one kind across tasks, fairly: ``autonorm compare PROTOCOL.yaml``.

For every (task, candidate) pair the protocol's shared hyperparameters (at least the learning rate)
are tuned with the same small budget, as a study of its own in the protocol's storage; the best
setting is then retrained with several seeds and scored on the held-out test split. Seed results are
stored on the pair's study, so an interrupted comparison resumes without repeating finished seeds;
each pair's study is tagged with the user attributes ``comparison``, ``kind``, ``task`` and ``candidate``.
A task's ``data`` is a search space's data section, paths included (an npz ``path``, a torchvision
``root``): relative ones are read from the protocol file's folder, as a space's from its own. With
``search.backend: ray`` the tuning trials run on Ray Tune (one Ray for the whole comparison) and the
seed retraining in the driver.

Statistics (per Demšar 2006, "Statistical Comparisons of Classifiers over Multiple Data Sets"):
mean test accuracy with a 95% Student-t confidence interval over seeds; each candidate's average
rank across tasks (rank 1 = best mean, ties share the average rank); a Friedman test over tasks
(needs at least 2 tasks and 3 candidates); and, against the baseline, a Wilcoxon signed-rank test on
the tasks' mean accuracies, Holm-corrected over the candidates.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autonorm.api import search
from autonorm.backends.optuna import open_search_study
from autonorm.build import build_model, build_training_methods
from autonorm.data import load_data
from autonorm.errors import SpecError, TrialFailed, first_problem
from autonorm.registry import Registry, get_registry, unknown_name_message
from autonorm.results import TrialRecord, open_study, results_of
from autonorm.space import MODEL_SLOTS, first_model, same_model_error
from autonorm.spec import (
    SEARCHED_KINDS,
    TRAIN_PARAMS,
    Count,
    SearchSpec,
    load_spec,
    name_from_file,
    protocol_keys,
)
from autonorm.trainer import fit
from autonorm.yamlfile import locate, placed, read_yaml

#: Cost columns reported beside accuracy, from the retrained runs.
COST_KEYS = ("params", "train_seconds", "latency_ms")


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    data: dict[str, Any]


class _Protocol(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=120)
    kind: str
    #: names, or names with each one's own hyperparameters as in a space (``{groupnorm: {groups: [2, 4]}}``)
    candidates: list[str] | dict[str, dict[str, Any] | None] | None = None
    baseline: str | None = None
    tasks: list[_Task] = Field(min_length=1)
    model: dict[str, Any] = {"backbone": "resnet"}
    space: dict[str, Any] = {}
    train: dict[str, Any] = {}
    tune: dict[str, Any] = {"lr": {"loguniform": [0.01, 0.3]}}
    trials: Count = 4
    seeds: Count = 3
    search: dict[str, Any] = {}


#: The error of a cell whose pair has no study yet, and the start of one whose seeds are not all run.
NOT_RUN, NOT_FINISHED = "not run yet", "not finished"


def _stats() -> Any:
    """scipy.stats, imported when a comparison's statistics are computed: it takes half a second to
    import, which every command would otherwise pay."""
    from scipy import stats

    return stats


@dataclass
class Cell:
    """One (task, candidate) result: test accuracies over seeds, costs, or why it failed."""

    task: str
    candidate: str
    accuracies: list[float] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def mean(self) -> float | None:
        """The mean test accuracy of the seeds that finished; exactly summed and rounded, so that equal
        accuracies in another order tie rather than differ in the last bit."""
        return round(math.fsum(self.accuracies) / len(self.accuracies), 12) if self.accuracies else None

    @property
    def result(self) -> float | None:
        """The mean the statistics use: only of a cell whose every seed finished (a method that failed on
        some seeds is not ranked on the others alone)."""
        return self.mean if self.error is None else None

    @property
    def pending(self) -> bool:
        """Not run yet, or not finished: no result yet, rather than a failure."""
        return self.error is not None and (self.error == NOT_RUN or self.error.startswith(NOT_FINISHED))

    @property
    def ci95(self) -> float | None:
        """Half-width of the 95% Student-t confidence interval of the mean; None with fewer than two
        seeds, where there is none (not 0: one seed says nothing of the spread)."""
        n = len(self.accuracies)
        if n < 2:
            return None
        return float(_stats().t.ppf(0.975, n - 1) * np.std(self.accuracies, ddof=1) / math.sqrt(n))

    def shown(self, digits: int = 3) -> str:
        """``mean ± ci95`` (the mean alone with one seed), or why the cell has no result."""
        if self.mean is None:
            return f"failed: {self.error}"
        ci = self.ci95
        shown = f"{self.mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")
        return shown if self.error is None else f"{shown} ({self.error})"


@dataclass
class Comparison:
    """The table of a comparison and its statistics; :meth:`records` gives it as a list of dicts."""

    name: str
    kind: str
    tasks: list[str]
    candidates: list[str]
    baseline: str | None
    cells: dict[tuple[str, str], Cell]
    seeds: int = 3

    def ranked_tasks(self) -> list[str]:
        """The tasks the statistics use: every cell has run, and at least one has a result (a task where
        every candidate failed says nothing about their order)."""
        cells = [[self.cells[t, c] for c in self.candidates] for t in self.tasks]
        return [
            t
            for t, row in zip(self.tasks, cells, strict=True)
            if not any(c.pending for c in row) and any(c.result is not None for c in row)
        ]

    def average_ranks(self) -> dict[str, float]:
        """Mean over the ranked tasks of each candidate's rank by mean accuracy (failed cells rank last,
        ties share their mean rank); NaN while no task is ranked."""
        ranks: dict[str, list[float]] = {c: [] for c in self.candidates}
        for task in self.ranked_tasks():
            scores = [self.cells[task, c].result for c in self.candidates]
            ranked = _stats().rankdata([-(s if s is not None else -math.inf) for s in scores])
            for c, r in zip(self.candidates, ranked, strict=True):
                ranks[c].append(float(r))
        return {c: float(np.mean(r)) if r else math.nan for c, r in ranks.items()}

    def friedman(self) -> tuple[float, float] | None:
        """Friedman chi-square and p-value over the ranked tasks, among the candidates with a result on
        each (:meth:`friedman_candidates`), or None when it does not apply."""
        tasks, ok = self.ranked_tasks(), self.friedman_candidates()
        if len(tasks) < 2 or len(ok) < 3:
            return None
        result = _stats().friedmanchisquare(*[[self.cells[t, c].result for t in tasks] for c in ok])
        return float(result.statistic), float(result.pvalue)

    def friedman_candidates(self) -> list[str]:
        """The candidates with a result on every ranked task: the Friedman test compares those only."""
        tasks = self.ranked_tasks()
        return [c for c in self.candidates if all(self.cells[t, c].result is not None for t in tasks)]

    def versus_baseline(self) -> dict[str, float]:
        """Holm-corrected p-values of a Wilcoxon signed-rank test of each candidate against the baseline
        on their mean test accuracies over the tasks both have results on: one paired difference per
        task, as Demšar (2006, section 3.1.3) compares two classifiers over data sets (seed i of one
        candidate and seed i of the other are not a pair, and the seeds of one task are not independent
        data sets). With n tasks the smallest two-sided p-value is 2 / 2^n, before Holm's correction
        multiplies it by up to the number of candidates tested: none with fewer than two paired tasks."""
        if self.baseline is None:
            return {}
        raw = {}
        for c in self.candidates:
            if c == self.baseline:
                continue
            cells = [(self.cells[t, c], self.cells[t, self.baseline]) for t in self.tasks]
            pairs = [(x.result, y.result) for x, y in cells if x.result is not None and y.result is not None]
            if len(pairs) >= 2:
                a, b = zip(*pairs, strict=True)
                raw[c] = float(_stats().wilcoxon(a, b).pvalue) if a != b else 1.0
        return holm(raw)

    def mean_costs(self, candidate: str) -> dict[str, float]:
        """A candidate's cost columns averaged over the tasks it completed."""
        costs = [self.cells[t, candidate].costs for t in self.tasks if self.cells[t, candidate].costs]
        return {k: float(np.mean([c[k] for c in costs])) for k in COST_KEYS} if costs else {}

    def records(self) -> list[dict[str, Any]]:
        ranks = self.average_ranks()
        pvalues = self.versus_baseline()
        return [
            {
                "task": t,
                "candidate": c,
                "mean": cell.mean,
                "ci95": cell.ci95,
                "n": len(cell.accuracies),
                "accuracies": cell.accuracies,
                "average_rank": ranks[c],
                "p_vs_baseline": pvalues.get(c),
                "error": cell.error,
                **cell.costs,
            }
            for (t, c), cell in self.cells.items()
        ]


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (monotone, capped at 1)."""
    order = sorted(pvalues, key=pvalues.get)
    m, running, adjusted = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        adjusted[key] = running
    return adjusted


# ---------------------------------------------------------------- protocol -> pair specs


def load_protocol(source: str | os.PathLike | Mapping[str, Any], registry: Registry) -> tuple[_Protocol, dict]:
    """Validate a protocol and build the search spec of every (task, candidate) pair (relative
    paths in its tasks are read from the protocol file's folder)."""
    file, tree, folder = None, None, None
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        file, folder = str(source), Path(source).absolute().parent
        raw, tree = read_yaml(source, "protocol")
    if file and isinstance(raw, dict) and protocol_keys(raw):  # named after its file, as a search space is
        raw = {"name": name_from_file(file), **raw}
    try:
        proto = _Protocol.model_validate(raw if isinstance(raw, dict) else {})
    except ValidationError as exc:
        if file and isinstance(raw, dict) and not protocol_keys(raw):
            raise SpecError(
                f"a search space, not a comparison protocol (it has no kind or tasks): run `autonorm search {file}`",
                file=file,
            ) from None
        where, message = first_problem(exc, _Protocol)
        line, col = locate(tree, where)
        raise SpecError(message, file=file, path=".".join(map(str, where)), line=line, column=col) from None

    def fail(path: tuple, message: str) -> SpecError:
        line, col = locate(tree, path)
        return SpecError(message, file=file, path=".".join(map(str, path)), line=line, column=col)

    if proto.kind not in SEARCHED_KINDS:
        raise fail(("kind",), unknown_name_message("kind", proto.kind, SEARCHED_KINDS))
    if proto.candidates is not None and not proto.candidates:
        raise fail(("candidates",), "empty; leave the key out to compare every installed one")
    own = {} if not isinstance(proto.candidates, dict) else {n: p or {} for n, p in proto.candidates.items()}
    candidates = list(proto.candidates or registry.names(proto.kind))
    for i, name in enumerate(candidates):
        where = ("candidates", name if own else i)
        if (proto.kind, name) not in registry:
            raise fail(where, unknown_name_message(proto.kind, name, registry.names(proto.kind)))
        if name in candidates[:i]:
            raise fail(where, f"{name!r} is listed twice")
    for i, task in enumerate(proto.tasks):
        if task.name in [t.name for t in proto.tasks[:i]]:
            raise fail(("tasks", i, "name"), f"task name {task.name!r} is used twice (each task has its own studies)")
    if proto.baseline is not None and proto.baseline not in candidates:
        close = difflib.get_close_matches(proto.baseline, candidates, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise fail(("baseline",), f"baseline {proto.baseline!r} is not among the candidates {candidates}{hint}")
    for key in proto.space:
        if key.split(".")[0] == proto.kind:
            message = f"the candidates are the {proto.kind} choices compared; leave {proto.kind} out of space"
            raise fail(("space", key), message + " (give a candidate's own hyperparameters under candidates)")
    if "trials" in proto.search:
        raise fail(("search", "trials"), "a comparison's tuning trials per pair are its top-level trials")
    if "tune" not in proto.model_fields_set:  # the default tuning leaves alone what train fixes
        proto.tune = {key: value for key, value in proto.tune.items() if key not in proto.train}
    for key in proto.train.keys() & proto.tune.keys():
        raise fail(("train", key), "also in tune: a training setting is fixed in train or tuned in tune, not both")
    if not own:  # a mapping keeps each candidate's own hyperparameters; its keys are the candidates
        proto.candidates = candidates
    specs = {}
    for i, task in enumerate(proto.tasks):
        for cand in candidates:
            space = {**proto.space, proto.kind: {cand: own.get(cand, {})}}
            raw_spec = {
                "name": f"{proto.name}.{task.name}.{cand}",
                "data": task.data,
                "model": proto.model,
                "space": space,
                "train": {**proto.train, **proto.tune},
                "search": {"pruner": "none", **proto.search, "trials": proto.trials},
            }
            try:
                specs[task.name, cand] = load_spec(raw_spec, registry, folder)
            except SpecError as exc:
                if exc.path == f"space.{proto.kind}.{cand}":
                    specs[task.name, cand] = exc  # an incompatible candidate: shown in its cell
                    continue
                where = _protocol_path(exc.path, i, proto, cand)
                hint = f" (tune takes training settings: {', '.join(TRAIN_PARAMS)})" if where[0] == "tune" else ""
                raise fail(where, exc.message + hint) from None
    return proto, specs


def _protocol_path(path: str | None, task: int, proto: _Protocol, candidate: str | None = None) -> tuple:
    """Where in the protocol file a key of a pair's space is: its data in the task, its training settings
    under ``train`` or ``tune``, the candidate's own hyperparameters under ``candidates``, the rest under
    the section of the same name."""
    if not path:
        return ("tasks", task)
    section, *rest = path.split(".")
    if section == "space" and rest[:1] == [proto.kind]:
        return ("candidates", *([candidate, *rest[2:]] if isinstance(proto.candidates, dict) else []))
    if section == "data":
        return ("tasks", task, "data", *rest)
    if section == "train" and rest and rest[0] in proto.tune:
        return ("tune", *rest)
    return (section, *rest)


# ---------------------------------------------------------------- running


def check_tasks(
    source: str | os.PathLike | Mapping[str, Any],
    proto: _Protocol,
    specs: Mapping[tuple[str, str], SearchSpec | SpecError],
    registry: Registry,
) -> None:
    """Load every task's data before anything trains, so that a missing file or a task without a test
    split stops the comparison at once with an error placed in the protocol, not after hours of tuning;
    and refuse candidates that all build the same model (a kind the backbone has no slot for)."""
    file = None if isinstance(source, Mapping) else source
    for i, task in enumerate(proto.tasks):
        runnable = {c: s for (t, c), s in specs.items() if t == task.name and isinstance(s, SearchSpec)}
        if not runnable:  # no candidate can run on it: its cells say why
            continue
        try:
            data = next(iter(runnable.values())).load_data(registry)
            if len(data.x_test) == 0:
                message = "the comparison scores on a test split: give the task test_fraction > 0"
                raise SpecError(message, path="data.test_fraction")
        except SpecError as exc:
            raise placed(exc, file, ("tasks", i)) from None
        if i == 0 and proto.kind in MODEL_SLOTS and len(runnable) > 1:
            built = {first_model(s, data, registry) for s in runnable.values()}
            if len(built) == 1 and None not in built:
                model = next(iter(runnable.values())).model.name
                raise placed(same_model_error(model, proto.kind, list(runnable), "kind"), file)


def _retrain(spec: SearchSpec, config, seed: int, registry: Registry) -> dict[str, float]:
    data = load_data(config.dataset, config.val_fraction, config.test_fraction, spec.search.seed, registry)
    torch.manual_seed(seed)
    model = build_model(config, data.x_train[: int(config.train["batch_size"])], registry)
    result = fit(
        model,
        data,
        config.train,
        config.epochs,
        x_eval=data.x_test,
        y_eval=data.y_test,
        methods=build_training_methods(config, registry),
    )
    return {"test_accuracy": result.metrics["val_accuracy"], **{k: result.metrics[k] for k in COST_KEYS}}


def _tuning_failure(trials: list[TrialRecord]) -> str:
    return "; ".join(sorted({t.reason for t in trials if t.reason})) or "no tuning trial completed"


def _cell(task: str, cand: str, done: Mapping[str, dict], seeds: int) -> Cell:
    """The cell of a pair from its stored seed results: a seed not run yet, or failed, is reported."""
    runs = [done[str(s)] for s in range(seeds) if str(s) in done]
    ok = [r for r in runs if "error" not in r]
    errors = [r["error"] for r in runs if "error" in r]
    if len(runs) < seeds:
        error = f"{NOT_FINISHED}: {len(runs)} of {seeds} seeds run"
    elif errors and ok:
        error = f"{len(errors)} of {seeds} seeds failed: {errors[0]}"
    else:
        error = errors[0] if errors else None
    return Cell(
        task,
        cand,
        accuracies=[r["test_accuracy"] for r in ok],
        # the median: one seed's timing, taken while the machine did something else, says little of the method
        costs={k: float(np.median([r[k] for r in ok])) for k in COST_KEYS} if ok else {},
        error=error,
    )


def _seed_results(study: optuna.Study, best: TrialRecord) -> dict[str, dict]:
    """The stored seed results of the pair's best trial: those of a trial that is no longer the best
    (more tuning trials found a better setting) are not its results."""
    stored = study.user_attrs.get("seed_results", {})
    return {seed: r for seed, r in stored.items() if r.get("trial") == best.number}


#: The user attribute holding what a pair ran with: its space, less the number of tuning trials.
PAIR_ATTR = "pair"


def pair_identity(spec: SearchSpec) -> dict[str, Any]:
    """What a pair's numbers depend on: its search space as the protocol made it (data, model, training
    settings and ranges, candidate, search settings), all but the number of tuning trials, which may grow."""
    raw = json.loads(json.dumps(spec.raw, default=str))
    raw.get("search", {}).pop("trials", None)
    return raw


def check_unchanged(
    source: str | os.PathLike | Mapping[str, Any], proto: _Protocol, specs: Mapping[tuple[str, str], Any]
) -> None:
    """A pair's numbers come from the protocol it ran with: after a change to anything but ``trials`` and
    ``seeds`` (which extend a comparison), its stored tuning and seeds would be shown, or extended, as if
    they came from the new one. Refused, naming the key, rather than mixing two protocols in one table."""
    file = None if isinstance(source, Mapping) else source
    for i, task in enumerate(proto.tasks):
        for cand in proto.candidates:
            spec = specs[task.name, cand]
            if not isinstance(spec, SearchSpec):
                continue
            try:
                before = open_study(spec.name, spec.storage).user_attrs.get(PAIR_ATTR)
            except SpecError:  # not run yet
                continue
            now = pair_identity(spec)
            if before is None or before == now:
                continue
            key, old, new = _first_difference(before, now)
            where = _protocol_path(key, i, proto, cand)
            message = (
                f"pair {task.name}/{cand} ran with {old!r}, the protocol now gives {new!r}: its numbers would mix "
                "two protocols; set it back, or give the comparison another name"
            )
            raise placed(SpecError(message, path=".".join(map(str, where))), file)


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, Any, Any]:
    """The first dotted key whose value differs between two nested mappings, and both values (None: absent)."""
    flat_a, flat_b = _flat(a), _flat(b)
    key = next(k for k in sorted(flat_a.keys() | flat_b.keys()) if flat_a.get(k) != flat_b.get(k))
    return key, flat_a.get(key), flat_b.get(key)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def tag_study(spec: SearchSpec, tags: Mapping[str, Any]) -> None:
    """Mark a pair's study with its comparison, kind, task and candidate (Optuna user attributes)."""
    study = open_search_study(spec)
    for key, value in tags.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def run_pair(
    task: str, cand: str, spec: SearchSpec, seeds: int, registry: Registry, tags: Mapping[str, str] | None = None
) -> Cell:
    """Tune, then retrain the best setting once per seed; finished seeds are kept on the study."""
    tag_study(spec, tags or {"task": task, "candidate": cand})
    results = search(spec, registry=registry)
    best = results.best
    if best is None:
        return Cell(task, cand, error=_tuning_failure(results.trials))
    study = open_search_study(spec)
    done = _seed_results(study, best)
    for seed in range(seeds):
        if str(seed) not in done:
            try:
                done[str(seed)] = {"trial": best.number, **_retrain(spec, best.config, seed, registry)}
            except TrialFailed as exc:
                done[str(seed)] = {"trial": best.number, "error": str(exc)}
            study.set_user_attr("seed_results", done)
    return _cell(task, cand, done, seeds)


def stored_pair(task: str, cand: str, spec: SearchSpec, seeds: int) -> Cell:
    """What the storage holds for a pair, without training anything."""
    try:
        study = open_study(spec.name, spec.storage)
    except SpecError as exc:
        if exc.path not in ("study", "storage"):  # an unreachable database is an error, not "not run yet"
            raise
        return Cell(task, cand, error=NOT_RUN)
    results = results_of(study, spec.storage)
    tuned = sum(t.counts_as_done for t in results.trials)
    if tuned < spec.search.trials:
        return Cell(task, cand, error=f"{NOT_FINISHED}: tuning, {tuned} of {spec.search.trials} trials run")
    if results.best is None:
        return Cell(task, cand, error=_tuning_failure(results.trials))
    return _cell(task, cand, _seed_results(study, results.best), seeds)


def compare(
    source: str | os.PathLike | Mapping[str, Any],
    registry: Registry | None = None,
    on_cell: Callable[[Cell], None] | None = None,
) -> Comparison:
    """Run (or resume) a comparison protocol and return its table; ``on_cell`` sees each finished pair.

    >>> table = autonorm.compare("search_spaces/compare_normalizations.yaml")  # doctest: +SKIP
    >>> table.records()[0]["mean"]  # doctest: +SKIP
    """
    registry = registry or get_registry()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    proto, specs = load_protocol(source, registry)
    check_tasks(source, proto, specs, registry)
    check_unchanged(source, proto, specs)

    def pair(task: str, cand: str, spec: SearchSpec, seeds: int) -> Cell:
        tags = {"comparison": proto.name, "kind": proto.kind, "task": task, "candidate": cand}
        return run_pair(task, cand, spec, seeds, registry, {**tags, PAIR_ATTR: pair_identity(spec)})

    with _one_ray(specs.values()):
        return _table(proto, specs, pair, on_cell)


@contextmanager
def _one_ray(specs: Iterable[SearchSpec | SpecError]) -> Iterator[None]:
    """Start (or join) Ray once for a comparison whose pairs tune on Ray, rather than once per pair."""
    on_ray = [s for s in specs if isinstance(s, SearchSpec) and s.search.backend == "ray"]
    if not on_ray:
        yield
        return
    import ray

    from autonorm.backends.ray import connect  # Ray is imported only by comparisons that use it

    started = connect(on_ray[0].search.ray.address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def load_comparison(source: str | os.PathLike | Mapping[str, Any], registry: Registry | None = None) -> Comparison:
    """The table of a comparison as far as it has run, read from its storage (nothing is trained)."""
    proto, specs = load_protocol(source, registry or get_registry())
    check_unchanged(source, proto, specs)
    return _table(proto, specs, stored_pair)


def _table(
    proto: _Protocol,
    specs: Mapping[tuple[str, str], SearchSpec | SpecError],
    pair: Callable[[str, str, SearchSpec, int], Cell],
    on_cell: Callable[[Cell], None] | None = None,
) -> Comparison:
    cells = {}
    for (task, cand), spec in specs.items():
        if isinstance(spec, SpecError):
            cells[task, cand] = Cell(task, cand, error=f"incompatible: {spec.message}")
        else:
            cells[task, cand] = pair(task, cand, spec, proto.seeds)
        if on_cell is not None:
            on_cell(cells[task, cand])
    return Comparison(
        name=proto.name,
        kind=proto.kind,
        tasks=[t.name for t in proto.tasks],
        candidates=list(proto.candidates),
        baseline=proto.baseline,
        cells=cells,
        seeds=proto.seeds,
    )


def is_protocol(path: str | os.PathLike) -> bool:
    """Whether a YAML file is a comparison protocol (it has a key only protocols have: ``kind``,
    ``tasks``, ...) rather than a space."""
    try:
        raw, _ = read_yaml(path, "file")
    except SpecError:
        return False
    return bool(protocol_keys(raw))
