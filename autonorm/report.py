"""``autonorm report``: one self-contained HTML page of a study's plots.

The page holds plotly figures with plotly.js inlined once (it opens offline, and can be mailed or
archived as one file): the optimization history, the Pareto front of a multi-objective study,
hyperparameter importances, the objective per choice of every component kind that varied, and the
learning curves of the best trials. A section that cannot be drawn yet (too few trials) says why.
"""

from __future__ import annotations

import html
import itertools
import math
import os
import warnings
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from autonorm.backends.optuna import Distinct
from autonorm.comparison import COST_KEYS, Comparison
from autonorm.errors import output_file
from autonorm.results import StudyResults, TrialRecord, nondominated, results_of
from autonorm.spec import SEARCHED_KINDS

#: fANOVA needs a handful of completed trials before its importances mean anything.
MIN_TRIALS_FOR_IMPORTANCE = 4
#: Learning curves drawn in colour; the other completed trials are drawn faintly behind them.
TOP_CURVES = 5
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1.5rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #555; } .note { color: #8a5a00; background: #fff8e5; padding: 0.5rem 0.8rem; border-radius: 4px; }
table { border-collapse: collapse; font-size: 0.9rem; } td, th { padding: 0.25rem 0.6rem; text-align: left; }
tr:nth-child(even) { background: #f5f5f5; } th { border-bottom: 2px solid #ccc; }
"""


def write_report(source: optuna.Study | Comparison, path: str | os.PathLike, storage: str = "") -> Path:
    """Write the report of a study or a comparison to ``path`` (an ``.html`` file) and return the path."""
    out = output_file(path)
    page = render_comparison_report(source) if isinstance(source, Comparison) else render_report(source, storage)
    out.write_text(page)
    return out


def render_report(study: optuna.Study, storage: str = "") -> str:
    """The report page as one HTML string."""
    results = results_of(study, storage)
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    page = _Page()
    page.html(_header(results))
    page.section("Leaderboard", _leaderboard(results))
    if results.failures():
        page.section("Failed, diverged and incompatible trials", _failures(results))
    page.section("Optimization history", _history(results))
    if results.multi_objective:
        page.section("Pareto front", _pareto(results))
    page.section("Hyperparameter importance", _importances(study, results))
    page.section("Objective by choice", _by_choice(results))
    page.section("Learning curves of the best trials", _curves(results, frozen))
    return page.render(f"autonorm report: {results.name}")


def render_comparison_report(comparison: Comparison) -> str:
    """The page of a comparison: its table, the test accuracies of every seed by task, the average ranks."""
    page = _Page()
    base = f" &middot; baseline {html.escape(comparison.baseline)}" if comparison.baseline else ""
    page.html(
        f"<h1>{html.escape(comparison.name)}</h1>"
        f'<p class="meta">{html.escape(comparison.kind)} compared over {len(comparison.tasks)} tasks and '
        f"{comparison.seeds} seeds per setting, on the held-out test split{base}</p>"
    )
    page.section("Test accuracy, mean ± 95% confidence interval", _comparison_table(comparison))
    page.section("Test accuracy of every seed", _seed_boxes(comparison))
    ranks = comparison.average_ranks()
    order = sorted(ranks, key=ranks.get)
    colours = [_PALETTE[1] if c == comparison.baseline else _PALETTE[0] for c in order]
    fig = go.Figure(go.Bar(x=order, y=[ranks[c] for c in order], marker_color=colours))
    baseline = f"; {comparison.baseline}, the baseline, in orange" if comparison.baseline else ""
    fig.update_layout(title=f"average rank across tasks (1 is best{baseline})", yaxis_title="average rank")
    page.section("Average rank", fig)
    return page.render(f"autonorm comparison: {comparison.name}")


def _comparison_table(comparison: Comparison) -> str:
    ranks, pvalues = comparison.average_ranks(), comparison.versus_baseline()
    rows = []
    for cand in sorted(comparison.candidates, key=ranks.get):
        cells = [comparison.cells[t, cand] for t in comparison.tasks]
        shown = [c.shown(4) for c in cells]  # with the seeds that failed or did not run yet, if any
        cost = comparison.mean_costs(cand)
        p = "baseline" if cand == comparison.baseline else _fmt(pvalues.get(cand))
        rank = "-" if math.isnan(ranks[cand]) else f"{ranks[cand]:.2f}"
        rows.append((cand, *shown, rank, p, *(_fmt(cost.get(k)) for k in COST_KEYS)))
    columns = (comparison.kind, *comparison.tasks, "average rank", "p (Wilcoxon, Holm)", *COST_KEYS)
    friedman = comparison.friedman()
    test = (
        f"Friedman test over tasks: chi2 = {friedman[0]:.3f}, p = {friedman[1]:.4g}."
        if friedman
        else "Friedman test over tasks: needs at least 2 tasks and 3 candidates that completed them all."
    )
    return _table(columns, rows) + f"<p>{html.escape(test)}</p>"


def _seed_boxes(comparison: Comparison) -> Part:
    cols = min(3, len(comparison.tasks))
    rows = math.ceil(len(comparison.tasks) / cols)
    titles = []  # a candidate without any seed's accuracy on a task is named there, not silently missing
    for task in comparison.tasks:
        missing = [c for c in comparison.candidates if not comparison.cells[task, c].accuracies]
        shown = "every candidate" if len(missing) == len(comparison.candidates) else ", ".join(missing)
        titles.append(f"{task} (no result: {shown})" if missing else task)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles)
    for i, task in enumerate(comparison.tasks):
        row, col = divmod(i, cols)
        for j, cand in enumerate(comparison.candidates):  # one colour per candidate across the tasks
            colour = qualitative.Plotly[j % len(qualitative.Plotly)]
            accuracies = comparison.cells[task, cand].accuracies
            box = go.Box(y=accuracies, name=cand, boxpoints="all", pointpos=0, showlegend=False, marker_color=colour)
            fig.add_trace(box, row=row + 1, col=col + 1)
        fig.update_yaxes(title_text="test accuracy", row=row + 1, col=col + 1)
    fig.update_layout(height=380 * rows)
    return fig


# ------------------------------------------------------------------ page assembly

Part = go.Figure | str  # a figure, or an HTML fragment (a note or a table)


class _Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.js_included = False

    def html(self, fragment: str) -> None:
        self.parts.append(fragment)

    def section(self, title: str, part: Part) -> None:
        self.parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(part, str):
            self.parts.append(part)
            return
        part.update_layout(template="plotly_white", margin={"t": 60, "b": 50})
        self.parts.append(
            part.to_html(full_html=False, include_plotlyjs=not self.js_included, config={"displaylogo": False})
        )
        self.js_included = True

    def render(self, title: str) -> str:
        body = "\n".join(self.parts)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
        )


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _label(t: TrialRecord) -> str:
    return f"#{t.number} {t.summary}" if t.summary else f"#{t.number}"


def _fmt(value: float | None) -> str:
    """4 significant digits; a whole number as it is (a parameter count: 77082, not 7.708e+04)."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


# ------------------------------------------------------------------ sections


def _header(results: StudyResults) -> str:
    goals = ", ".join(f"{o} ({d})" for o, d in zip(results.objectives, results.directions, strict=True))
    n = len(results.trials)
    lines = [
        f"<h1>{html.escape(results.name)}</h1>",
        f'<p class="meta">{n} trial{"s" if n != 1 else ""} ({results.counts()}) '
        f"&middot; objectives: {html.escape(goals)}"
        + (f" &middot; storage {html.escape(results.storage)}" if results.storage else "")
        + "</p>",
    ]
    best = results.best
    if best is not None and best.config is not None:
        rows = [("trial", str(best.number)), (results.objective, _fmt(best.value))]
        rows += [(kind, _choice(c.name, c.params)) for kind, c in best.config.components.items()]
        rows += [
            ("train", ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in best.config.train.items()))
        ]
        title = f"best by {results.objective}" if results.multi_objective else "best configuration"
        lines.append(f"<h2>{html.escape(title)}</h2>" + _table(("", ""), rows, header=False))
    return "\n".join(lines)


