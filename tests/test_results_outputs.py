"""What a study gives back: multi-objective search and its Pareto front, JSON-lines progress, trade-off
choices in ``autonorm best``, the HTML report (rendered in headless Chromium) and ``autonorm train``."""

from __future__ import annotations

import html
import io
import itertools
import json
import os
import random
import re
import shutil
import subprocess

import optuna
import pytest
import torch
import yaml
from rich.console import Console

import autonorm
from autonorm import display, report
from autonorm.cli import main
from autonorm.data import load_data
from autonorm.report import render_report
from autonorm.results import StudyResults, TrialRecord, results_of
from tests.conftest import TINY_SPACE, write
from tests.helpers import registry_with_test_components

MULTI_SPACE = """
name: multi
data: {dataset: digits}
model: {backbone: small_cnn, depth: 1, width: 8}
space:
  normalization: [batchnorm, layernorm]
  activation: [relu, elu]
train:
  epochs: 2
  batch_size: 64
  lr: {loguniform: [0.02, 0.2]}
search:
  trials: 5
  sampler: random
  objective: [val_accuracy, latency_ms]
  seed: 0
"""


@pytest.fixture
def cli(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str, code: int = 0) -> tuple[str, str]:
        assert main(list(args)) == code
        return capsys.readouterr()

    return run


@pytest.fixture(scope="module")
def multi_study(tmp_path_factory) -> tuple[str, str]:
    """A finished multi-objective study, shared by the tests that only read it: (space file, storage URL)."""
    folder = tmp_path_factory.mktemp("multi")
    space = write(folder / "multi.yaml", MULTI_SPACE)
    storage = f"sqlite:///{folder / 'multi.db'}"
    assert main(["search", str(space), "--storage", storage, "-q"]) == 0
    return str(space), storage


# ---------------------------------------------------------------- the objective setting


def test_objective_list_gets_a_direction_per_metric():
    spec = autonorm.load_spec({"search": {"objective": ["val_accuracy", "latency_ms", "params"]}})
    assert spec.search.objectives == ["val_accuracy", "latency_ms", "params"]
    assert spec.search.directions == ["maximize", "minimize", "minimize"]
    assert spec.search.multi_objective
    single = autonorm.load_spec({"search": {"objective": "val_loss"}}).search
    assert (single.objectives, single.directions, single.multi_objective) == (["val_loss"], ["minimize"], False)


@pytest.mark.parametrize(
    ("objective", "backend", "message"),
    [
        (["val_accuracy", "latncy_ms"], "optuna", "search.objective"),
        (["val_accuracy", "val_accuracy"], "optuna", "repeated metrics"),
        (["val_accuracy", "latency_ms"], "ray", "needs backend: optuna"),
    ],
)
def test_bad_objectives_are_located_errors(tmp_path, objective, backend, message):
    space = write(tmp_path / "s.yaml", json.dumps({"search": {"objective": objective, "backend": backend}}))
    with pytest.raises(autonorm.SpecError, match=message):
        autonorm.load_spec(space)


def _told_study(values: list[tuple[float, ...]], directions: list[str]) -> optuna.Study:
    study = optuna.create_study(directions=directions)
    study.set_user_attr("objective", "val_accuracy")
    study.set_user_attr("objectives", ["val_accuracy", "latency_ms", "params"][: len(directions)])
    for v in values:
        study.tell(study.ask(), v)
    return study


def test_pareto_front_is_optunas_best_trials():
    rng = random.Random(0)
    # a coarse grid of values makes ties and duplicate points, where dominance is easiest to get wrong
    values = [tuple(rng.randint(0, 6) / 6 for _ in range(3)) for _ in range(60)]
    study = _told_study(values, ["maximize", "minimize", "minimize"])
    front = results_of(study, "").pareto_front
    assert {t.number for t in front} == {t.number for t in study.best_trials}
    assert [t.values[0] for t in front] == sorted((t.values[0] for t in front), reverse=True)


