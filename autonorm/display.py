"""What the commands print: rich tables for plugins and leaderboards, and the live search progress."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import optuna
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autonorm.data import Data
from autonorm.registry import Registry, get_registry
from autonorm.results import StudyResults, TrialRecord
from autonorm.spec import SEARCHED_KINDS, TRAIN_PARAMS, SearchSpec


def plugins_table(registry: Registry, kind: str | None = None) -> Table:
    table = Table(title="autonorm components", title_justify="left")
    for column in ("kind", "name", "package", "batch stats", "parameters (default in search range)", "summary"):
        table.add_column(column, overflow="fold")
    for comp in registry.components(kind):
        params = "\n".join(f"{k}: {p}" for k, p in comp.params.items()) or "-"
        package = f"{comp.package} {comp.version}".strip() or comp.plugin
        declared = (("requires", comp.requires), ("excludes", comp.excludes))
        rules = [f"{word} {', '.join(names)}" for word, names in declared if names]
        summary = "\n".join(filter(None, [comp.summary, *rules]))
        table.add_row(comp.kind, comp.name, package, "yes" if comp.batch_dependent else "no", params, summary)
    return table


def failures_table(registry: Registry) -> Table:
    table = Table(title="plugins that failed to load", title_justify="left", style="red")
    for column in ("plugin", "package", "error"):
        table.add_column(column, overflow="fold")
    for failure in registry.failures:
        where = f" (at {failure.where})" if failure.where else ""
        table.add_row(failure.plugin, failure.package or "-", failure.error + where)
    return table


def data_line(name: str, data: Data) -> str:
    """A study's split in a line (``digits: 1149 train / 288 validation / 360 test, 1x8x8, 10 classes``)."""
    shape = "x".join(map(str, data.input_shape))
    sizes = f"{len(data.x_train)} train / {len(data.x_val)} validation / {len(data.x_test)} test"
    return f"{name}: {sizes}, {shape}, {data.num_classes} classes"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def leaderboard_table(results: StudyResults, limit: int = 10) -> Table:
    """Best trials first, with every objective; of the model's hyperparameters, the component kinds and the
    training settings, only those that vary are shown, and then the costs not already shown."""
    configs = [t.config for t in results.trials if t.config is not None]
    model_keys = sorted({k for c in configs for k in c.model.params})
    model_keys = [k for k in model_keys if len({repr(c.model.params.get(k)) for c in configs}) > 1]
    kinds = [k for k in SEARCHED_KINDS if len({_choice(c.components.get(k)) for c in configs}) > 1]
    varying = {kind: _varying(configs, kind) for kind in kinds}
    train_keys = [k for k in TRAIN_PARAMS if len({repr(c.train.get(k)) for c in configs}) > 1]
    epochs = ["epochs"] if len({c.epochs for c in configs}) > 1 else []  # a space edited between sessions
    table = Table(  # rules between the header and the rows only: the columns get the room borders would take
        title=f"{results.name}: top {limit} by {results.objective} ({results.direction})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    pareto = {t.number for t in results.pareto_front} if results.multi_objective else None
    states = ["state", "pareto"] if pareto is not None else ["state"]
    costs = [(key, header) for key, header in _COSTS if key not in results.objectives]
    columns = ("#", "trial", *states, *results.objectives, *model_keys, *kinds, *train_keys, *epochs)
    for column in (*columns, *(header for _, header in costs)):
        table.add_column(column, justify="right" if column in ("#", "trial") else "left", overflow="fold")
    for rank, t in enumerate(results.leaderboard(limit), 1):
        comps = t.config.components if t.config else {}
        train = t.config.train if t.config else {}
        model = t.config.model.params if t.config else {}
        values = t.values if t.values else (t.value,)  # a pruned trial: its last reported value
        table.add_row(
            str(rank),
            str(t.number),
            t.state,
            *(["yes" if t.number in pareto else ""] if pareto is not None else []),
            *(_metric(key, values[i] if i < len(values) else None) for i, key in enumerate(results.objectives)),
            *(_fmt(model.get(key), 3) for key in model_keys),
            *(_choice(comps.get(kind), varying[kind]) for kind in kinds),
            *(_fmt(train.get(key), 3) for key in train_keys),
            *([str(t.config.epochs) if t.config else "-"] if epochs else []),
            *(_metric(key, t.metrics.get(key), 3) for key, _ in costs),
        )
    return table


#: The costs every trial records, and their column headers.
_COSTS = (("params", "params"), ("train_seconds", "train s"), ("latency_ms", "latency ms"))


def _metric(key: str, value: float | None, digits: int = 4) -> str:
    """A metric's value as the leaderboard shows it: a parameter count whole."""
    return _fmt(int(value) if key == "params" and value is not None else value, digits)


def pareto_table(results: StudyResults) -> Table:
    """The trials of a multi-objective study that no other trial beats on every objective."""
    arrows = {"maximize": "↑", "minimize": "↓"}
    table = Table(
        title=f"{results.name}: Pareto front over "
        + ", ".join(f"{o} {arrows[d]}" for o, d in zip(results.objectives, results.directions, strict=True)),
        title_justify="left",
    )
    for column in ("trial", *results.objectives, "configuration"):
        table.add_column(column, justify="right" if column != "configuration" else "left", overflow="fold")
    for t in results.pareto_front:
        table.add_row(str(t.number), *(_fmt(v) for v in t.values), t.summary or "-")
    return table


def _reason(record: TrialRecord) -> str | None:
    """Why a trial ended as it did: its recorded reason, or for one the pruner stopped, when."""
    if record.reason is not None or record.state != "pruned":
        return record.reason
    if record.epochs_done:
        return f"pruned after epoch {record.epochs_done}"
    return "pruned" if record.repeat_of is None else f"same configuration as trial {record.repeat_of}, which was pruned"


def trial_json(record: TrialRecord, objectives: list[str]) -> str:
    """One finished trial as a line of JSON, for scripts and CI logs."""
    values = dict(zip(objectives, record.values, strict=False)) if record.values else None
    return json.dumps(
        {
            "number": record.number,
            "state": record.state,
            "value": record.value,
            "values": values,
            "reason": _reason(record),
            "summary": record.summary,
            "repeat_of": record.repeat_of,
            "promoted_from": record.promoted_from,
            "config": record.config.model_dump(mode="json") if record.config else None,
            "metrics": record.metrics,
        }
    )


class JsonLinesReporter:
    """Writes one JSON object per finished trial to ``stream``; use its :meth:`callback` with Optuna."""

    def __init__(self, objectives: list[str], stream: IO[str] | None = None) -> None:
        self.objectives = objectives
        self.stream = stream

    def callback(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        stream = self.stream or sys.stdout  # looked up per call, so redirections made later still apply
        stream.write(trial_json(TrialRecord.from_frozen(trial), self.objectives) + "\n")
        stream.flush()


def _choice(choice: Any, shown: Callable[[str, str], bool] = lambda name, key: True) -> str:
    """``name(key=value, ...)`` of a component choice, with the hyperparameters ``shown`` keeps."""
    if choice is None:
        return "-"
    params = ", ".join(f"{k}={_fmt(v, 3)}" for k, v in choice.params.items() if shown(choice.name, k))
    return f"{choice.name}({params})" if params else choice.name


def _varying(configs: list[Any], kind: str) -> Callable[[str, str], bool]:
    """Whether a component's hyperparameter takes more than one value among the configurations that chose
    it, or another than its declared default: a leaderboard column shows those only
    (``groupnorm(groups=4)``, not ``elu(alpha=1)`` on every row)."""
    values: dict[tuple[str, str], set[str]] = {}
    for config in configs:
        choice = config.components.get(kind)
        for key, value in (choice.params.items() if choice is not None else ()):
            values.setdefault((choice.name, key), set()).add(repr(value))

    def default(name: str, key: str) -> str | None:
        try:
            return repr(get_registry().get(kind, name).params[key].default)
        except KeyError:  # a plugin not installed here, or a parameter it no longer declares
            return None

    def shown(name: str, key: str) -> bool:
        seen = values.get((name, key), set())
        return len(seen) > 1 or seen != {default(name, key)}

    return shown


def failed_table(results: StudyResults) -> Table | None:
    groups = results.failure_groups()
    if not groups:
        return None
    table = Table(title="failed, diverged and incompatible trials", title_justify="left", style="yellow")
    table.add_column("trial", justify="right")
    table.add_column("configuration")
    table.add_column("reason", overflow="fold")
    for numbers, summary, reason in groups:
        table.add_row(", ".join(map(str, numbers)), summary or "-", reason or "-")
    return table


def best_panel(best: TrialRecord | None, objective: str) -> Panel:
    if best is None or best.config is None:
        return Panel("no trial completed", title="best configuration")
    lines = [f"trial {best.number}: {objective} = {_fmt(best.value)}", f"model: {_choice(best.config.model)}"]
    lines += [f"{kind}: {_choice(c)}" for kind, c in best.config.components.items()]
    lines.append("train: " + ", ".join(f"{k}={_fmt(v, 3)}" for k, v in best.config.train.items()))
    return Panel("\n".join(lines), title="best configuration", title_align="left")


def summary(results: StudyResults) -> str:
    repeats = sum(t.repeat_of is not None for t in results.trials)
    reused = f"; {repeats} repeated an earlier configuration and reused its outcome" if repeats else ""
    return f"study {results.name} in {results.storage}: {len(results.trials)} trials ({results.counts()}{reused})"


class SearchProgress:
    """A live progress bar over the trials of one search; use its :meth:`callback` with Optuna."""

    def __init__(self, spec: SearchSpec, earlier: Sequence[TrialRecord], console: Console) -> None:
        """``earlier``: the trials the study already holds (a resumed search counts from them)."""
        self.spec = spec
        self.console = console
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}
        self.best: float | None = None
        for record in earlier:
            self._count(record)
        already_done = sum(record.counts_as_done for record in earlier)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task(spec.name, total=spec.search.trials, completed=already_done, status="")
        self.live = Live(Group(self.progress), console=console, refresh_per_second=4, transient=False)
        self.started = time.perf_counter()

    def __enter__(self) -> SearchProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)
        if not self.console.is_terminal:  # rich leaves the last frame without its line end off a terminal
            self.console.line()

    def _count(self, record: TrialRecord) -> None:
        if record.counts_as_done and record.state in self.counts:
            self.counts[record.state] += 1
        if record.state == "complete" and record.value is not None:
            better = self.best is None or (
                record.value > self.best if self.spec.search.direction == "maximize" else record.value < self.best
            )
            self.best = record.value if better else self.best

    def callback(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Counted from the study, not from the trials this process ran: workers that joined the search
        (``autonorm worker``) finish trials too."""
        records = [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)]
        self.counts, self.best = dict.fromkeys(self.counts, 0), None
        for record in records:
            self._count(record)
        status = " ".join(f"{n} {s}" for s, n in self.counts.items())
        best = f" best {self.spec.search.objectives[0]}={self.best:.4g}" if self.best is not None else ""
        if self.spec.search.multi_objective and self.best is not None:
            front = [t for t in study.best_trials if "repeat_of" not in t.user_attrs]  # as `autonorm results`
            best += f", Pareto front {len(front)} trials"
        done = sum(record.counts_as_done for record in records)
        self.progress.update(self.task, completed=done, status=status + best)


def _comparison_cell(cell: Any) -> str:
    """``mean ± ci``, with the seeds that failed or did not run yet; the reason of a failure."""
    if cell.mean is None:
        return f"[red]{escape(cell.error or 'no result')}[/red]"
    return escape(cell.shown(3)) if cell.error is None else f"[yellow]{escape(cell.shown(3))}[/yellow]"


def comparison_table(comparison: Any) -> Table:
    """Mean test accuracy +- 95% CI per task and candidate, average rank, p vs baseline and costs."""
    ranks = comparison.average_ranks()
    pvalues = comparison.versus_baseline()
    seeds = comparison.seeds
    caption = f"test accuracy, mean ± 95% CI over {seeds} seeds" if seeds > 1 else "test accuracy of 1 seed"
    caption += "; rank 1 is best"
    if comparison.baseline:
        caption += f"; p: Wilcoxon vs {comparison.baseline} over the tasks, Holm-corrected"
    table = Table(
        title=f"{comparison.name}: {comparison.kind} compared on test accuracy",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    # every column may wrap: a narrow terminal or a log (120 columns) must not lose the last ones
    table.add_column(comparison.kind, no_wrap=True, min_width=max(map(len, [comparison.kind, *comparison.candidates])))
    for task in comparison.tasks:
        table.add_column(task, overflow="fold")
    for column in ("rank", "p", "params", "train s", "latency ms"):
        table.add_column(column, justify="right", overflow="fold")
    for cand in sorted(comparison.candidates, key=ranks.get):
        cells = [comparison.cells[t, cand] for t in comparison.tasks]
        shown = [_comparison_cell(c) for c in cells]
        mean_cost = comparison.mean_costs(cand)
        p = "baseline" if cand == comparison.baseline else _fmt(pvalues.get(cand), 3)
        table.add_row(
            cand,
            *shown,
            "-" if math.isnan(ranks[cand]) else f"{ranks[cand]:.2f}",
            p,
            _fmt(int(mean_cost["params"]) if "params" in mean_cost else None),
            _fmt(mean_cost.get("train_seconds"), 3),
            _fmt(mean_cost.get("latency_ms"), 3),
        )
    return table