def _choice(name: str, params: dict) -> str:
    inner = ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in params.items())
    return f"{name}({inner})" if inner else name


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]], header: bool = True) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _leaderboard(results: StudyResults, limit: int = 10) -> str:
    ranked = results.leaderboard(limit)
    if not ranked:
        return _note("No trial has reported a value yet.")
    metrics = [m for m in ("params", "latency_ms", "train_seconds") if m not in results.objectives]
    columns = ("trial", "state", *results.objectives, *metrics, "configuration")
    rows = []
    for t in ranked:
        values = t.values if t.values else (t.value, *([None] * (len(results.objectives) - 1)))
        rows.append(
            (
                str(t.number),
                t.state,
                *(_fmt(v) for v in values),
                *(_fmt(t.metrics.get(m)) for m in metrics),
                t.summary or "-",
            )
        )
    return _table(columns, rows)


def _failures(results: StudyResults) -> str:
    rows = [(", ".join(map(str, n)), summary or "-", reason or "-") for n, summary, reason in results.failure_groups()]
    return _table(("trial", "configuration", "reason"), rows)


def _history(results: StudyResults) -> Part:
    done = [t for t in results.trials if t.state in ("complete", "pruned") and t.value is not None]
    if not done:
        return _note("No trial has completed or been pruned with a value yet.")
    fig = go.Figure()
    for state, colour in (("complete", "#1f77b4"), ("pruned", "#bbbbbb")):
        shown = [t for t in done if t.state == state]
        if shown:
            fig.add_trace(
                go.Scatter(
                    x=[t.number for t in shown],
                    y=[t.value for t in shown],
                    mode="markers",
                    name=state if state == "complete" else "pruned (last reported value)",
                    marker={"color": colour, "size": 9},
                    text=[_label(t) for t in shown],
                    hovertemplate="%{text}<br>%{y:.4g}<extra></extra>",
                )
            )
    complete = [t for t in done if t.state == "complete"]
    if complete:
        pick = max if results.direction == "maximize" else min
        xs = [t.number for t in complete]
        ys = list(itertools.accumulate((t.value for t in complete), pick))
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines", name="best so far", line={"shape": "hv", "color": "#d62728"})
        )
    fig.update_layout(title=f"{results.objective} per trial", xaxis_title="trial", yaxis_title=results.objective)
    fig.update_xaxes(tickformat="d", **_whole_ticks(max(t.number for t in done)))
    return fig