def test_choose_takes_the_best_accuracy_under_a_bound():
    def record(n: int, acc: float, latency: float) -> TrialRecord:
        metrics = {"val_accuracy": acc, "latency_ms": latency, "train_loss": 1 - acc}
        return TrialRecord(n, "complete", acc, None, metrics, values=(acc, latency))

    trials = [record(0, 0.9, 2.0), record(1, 0.8, 0.4), record(2, 0.85, 0.6), record(3, 0.7, 0.1)]
    results = StudyResults("s", "", "val_accuracy", "maximize", trials, ["val_accuracy", "latency_ms"])
    assert results.choose().number == 0
    assert results.choose(at_most={"latency_ms": 0.5}).number == 1
    assert results.choose(at_most={"latency_ms": 0.7}).number == 2
    assert results.choose(by="latency_ms", at_least={"val_accuracy": 0.8}).number == 1
    assert results.choose(at_most={"latency_ms": 0.05}) is None
    assert results.choose(by="train_loss").number == 0  # a loss ranks down, whether an objective or not
    with pytest.raises(ValueError, match="unknown metric 'latency'; expected one of val_accuracy, "):
        results.choose(at_most={"latency": 0.5})
    assert [t.number for t in results.pareto_front] == [0, 2, 1, 3]


# ---------------------------------------------------------------- commands


def test_multi_objective_search_shows_the_pareto_front(multi_study, cli):
    space, storage = multi_study
    results = autonorm.load_study("multi", storage)
    assert results.objectives == ["val_accuracy", "latency_ms"]
    assert results.directions == ["maximize", "minimize"]
    assert results.count("complete") == 5 and results.count("pruned") == 0
    study = optuna.load_study(study_name="multi", storage=storage)
    assert study.metric_names == ["val_accuracy", "latency_ms"]  # what optuna-dashboard labels the axes with
    assert {t.number for t in results.pareto_front} == {t.number for t in study.best_trials}
    out, _ = cli("results", space, "--storage", storage)
    assert "Pareto front over val_accuracy ↑, latency_ms ↓" in out and "pareto" in out
    for t in results.pareto_front:
        assert f"{t.values[1]:.4g}" in out


