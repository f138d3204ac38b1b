"""The ``autonorm`` command. User errors print one located line and exit 2; bugs keep their traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import optuna
import torch
from rich.console import Console
from rich.markup import escape

from autonorm import __version__, display
from autonorm.api import run
from autonorm.backends.optuna import open_search_study
from autonorm.backends.workers import STORAGE_ENV, run_worker, worker_spec
from autonorm.comparison import Comparison, check_tasks, compare, is_protocol, load_comparison, load_protocol
from autonorm.errors import SpecError, output_file
from autonorm.final import train
from autonorm.interrupts import interrupted_once, stop_if_interrupted
from autonorm.registry import KINDS, get_registry, unknown_name_message
from autonorm.results import METRIC_KEYS, StudyResults, TrialRecord, load_study, locate_study, open_study, results_of
from autonorm.space import check_choices_matter
from autonorm.spec import load_spec
from autonorm.storage import check_shareable, mask_url
from autonorm.testing import CHECKED_KINDS, check_component
from autonorm.trainer import resolve_device
from autonorm.yamlfile import placed


def _study_args(parser: argparse.ArgumentParser, protocol: bool = True) -> None:
    what = "study name, its SQLite file (NAME.db), the search-space YAML file that made it" + (
        ", or a comparison protocol" if protocol else ""
    )
    parser.add_argument("study", help=what)
    parser.add_argument("--storage", help="storage URL (default: sqlite:///STUDY.db, or the space's search.storage)")


def _load(args: argparse.Namespace) -> StudyResults:
    return load_study(args.study, args.storage)


def cmd_search(args: argparse.Namespace, console: Console) -> int:
    if args.jsonl:  # stdout carries only the JSON lines; everything else goes to stderr, unwrapped for logs
        console = Console(stderr=True, soft_wrap=True)
    registry = get_registry()
    spec = load_spec(args.space, registry)
    try:
        spec.override(trials=args.trials, storage=args.storage, workers=args.workers)
    except SpecError as exc:  # an option's value: name the option
        exc.path = "--" + (exc.path or "").removeprefix("search.")
        raise
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # a missing or bad data file, or a kind the backbone ignores, stops the search before it opens its study
    check_choices_matter(spec, spec.load_data(registry), registry)
    local_cuda = spec.search.backend == "optuna" and spec.train_options.get("device") == "cuda"
    if local_cuda and not torch.cuda.is_available():  # else every trial would fail on it
        no_cuda = SpecError("'cuda', but this machine has no CUDA device: use auto or cpu", path="train.device")
        raise placed(no_cuda, spec.source)
    try:
        if spec.search.backend == "optuna":
            check_shareable(spec.storage, spec.search.workers)
        earlier = [TrialRecord.from_frozen(t) for t in open_search_study(spec).get_trials(deepcopy=False)]
    except SpecError as exc:  # the storage: name where it was given, the command line or the file
        if exc.path == "search.storage" and not exc.file:
            exc.path, exc.file = ("--storage", None) if args.storage else (exc.path, spec.source)
        raise
    already = sum(r.counts_as_done for r in earlier)
    if already >= spec.search.trials:  # no workers, no progress bar: what the study holds
        console.print(f"study {spec.name} has {already} trials done, {spec.search.trials} asked: nothing to run")
        return _shown(results_of(open_search_study(spec), spec.storage), args, console)
    if already:
        console.print(f"resuming study {spec.name}: {already} of {spec.search.trials} trials already done")
    device = spec.train_options.get("device", "auto")
    local = spec.search.backend == "optuna"  # Ray's trials may run on other machines, with CUDA
    if local and spec.train_options.get("amp") and device != "cuda" and resolve_device(device).type != "cuda":
        console.print("note: amp is CUDA's (bf16 autocast); trials here train on the CPU, without it")
    if spec.search.multi_objective and spec.search.pruner != "none":
        console.print(
            f"note: Optuna cannot prune a multi-objective search; pruner {spec.search.pruner!r} is off "
            "and every trial trains all its epochs"
        )
    # Ray handles Ctrl-C itself; an Optuna search takes the first one only, and does not lose it
    optuna_backend = spec.search.backend == "optuna"
    guard = interrupted_once() if optuna_backend else nullcontext()
    stop = [stop_if_interrupted] if optuna_backend else []
    if args.jsonl:
        reporter = display.JsonLinesReporter(spec.search.objectives)
        with guard:
            results = run(spec, registry, [reporter.callback, *stop])
    elif args.quiet:
        with guard:
            results = run(spec, registry, stop)
    else:
        with guard, display.SearchProgress(spec, earlier, console) as progress:
            results = run(spec, registry, [progress.callback, *stop])
    return _shown(results, args, console)


def _shown(results: StudyResults, args: argparse.Namespace, console: Console) -> int:
    """What a search prints at its end (with --jsonl, the summary line only), and its exit code: 1 when
    no trial completed (for scripts and CI), else 0."""
    if args.jsonl:
        console.print(display.summary(results), soft_wrap=True)  # one line, for logs
    else:
        _print_results(results, args.top, console)
        console.print(display.best_panel(results.best, results.objective))
    if results.best is not None:
        return 0
    _error(f"study {results.name}: no trial completed; the reasons are listed with `autonorm results {results.name}`")
    return 1


def cmd_plugins(args: argparse.Namespace, console: Console) -> int:
    registry = get_registry()
    console.print(display.plugins_table(registry, args.kind))
    if registry.failures:
        console.print(display.failures_table(registry))
    return 0


def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    if not args.storage:
        raise SpecError(f"give the study's storage URL with --storage or the {STORAGE_ENV} variable", path="worker")
    check_shareable(args.storage, None)  # a worker shares its study with others
    registry = get_registry()
    spec = worker_spec(args.study, args.storage, registry, args.trials)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if not args.quiet:
        console.print(f"worker joined study {spec.name} in {mask_url(spec.storage)}: {spec.search.trials} trials")
    with interrupted_once():
        results = run_worker(spec, registry, callbacks=[stop_if_interrupted])
    if not args.quiet:
        console.print(display.summary(results), soft_wrap=True)  # one line, for logs
    return 0


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    registry = get_registry()
    if is_protocol(args.space):
        proto, specs = load_protocol(args.space, registry)
        check_tasks(args.space, proto, specs, registry)  # each task's data loads and has a test split
        failing = {pair: spec for pair, spec in specs.items() if isinstance(spec, SpecError)}
        console.print(
            f"[green]ok[/green] {args.space}: comparison {proto.name!r} of {proto.kind}, "
            f"{len(proto.candidates)} candidates x {len(proto.tasks)} tasks, "
            f"{proto.trials} tuning trials and {proto.seeds} seeds per pair"
        )
        console.print(f"  candidates: {', '.join(proto.candidates)}")
        console.print(f"  tasks: {', '.join(task.name for task in proto.tasks)}")
        for (task, cand), error in failing.items():
            console.print(f"  [yellow]{cand} on {task} cannot run[/yellow]: {escape(error.message)}")
        return 0
    spec = load_spec(args.space, registry)
    data = spec.load_data(registry)  # as a search does first: a missing or bad data file is found here
    check_choices_matter(spec, data, registry)
    console.print(
        f"[green]ok[/green] {args.space}: study {spec.name!r}, {spec.search.trials} trials, "
        f"storage {mask_url(spec.storage)}"
    )
    console.print(f"  data {display.data_line(spec.dataset.name, data)}")
    for kind, candidates in spec.space.items():
        # a choice that leaves this kind out altogether (FRN brings its own activation)
        without = [c.name for cands in spec.space.values() for c in cands if kind in c.component.excludes]
        note = f" (not chosen with {', '.join(without)})" if without else ""
        console.print(f"  {kind}: {', '.join(c.name for c in candidates)}{note}")
    model = [key for key, dom in spec.model.params.items() if dom.is_searched]
    if model:
        console.print(f"  model: {spec.model.name}; searched: {', '.join(model)}")
    searched = [key for key, dom in spec.train.items() if dom.is_searched]
    console.print(f"  train: {spec.epochs} epochs; searched: {', '.join(searched) or 'nothing'}")
    return 0


def cmd_results(args: argparse.Namespace, console: Console) -> int:
    if is_protocol(args.study):
        comparison = load_comparison(args.study)
        if args.jsonl:  # one line per (task, candidate) cell
            for record in comparison.records():
                print(json.dumps(record))
            return 0
        _print_comparison(comparison, console)
        return 0
    results = _load(args)
    if args.jsonl:  # every trial, as `search --jsonl` prints them
        for trial in results.trials:
            print(display.trial_json(trial, results.objectives))
        return 0
    _print_results(results, args.top, console)
    return 0


def _print_results(results: StudyResults, top: int, console: Console) -> None:
    """Summary, leaderboard, failed trials and (multi-objective) Pareto front: what search and results print."""
    console.print(display.summary(results), soft_wrap=True)  # one line, for logs
    if results.leaderboard(1):
        console.print(display.leaderboard_table(results, top))
    failed = display.failed_table(results)
    if failed is not None:
        console.print(failed)
    if results.multi_objective:
        console.print(display.pareto_table(results))


def _chosen_trial(args: argparse.Namespace, results: StudyResults) -> TrialRecord:
    """The trial ``autonorm best`` exports: by number, under metric bounds, or the best by the first objective."""
    where = f"study {results.name}"
    if args.trial is not None:
        if args.by or args.max or args.min:
            raise SpecError("--trial names the trial; --by, --max and --min choose one: give either", path="--trial")
        chosen = next((t for t in results.trials if t.number == args.trial), None)
        if chosen is None:
            raise SpecError(f"no trial {args.trial} (it has {len(results.trials)})", path=where)
        if chosen.config is None or chosen.rejected or chosen.state == "failed":
            why = f": {chosen.reason}" if chosen.reason else ""
            raise SpecError(f"trial {args.trial} did not train to a result{why}", path=where)
        return chosen
    if args.max or args.min or args.by:
        chosen = results.choose(by=args.by, at_most=dict(args.max), at_least=dict(args.min))
        if chosen is None:
            complete = [t for t in results.trials if t.state == "complete"]
            if not complete:
                raise SpecError("no completed trial yet", path=where)
            named = dict.fromkeys([args.by, *(k for k, _ in args.max + args.min)])
            unmeasured = [k for k in named if k and not any(k in t.metrics for t in complete)]
            if unmeasured:
                why = " (peak memory is measured on CUDA only)" if "peak_memory_mb" in unmeasured else ""
                raise SpecError(f"no completed trial measured {', '.join(unmeasured)}{why}", path=where)
            bounds = [f"{k} <= {v:g}" for k, v in args.max] + [f"{k} >= {v:g}" for k, v in args.min]
            raise SpecError(f"no completed trial has {' and '.join(bounds)}", path=where)
        return chosen
    if results.best is None or results.best.config is None:
        raise SpecError("no completed trial yet", path=f"study {results.name}")
    return results.best


def cmd_best(args: argparse.Namespace, console: Console) -> int:
    if is_protocol(args.study):
        raise SpecError(
            "a comparison has no single best configuration; each (task, candidate) pair is a study of its own, "
            "named PROTOCOL.TASK.CANDIDATE: give `autonorm best` one of those",
            file=args.study,
        )
    results = _load(args)
    best = _chosen_trial(args, results)
    text = best.config.to_yaml()
    if args.output:
        output_file(args.output).write_text(text)
        shown = dict.fromkeys([results.objective, args.by, *(k for k, _ in args.max + args.min)] + results.objectives)
        values = ", ".join(f"{k} = {best.metrics[k]:.4g}" for k in shown if k and k in best.metrics)
        console.print(f"wrote the configuration of trial {best.number} ({values or best.state}) to {args.output}")
    else:  # as it is: a console would wrap long lines (a path) and break the YAML
        sys.stdout.write(text)
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from autonorm.report import write_report  # plotly is imported only for reports

    if is_protocol(args.study):
        comparison = load_comparison(args.study)
        path = write_report(comparison, args.output)
        console.print(f"wrote the report of comparison {comparison.name} to {path}")
        return 0
    name, url = locate_study(args.study, args.storage)
    path = write_report(open_study(name, url), args.output, mask_url(url))
    console.print(f"wrote the report of study {name} to {path}")
    return 0


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    out = args.output or str(Path(args.config).with_suffix("")) + "_model"
    trained = train(args.config, out)
    m = trained.metrics
    console.print(
        f"test accuracy {m['test_accuracy']:.4f}, test loss {m['test_loss']:.4f} "
        f"({int(m['params'])} parameters, {m['train_seconds']:.1f} s)"
    )
    console.print(f"saved weights, configuration, metrics and input statistics to {trained.out_dir}/")
    return 0


def _bound(text: str) -> tuple[str, float]:
    """``latency_ms=0.5`` -> ("latency_ms", 0.5), for ``autonorm best --max/--min``."""
    key, sep, value = text.partition("=")
    if not sep or key not in METRIC_KEYS:
        raise argparse.ArgumentTypeError(f"expected METRIC=VALUE with METRIC one of {', '.join(METRIC_KEYS)}")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None


def cmd_check_plugin(args: argparse.Namespace, console: Console) -> int:
    registry = get_registry()
    kinds = [args.kind] if args.kind else [k for k in CHECKED_KINDS if (k, args.name) in registry]
    # a name of another kind only: check_component says that kind has no contract
    kinds = kinds or [c.kind for c in registry.components() if c.name == args.name][:1]
    if not kinds:
        known = sorted({c.name for k in CHECKED_KINDS for c in registry.components(k)})
        message = unknown_name_message("component", args.name, known) + registry.failure_note(args.name)
        raise SpecError(message, path="check-plugin")
    ok = True
    for kind in kinds:
        report = check_component(args.name, kind=kind, registry=registry, raise_on_failure=False)
        console.print(f"{kind} {args.name!r}:")
        for result in report.results:
            mark = "[green]passed[/green]" if result.passed else "[red]FAILED[/red]"
            text = result.name + (f": {result.message}" if result.message else "")
            console.print(f"  {mark}  {escape(text)}", highlight=False)
        ok = ok and report.ok
    console.print("[green]all checks passed[/green]" if ok else "[red]some checks failed[/red]")
    return 0 if ok else 1


def _print_comparison(comparison: Comparison, console: Console) -> None:
    console.print(display.comparison_table(comparison))
    friedman = comparison.friedman()
    left_out = [c for c in comparison.candidates if c not in comparison.friedman_candidates()]
    without = f" (without {', '.join(left_out)}, which failed on a task)" if friedman and left_out else ""
    console.print(
        f"Friedman test over tasks: chi2 = {friedman[0]:.3f}, p = {friedman[1]:.4g}{without}"
        if friedman
        else "Friedman test over tasks: needs at least 2 tasks and 3 candidates that completed them all"
    )


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    def show(cell) -> None:
        console.print(f"  {cell.task} / {cell.candidate}: {cell.shown(4)}", highlight=False)

    comparison = compare(args.protocol, on_cell=None if args.quiet else show)
    _print_comparison(comparison, console)
    if any(cell.mean is not None for cell in comparison.cells.values()):
        return 0
    _error(f"comparison {comparison.name}: no candidate has a result on any task; each cell says why")
    return 1


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autonorm", description=__doc__)
    python = sys.version.split()[0]
    versions = f"autonorm {__version__} (torch {torch.__version__}, optuna {optuna.__version__}, Python {python})"
    parser.add_argument("--version", action="version", version=versions)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="run or resume the search a space file describes")
    p.add_argument("space", help="search-space YAML file")
    p.add_argument("--trials", type=int, help="override search.trials")
    p.add_argument("--storage", help="override search.storage")
    p.add_argument("--top", type=positive, default=10, help="leaderboard rows (default 10)")
    p.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    p.add_argument(
        "--jsonl", action="store_true", help="print one JSON object per finished trial instead (other output: stderr)"
    )
    p.add_argument(
        "--workers", type=int, help="run trials in this many processes (needs a PostgreSQL, MySQL or journal storage)"
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("worker", help="join a study's search from this machine (many workers share one storage)")
    p.add_argument("study", help="study name")
    p.add_argument(
        "--storage", default=os.environ.get(STORAGE_ENV), help=f"the study's storage URL (default: ${STORAGE_ENV})"
    )
    p.add_argument("--trials", type=int, help="finished trials to aim for (default: what the search asked)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("plugins", help="list every discovered component")
    p.add_argument("--kind", choices=KINDS, help="only this kind")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("validate", help="check a search-space file without running it")
    p.add_argument("space")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("results", help="print a study's leaderboard")
    _study_args(p)
    p.add_argument("--top", type=positive, default=10, help="leaderboard rows (default 10)")
    p.add_argument("--jsonl", action="store_true", help="one JSON object per trial (per cell of a comparison) instead")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("best", help="write the best trial's configuration as YAML")
    _study_args(p, protocol=False)
    p.add_argument("-o", "--output", help="file to write (default: print)")
    p.add_argument("--trial", type=int, help="this trial's configuration instead (e.g. one of the Pareto front)")
    p.add_argument(
        "--max", type=_bound, action="append", default=[], metavar="METRIC=V", help="only trials with METRIC <= V"
    )
    p.add_argument(
        "--min", type=_bound, action="append", default=[], metavar="METRIC=V", help="only trials with METRIC >= V"
    )
    p.add_argument("--by", choices=METRIC_KEYS, help="the metric to rank by (default: the first objective)")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("report", help="write a self-contained HTML report of a study's plots")
    _study_args(p)
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("train", help="train a configuration from `autonorm best` on train+validation, score on test")
    p.add_argument("config", help="configuration YAML written by `autonorm best`")
    p.add_argument("-o", "--output", help="output folder (default: CONFIG_model next to the file)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check-plugin", help="run the contract checks on a component (for plugin authors)")
    p.add_argument("name", help="component name")
    p.add_argument("--kind", choices=CHECKED_KINDS, help="its kind, where a name is registered under several")
    p.set_defaults(func=cmd_check_plugin)

    p = sub.add_parser("compare", help="compare one kind's methods across tasks and seeds")
    p.add_argument("protocol", help="comparison protocol YAML file")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the final table")
    p.set_defaults(func=cmd_compare)
    return parser


def _error(message: str) -> None:
    """The error on one line of stderr, however narrow the terminal: scripts and CI logs grep for it."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}", highlight=False)


def _warning_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    """A warning as one line, without the source line Python quotes (a plugin's tracker that raised)."""
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _warning_line
    # piped output (logs, CI) gets room for the tables; a terminal or $COLUMNS sets its own width
    console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)
    try:
        return args.func(args, console)
    except SpecError as exc:
        if getattr(args, "storage", None) and exc.path in ("search.storage", "storage") and not exc.file:
            exc.path = "--storage"  # the URL the command line gave
        _error(str(exc))
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say, and nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a file the command reads or writes: the system's reason, without a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        _error(where + (exc.strerror or str(exc)))
        return 2
    except KeyboardInterrupt:
        if not (args.command == "worker" and args.quiet):  # the workers of --workers N: their parent says it
            Console(stderr=True).print("interrupted; run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