def _whole_ticks(largest: int) -> dict[str, int]:
    """An axis of whole numbers up to ``largest`` ticks every one while they are few (Plotly would tick
    halves, shown as repeated whole numbers)."""
    return {"dtick": 1} if largest <= 20 else {}


def _pareto(results: StudyResults) -> Part:
    complete = [t for t in results.trials if t.state == "complete" and len(t.values) == len(results.objectives)]
    complete = [t for t in complete if t.repeat_of is None]
    if not complete:
        return _note("No trial has completed yet.")
    on_front = {t.number for t in results.pareto_front}
    first, others = results.objectives[0], results.objectives[1:]
    fig = make_subplots(rows=1, cols=len(others), subplot_titles=[f"{first} vs {o}" for o in others])
    for col, other in enumerate(others, 1):
        k = results.objectives.index(other)
        plane = nondominated(complete, results.directions, (0, k))
        # the step between two front points turns at the corner both dominate: across first when the
        # x objective is minimized, along it when maximized
        shape = "hv" if results.directions[k] == "minimize" else "vh"
        rest, front = [t for t in complete if t.number not in on_front], [t for t in complete if t.number in on_front]
        for trials, name, mode, style in (
            (rest, "dominated", "markers", {"color": "#bbbbbb", "size": 8}),
            (front, "Pareto front", "markers", {"color": "#d62728", "size": 11}),
            (sorted(plane, key=lambda t: t.values[k]), "front in this plane", "lines", None),
        ):
            if not trials or (name == "front in this plane" and len(trials) < 2):
                continue
            fig.add_trace(
                go.Scatter(
                    x=[t.values[k] for t in trials],
                    y=[t.values[0] for t in trials],
                    mode=mode,
                    line={"shape": shape, "color": "#d62728", "width": 1.5} if mode == "lines" else None,
                    name=name,
                    legendgroup="Pareto front" if name == "front in this plane" and len(others) == 1 else name,
                    showlegend=col == 1 and (name != "front in this plane" or len(others) > 1),
                    marker=style,
                    text=[_label(t) for t in trials],
                    hovertemplate="%{text}<br>" + f"{other}=%{{x:.4g}}<br>{first}=%{{y:.4g}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=other, row=1, col=col)
        fig.update_yaxes(title_text=first, row=1, col=col)
    fig.update_layout(title=f"{len(on_front)} Pareto-optimal of {len(complete)} completed trials")
    return fig


def _importances(study: optuna.Study, results: StudyResults) -> Part:
    n = results.count("complete")
    if n < MIN_TRIALS_FOR_IMPORTANCE:
        return _note(
            f"Importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials; this study has {n}. "
            "Run more trials and render the report again."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(
                Distinct(study),  # a repeated configuration is one measurement, not several
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t: t.values[0],
            )
    except (RuntimeError, ValueError) as exc:
        return _note(f"Importances could not be computed: {exc}")
    if not importances:
        return _note("No hyperparameter was sampled in every completed trial, so none can be compared.")
    names = list(reversed(importances))
    fig = go.Figure(go.Bar(x=[importances[k] for k in names], y=names, orientation="h", marker={"color": "#1f77b4"}))
    fig.update_layout(
        title=f"fANOVA importance for {results.objective} (a component's own hyperparameters, set only when "
        "it is chosen, are left out)",
        xaxis_title="share of the variance explained",
        height=max(300, 60 + 32 * len(names)),
    )
    return fig


def _by_choice(results: StudyResults) -> Part:
    complete = [
        t
        for t in results.trials
        if t.state == "complete" and t.config is not None and t.value is not None and t.repeat_of is None
    ]
    varied = [k for k in SEARCHED_KINDS if len({_kind_choice(t, k) for t in complete}) > 1]
    if not varied:
        return _note("No component kind varied among the completed trials.")
    cols = min(3, len(varied))
    rows = math.ceil(len(varied) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=varied)
    for i, kind in enumerate(varied):
        row, col = divmod(i, cols)
        names = sorted({_kind_choice(t, kind) for t in complete})
        for name in names:
            chosen = [t for t in complete if _kind_choice(t, kind) == name]
            fig.add_trace(
                go.Box(
                    y=[t.value for t in chosen],
                    name=name,
                    boxpoints="all",
                    jitter=0.4,
                    pointpos=0,
                    text=[_label(t) for t in chosen],
                    hovertemplate="%{text}<br>%{y:.4g}<extra></extra>",
                    showlegend=False,
                ),
                row=row + 1,
                col=col + 1,
            )
        fig.update_yaxes(title_text=results.objective, row=row + 1, col=col + 1)
    fig.update_layout(title=f"{results.objective} of completed trials by choice", height=380 * rows)
    return fig


def _kind_choice(t: TrialRecord, kind: str) -> str:
    choice = t.config.components.get(kind) if t.config else None
    return choice.name if choice is not None else "(excluded)"


def _curves(results: StudyResults, frozen: dict[int, FrozenTrial]) -> Part:
    complete = [t for t in results.leaderboard() if t.state == "complete"]
    histories = {
        t.number: frozen[t.number].user_attrs["history"]
        for t in complete
        if frozen[t.number].state == TrialState.COMPLETE and frozen[t.number].user_attrs.get("history")
    }
    if not histories:
        return _note("No completed trial recorded a learning curve.")
    first = next(iter(histories.values()))[0]
    metric = results.objective if results.objective in first else "val_accuracy"
    panels = [metric, *[m for m in ("val_accuracy", "val_loss") if m != metric and m in first][:1]]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels)
    top = [t for t in complete if t.number in histories][:TOP_CURVES]
    faint = [t for t in complete if t.number in histories][TOP_CURVES:]
    for col, key in enumerate(panels, 1):
        for t in faint:
            fig.add_trace(_curve(histories[t.number], key, t, None), row=1, col=col)
        for t, colour in zip(top, _PALETTE, strict=False):
            fig.add_trace(_curve(histories[t.number], key, t, colour, legend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col, **_whole_ticks(max(map(len, histories.values()))))
    fig.update_layout(
        title=f"top {len(top)} trial{'s' if len(top) > 1 else ''} by {results.objective}"
        + (" (others in grey)" if faint else ""),
        height=520,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _curve(history: list[dict], key: str, t: TrialRecord, colour: str | None, legend: bool = False) -> go.Scatter:
    """One trial's curve: in ``colour``, or faint grey when None."""
    faint = colour is None
    return go.Scatter(
        x=list(range(1, len(history) + 1)),
        y=[h.get(key) for h in history],
        mode="lines" if faint else "lines+markers",
        name=_label(t),
        legendgroup=str(t.number),
        showlegend=legend and not faint,
        line={"color": "rgba(150,150,150,0.35)", "width": 1} if faint else {"color": colour, "width": 2},
        hovertemplate=f"{html.escape(_label(t))}<br>epoch %{{x}}: %{{y:.4g}}<extra></extra>",
    )