def test_the_leaderboard_shows_every_objective_and_the_model_hyperparameters_that_vary():
    def record(n: int, width: int, values: tuple[float, float]) -> TrialRecord:
        components = {
            "normalization": {"name": "groupnorm", "params": {"groups": width // 4}},
            "activation": {"name": ("elu", "relu")[n], "params": {"alpha": 1.0} if n == 0 else {}},
        }
        config = autonorm.TrialConfig(
            dataset={"name": "digits"}, val_fraction=0.2, test_fraction=0.2, input_shape=(1, 8, 8), num_classes=10,
            model={"name": "small_cnn", "params": {"width": width, "depth": 1}}, components=components, epochs=2,
            train={},
        )  # fmt: skip
        metrics = {"val_accuracy": values[0], "latency_ms": values[1], "params": 1442.0, "train_seconds": 0.5}
        return TrialRecord(n, "complete", values[0], config, metrics, values=values)

    trials = [record(0, 8, (0.9, 0.05)), record(1, 4, (0.7, 0.03))]
    results = StudyResults("m", "", "val_accuracy", "maximize", trials, ["val_accuracy", "latency_ms"],
                           ["maximize", "minimize"])  # fmt: skip
    screen = io.StringIO()
    Console(file=screen, width=250, color_system=None).print(display.leaderboard_table(results))
    header = screen.getvalue().splitlines()[1]
    assert re.split(r"\s{2,}", header.strip()) == [
        "#", "trial", "state", "pareto", "val_accuracy", "latency_ms", "width", "normalization", "activation",
        "params", "train s",
    ]  # fmt: skip
    shown = screen.getvalue()
    assert "0.03" in shown and "1442 " in shown
    assert "groupnorm(groups=2)" in shown and "alpha" not in shown  # what varies or is not the default
    elu = {"activation": {"name": "elu", "params": {"alpha": 0.5}}}
    one = autonorm.TrialConfig.model_validate({**trials[0].config.model_dump(), "components": elu})
    assert display._varying([one], "activation")("elu", "alpha")  # one trial, searched away from the default
    log = io.StringIO()  # a log's 120 columns hold all eleven headers on one line, none broken inside a word
    Console(file=log, width=120, color_system=None).print(display.leaderboard_table(results))
    assert re.split(r"\s{2,}", log.getvalue().splitlines()[1].strip()) == re.split(r"\s{2,}", header.strip())
    narrow = io.StringIO()
    Console(file=narrow, width=80, color_system=None).print(display.leaderboard_table(results))
    assert "…" not in narrow.getvalue()  # a narrow terminal or a log wraps cells rather than cutting them


def test_best_with_a_bound_or_a_trial_number(multi_study, cli, tmp_path):
    _, storage = multi_study
    results = autonorm.load_study("multi", storage)
    latencies = sorted(t.metrics["latency_ms"] for t in results.trials)
    bound = latencies[len(latencies) // 2]
    cli("best", "multi", "--storage", storage, "--max", f"latency_ms={bound}", "-o", "fast.yaml")
    allowed = [t for t in results.trials if t.metrics["latency_ms"] <= bound]
    expected = max(allowed, key=lambda t: (t.metrics["val_accuracy"], -t.number))
    assert autonorm.TrialConfig.load(tmp_path / "fast.yaml") == expected.config
    out, _ = cli("best", "multi", "--storage", storage, "--trial", "3")
    assert autonorm.TrialConfig.model_validate(yaml.safe_load(out)) == results.trials[3].config
    _, err = cli("best", "multi", "--storage", storage, "--max", "latency_ms=0", code=2)
    assert "no completed trial has latency_ms <= 0" in err
    _, err = cli("best", "multi", "--storage", storage, "--max", "peak_memory_mb=100", code=2)
    assert "no completed trial measured peak_memory_mb (peak memory is measured on CUDA only)" in err
    _, err = cli("best", "multi", "--storage", storage, "--trial", "3", "--by", "latency_ms", code=2)
    assert "--trial: --trial names the trial; --by, --max and --min choose one: give either" in err
    with pytest.raises(SystemExit):
        main(["best", "multi", "--storage", storage, "--max", "latncy_ms=1"])


def test_jsonl_prints_one_object_per_finished_trial(tmp_path, cli):
    space = write(
        tmp_path / "tiny.yaml", TINY_SPACE.replace("epochs: 2", "epochs: 1").replace("trials: 3", "trials: 2")
    )
    out, err = cli("search", str(space), "--jsonl")
    lines = [json.loads(line) for line in out.splitlines()]  # nothing but JSON on stdout
    assert [line["number"] for line in lines] == [0, 1]
    results = autonorm.load_study("tiny")
    for line, trial in zip(lines, results.trials, strict=True):
        assert line["state"] == trial.state == "complete"
        assert line["value"] == trial.value and line["values"] == {"val_accuracy": trial.value}
        assert line["summary"] == trial.config.summary() and line["reason"] is None
        assert line["repeat_of"] is None and line["promoted_from"] is None
        assert autonorm.TrialConfig.model_validate(line["config"]) == trial.config  # scripts can rebuild it
    assert "2 complete" in err


def test_jsonl_says_when_the_pruner_stopped_a_trial():
    from autonorm.display import trial_json

    pruned = optuna.trial.TrialState.PRUNED
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=pruned, intermediate_values={1: 0.2, 2: 0.3}))
    study.add_trial(optuna.trial.create_trial(state=pruned, user_attrs={"repeat_of": 0, "rejudges": 0}))
    study.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"promoted_from": 0, "rejudges": 0}))
    lines = [json.loads(trial_json(t, ["val_accuracy"])) for t in results_of(study, "").trials]
    reasons = [line["reason"] for line in lines]
    assert reasons == ["pruned after epoch 2", "same configuration as trial 0, which was pruned", None]
    assert [(line["repeat_of"], line["promoted_from"]) for line in lines] == [(None, None), (0, None), (None, 0)]


def test_resuming_with_other_objectives_is_an_error(tmp_path, cli):
    space = write(
        tmp_path / "tiny.yaml", TINY_SPACE.replace("trials: 3", "trials: 1").replace("epochs: 2", "epochs: 1")
    )
    cli("search", str(space), "-q")
    write(space, space.read_text().replace("seed: 0", "seed: 0\n  objective: [val_accuracy, params]"))
    _, err = cli("search", str(space), "-q", code=2)
    assert "optimizes ['val_accuracy'], not ['val_accuracy', 'params']" in err


def test_resuming_with_a_parameter_searched_another_way_is_an_error_before_any_trial(tmp_path, cli):
    """Optuna fails every trial that suggests a name from another kind of distribution, or from other
    categorical choices, than the study's earlier trials; and where an ordered list changes (or a
    parameter stops being one), earlier positions would stand for other values: refused up front,
    naming the key."""
    tiny = TINY_SPACE.replace("trials: 3", "trials: 1").replace("epochs: 2", "epochs: 1")
    space = write(tmp_path / "tiny.yaml", tiny.replace("batch_size: 64", "batch_size: [16, 32, 64]"))
    cli("search", str(space), "-q")
    edits = [
        (
            "lr: {loguniform: [0.01, 0.2]}",
            "lr: [0.01, 0.05, 0.2]",
            "train.lr",
            "as a log number range [0.01, 0.2], this space as an ordered choice of [0.01, 0.05, 0.2]",
        ),
        (
            "activation: [relu, elu]",
            "activation: [relu, elu, and_ail]",
            "space.activation",
            "as a choice of ['relu', 'elu'], this space as a choice of ['relu', 'elu', 'and_ail']",
        ),
        ("batch_size: [16, 32, 64]", "batch_size: [16, 32, 64, 128]", "train.batch_size", "lists [16, 32, 64, 128]"),
        (
            "batch_size: [16, 32, 64]",
            "batch_size: [16, 48, 64]",
            "train.batch_size",
            "[16, 32, 64]; this space lists [16, 48, 64]",
        ),
        (
            "batch_size: [16, 32, 64]",
            "batch_size: {low: 16, high: 64}",
            "train.batch_size",
            "searches it as an integer range [16, 64]",
        ),
    ]
    for before, after, key, why in edits:
        write(space, space.read_text().replace(before, after))
        _, err = cli("search", str(space), "-q", code=2)
        err = " ".join(err.split())  # as wrapped to the console's width
        assert re.search(rf"tiny.yaml:\d+:\d+: {re.escape(key)}: study 'tiny' searched", err), err
        assert why in err and "give the search a new name" in err
        assert "Distribution" not in err  # Optuna's classes are not the user's words
        write(space, space.read_text().replace(after, before))
    assert len(autonorm.load_study("tiny").trials) == 1
    write(space, space.read_text().replace("lr: {loguniform: [0.01, 0.2]}", "lr: {loguniform: [0.02, 0.1]}"))
    cli("search", str(space), "-q", "--trials", "2")  # a narrower range is fine: the study resumes
    assert len(autonorm.load_study("tiny").trials) == 2
    # an ordered choice added on resume is remembered: the same file resumes again, its values changed do not
    write(space, space.read_text().replace("epochs: 1", "epochs: 1\n  momentum: [0.5, 0.8, 0.9]"))
    cli("search", str(space), "-q", "--trials", "3")
    cli("search", str(space), "-q", "--trials", "4")
    assert len(autonorm.load_study("tiny").trials) == 4
    write(space, space.read_text().replace("momentum: [0.5, 0.8, 0.9]", "momentum: [0.5, 0.8, 0.95]"))
    _, err = cli("search", str(space), "-q", "--trials", "5", code=2)
    assert "train.momentum: study 'tiny' searched" in " ".join(err.split())


# ---------------------------------------------------------------- report

FIGURE = 'class="plotly-graph-div"'


def test_report_holds_every_plot_and_plotly_itself(multi_study, cli, tmp_path):
    space, storage = multi_study
    out, _ = cli("report", space, "--storage", storage, "-o", "report.html")
    assert "report.html" in out
    page = (tmp_path / "report.html").read_text()
    for section in ("Optimization history", "Pareto front", "Hyperparameter importance", "Objective by choice"):
        assert f"<h2>{section}</h2>" in page
    assert "Learning curves of the best trials" in page and 'class="note"' not in page
    assert page.count(FIGURE) == 5
    assert page.count("plotly.js v") == 1 and "<script src=" not in page  # inlined once, nothing fetched
    assert report._fmt(77082.0) == "77082" and report._fmt(0.123456) == "0.1235"  # a count whole, not 7.708e+04


def test_report_of_a_small_study_says_what_is_missing(tmp_path, cli):
    space = write(
        tmp_path / "tiny.yaml", TINY_SPACE.replace("trials: 3", "trials: 1").replace("epochs: 2", "epochs: 1")
    )
    cli("search", str(space), "-q")
    cli("report", "tiny", "-o", "small.html")
    page = (tmp_path / "small.html").read_text()
    assert "Importances need at least 4 completed trials; this study has 1" in page
    assert "No component kind varied among the completed trials" in page
    assert "<h2>Pareto front</h2>" not in page and page.count(FIGURE) == 2  # history, learning curves


def _step_corners(trace) -> list[tuple[float, float]]:
    """The corners a Plotly step line turns at (``hv``: along x first; ``vh``: along y first)."""
    points = list(zip(trace.x, trace.y, strict=True))
    across = trace.line.shape == "hv"
    return [(b[0], a[1]) if across else (a[0], b[1]) for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize("directions", [["maximize", "minimize"], ["minimize", "maximize"], ["maximize", "maximize"]])
def test_the_pareto_step_line_turns_at_corners_the_front_dominates(directions):
    """A corner that beats a front point on both objectives would draw a front no trial reaches."""
    good = [(0.5, -1.0), (0.7, -2.0), (0.9, -4.0), (0.6, -3.0), (0.4, -0.5)]  # higher is better: a trade-off
    signs = [1 if d == "maximize" else -1 for d in directions]
    study = _told_study([tuple(s * g for s, g in zip(signs, point, strict=True)) for point in good], directions)
    results = results_of(study, "")
    assert len(results.pareto_front) == 4
    figure = report._pareto(results)
    (line,) = [t for t in figure.data if t.mode == "lines"]
    for corner in _step_corners(line):
        for t in results.pareto_front:  # no front point is worse on both axes than a corner
            assert not all(s * v < s * c for s, v, c in zip(signs, t.values, (corner[1], corner[0]), strict=True))


def test_with_three_objectives_each_plane_draws_its_own_front():
    values = [(0.9, 1.0, 5.0), (0.5, 1.0, 1.0), (0.95, 3.0, 9.0), (0.4, 0.5, 9.0)]
    study = _told_study(values, ["maximize", "minimize", "minimize"])
    figure = report._pareto(results_of(study, ""))
    lines = [t for t in figure.data if t.mode == "lines"]
    # accuracy vs latency: (0.4, 0.5), (0.9, 1.0), (0.95, 3.0); trial 1 is on the full front but not in this plane
    assert [(x, y) for x, y in zip(lines[0].x, lines[0].y, strict=True)] == [(0.5, 0.4), (1.0, 0.9), (3.0, 0.95)]
    assert [(x, y) for x, y in zip(lines[1].x, lines[1].y, strict=True)] == [(1.0, 0.5), (5.0, 0.9), (9.0, 0.95)]


def test_repeats_count_once_in_the_report_and_curves_show_both_metrics():
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("objective", "val_loss")
    study.set_user_attr("objectives", ["val_loss"])
    history = [{"val_loss": 1.0, "val_accuracy": 0.5}, {"val_loss": 0.8, "val_accuracy": 0.6}]
    for n, norm in enumerate(["batchnorm", "batchnorm", "batchnorm", "groupnorm"]):
        config = autonorm.TrialConfig(
            dataset={"name": "digits"}, val_fraction=0.2, test_fraction=0.2, input_shape=(1, 8, 8), num_classes=10,
            model={"name": "small_cnn"}, components={"normalization": {"name": norm}}, epochs=2, train={},
        ).model_dump(mode="json")  # fmt: skip
        attrs = {"config": config, "history": history, **({"repeat_of": 0} if n in (1, 2) else {})}
        study.add_trial(optuna.trial.create_trial(value=0.8 - 0.1 * (norm == "groupnorm"), user_attrs=attrs))
    results = results_of(study, "")
    boxes = {trace.name: list(trace.y) for trace in report._by_choice(results).data}
    assert boxes == {"batchnorm": [0.8], "groupnorm": pytest.approx([0.7])}
    curves = report._curves(results, {t.number: t for t in study.trials})
    assert [a.text for a in curves.layout.annotations] == ["val_loss", "val_accuracy"]
    assert curves.layout.title.text == "top 2 trials by val_loss"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="no chromium (CI installs it)")
def test_report_renders_in_a_browser(multi_study, tmp_path):
    assert CHROMIUM, "CI must have chromium: see .ci/run"
    space, storage = multi_study
    assert main(["report", space, "--storage", storage, "-o", "report.html"]) == 0
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (tmp_path / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    ).stdout
    # plotly.js marks each div it has drawn, and draws its axes and traces as SVG inside it
    assert len(re.findall(r'<div[^>]*class="[^"]*\bjs-plotly-plot\b', dom)) == 5
    assert dom.count('class="main-svg"') >= 5 and "Pareto-optimal of 5 completed trials" in dom


# ---------------------------------------------------------------- final training


def test_train_scores_on_test_and_saves_a_reloadable_model(multi_study, cli, tmp_path):
    _, storage = multi_study
    cli("best", "multi", "--storage", storage, "-o", "best.yaml")
    out, _ = cli("train", "best.yaml", "-o", "final")
    assert "test accuracy" in out and "final" in out
    config = autonorm.TrialConfig.load(tmp_path / "final" / "config.yaml")
    assert config == autonorm.TrialConfig.load(tmp_path / "best.yaml")
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())

    model = autonorm.build_model(config)
    model.load_state_dict(torch.load(tmp_path / "final" / "model.pt", weights_only=True))
    model.eval()
    data = load_data(config.dataset, config.val_fraction, config.test_fraction, config.data_seed)
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    raw = data.x_test * data.std + data.mean  # the test images as the dataset gives them
    torch.testing.assert_close(autonorm.standardize(tmp_path / "final", raw), data.x_test, rtol=0, atol=1e-5)
    assert not torch.allclose(raw, data.x_test, atol=0.1)  # the saved statistics are needed


def test_python_train_outputs_match_the_reloaded_model(multi_study, tmp_path):
    _, storage = multi_study
    config = autonorm.load_study("multi", storage).best.config
    trained = autonorm.train(config, tmp_path / "out")
    reloaded = autonorm.load_trained(tmp_path / "out")
    x = load_data(config.dataset, config.val_fraction, config.test_fraction, config.data_seed).x_test[:64]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), trained.model(x), rtol=0, atol=0)
        fresh = autonorm.build_model(config).eval()
        assert not torch.equal(fresh(x), trained.model(x))  # the weights, not the build, make the outputs


def test_a_model_trained_channels_last_is_saved_and_reloads(multi_study, tmp_path):
    """Scored in channels_last, saved contiguous: the two layouts round differently (about 1e-7)."""
    _, storage = multi_study
    config = autonorm.load_study("multi", storage).best.config
    config = config.model_copy(update={"train": {**config.train, "channels_last": True}, "epochs": 1})
    trained = autonorm.train(config, tmp_path / "out")
    x = load_data(config.dataset, config.val_fraction, config.test_fraction, config.data_seed).x_test[:64]
    with torch.no_grad():
        torch.testing.assert_close(autonorm.load_trained(tmp_path / "out")(x), trained.model(x), rtol=1e-4, atol=1e-5)


def test_train_needs_a_test_split(multi_study, tmp_path, cli):
    _, storage = multi_study
    config = autonorm.load_study("multi", storage).best.config.model_copy(update={"test_fraction": 0.0})
    write(tmp_path / "c.yaml", config.to_yaml())
    _, err = cli("train", "c.yaml", code=2)
    assert "no test split" in err


def test_live_progress_shows_counts_best_and_times(tmp_path):
    """The progress display a terminal user sees: trials done of total, per-state counts, best so far,
    elapsed and remaining time."""

    from autonorm import display

    spec = autonorm.load_spec(write(tmp_path / "tiny.yaml", TINY_SPACE))
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    with display.SearchProgress(spec, [], console) as progress:
        results = autonorm.search(spec, callbacks=[progress.callback])
    final = [line for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue()).splitlines() if line][-1]
    best = max(t.value for t in results.trials)
    assert "tiny" in final and "3/3" in final and "3 complete 0 pruned 0 failed" in final
    assert f"best val_accuracy={best:.4g}" in final
    assert re.search(r"\d:\d\d:\d\d", final)  # elapsed (and the remaining-time column) are shown


def test_live_progress_counts_the_pareto_front_as_the_leaderboard_does(tmp_path):
    """A repeated configuration's trial copies an earlier outcome: it is not another point of the front."""

    from autonorm import display

    spec = autonorm.load_spec(write(tmp_path / "m.yaml", TINY_SPACE + "  objective: [val_accuracy, latency_ms]\n"))
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values, attrs in (((0.9, 2.0), {}), ((0.8, 1.0), {}), ((0.8, 1.0), {"repeat_of": 1})):
        study.add_trial(optuna.trial.create_trial(values=list(values), user_attrs=attrs))
    screen = io.StringIO()
    with display.SearchProgress(spec, [], Console(file=screen, width=160, color_system=None)) as progress:
        progress.callback(study, study.trials[-1])
    assert "Pareto front 2 trials" in screen.getvalue()
    assert "3/3 3 complete" in screen.getvalue()  # counted from the study: a joined worker's trials count too


def test_the_report_lists_failed_and_diverged_trials_with_their_reasons():
    registry = registry_with_test_components()
    raw = {
        "name": "failing",
        "model": {"backbone": "small_cnn", "depth": 1, "width": 4},
        "space": {"normalization": ["explode", "batchnorm"], "activation": ["raises", "relu"]},
        "train": {"epochs": 1},
        "search": {"trials": 6, "pruner": "none", "sampler": "random"},
    }
    results = autonorm.search(autonorm.load_spec(raw, registry), registry=registry)
    failures = results.failures()
    assert {t.state for t in failures} == {"failed", "pruned"}
    page = render_report(optuna.load_study(study_name="failing", storage="sqlite:///failing.db"))
    assert "<h2>Failed, diverged and incompatible trials</h2>" in page
    assert all(html.escape(t.reason) in page for t in failures)
