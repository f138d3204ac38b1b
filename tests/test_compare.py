"""Comparisons across tasks: statistics on hand-made numbers, resume, failures shown in their cell."""

import json
import math

import numpy as np
import optuna
import pytest
from rich.console import Console
from scipy import stats

import autonorm
import autonorm.comparison as compare_module
from autonorm import Registry, SpecError, display
from autonorm.cli import main
from autonorm.comparison import Cell, Comparison, holm, load_comparison, load_protocol
from autonorm.params import Fixed
from tests.conftest import run_cli, write
from tests.helpers import registry_with_test_components


def table(results: dict) -> Comparison:
    tasks = sorted({t for t, _ in results})
    cands = sorted({c for _, c in results})
    cells = {(t, c): Cell(t, c, accuracies=list(v)) for (t, c), v in results.items()}
    return Comparison("hand", "normalization", tasks, cands, "a", cells)


HAND = {
    ("t1", "a"): [0.90, 0.92, 0.94],
    ("t1", "b"): [0.80, 0.82, 0.84],
    ("t1", "c"): [0.70, 0.71, 0.72],
    ("t2", "a"): [0.60, 0.60, 0.60],
    ("t2", "b"): [0.70, 0.70, 0.70],
    ("t2", "c"): [0.50, 0.50, 0.50],
    ("t3", "a"): [0.85, 0.85, 0.85],
    ("t3", "b"): [0.85, 0.85, 0.85],
    ("t3", "c"): [0.10, 0.20, 0.30],
}


def test_confidence_interval_is_the_student_t_half_width():
    cell = table(HAND).cells["t1", "a"]
    assert cell.mean == pytest.approx(0.92)
    # sd = 0.02, n = 3, t(0.975, 2) = 4.302652729911275
    assert cell.ci95 == pytest.approx(4.302652729911275 * 0.02 / math.sqrt(3))
    one = table({("t", "a"): [0.5]}).cells["t", "a"]
    assert one.ci95 is None and one.shown() == "0.500"  # one seed: no interval, not "± 0.000"


def test_average_ranks_share_ties():
    ranks = table(HAND).average_ranks()
    # t1: a1 b2 c3; t2: b1 a2 c3; t3: a,b tie at 1.5, c3
    assert ranks == {"a": pytest.approx((1 + 2 + 1.5) / 3), "b": pytest.approx((2 + 1 + 1.5) / 3), "c": 3.0}


def test_average_ranks_leave_out_the_tasks_not_run_yet():
    """An interrupted comparison: a cell with no study yet is not a failure that ranks last."""
    partial = table(HAND)
    partial.cells["t3", "c"] = Cell("t3", "c", error=compare_module.NOT_RUN)
    assert partial.average_ranks() == {"a": 1.5, "b": 1.5, "c": 3.0}  # t1 and t2 only
    for task in ("t1", "t2"):
        partial.cells[task, "a"] = Cell(task, "a", error=compare_module.NOT_RUN)
    assert all(math.isnan(rank) for rank in partial.average_ranks().values())
    console = Console(record=True, width=200)
    console.print(display.comparison_table(partial))
    assert "nan" not in console.export_text()  # shown as "-"


def test_friedman_matches_the_textbook_formula():
    chi2, p = table(HAND).friedman()
    # Friedman's statistic with the tie correction scipy applies: ranks per task as above
    n, k = 3, 3
    rank_sums = np.array([1 + 2 + 1.5, 2 + 1 + 1.5, 9.0])
    uncorrected = 12 / (n * k * (k + 1)) * (rank_sums**2).sum() - 3 * n * (k + 1)
    ties = 2**3 - 2  # one tie of size 2 in t3
    corrected = uncorrected / (1 - ties / (n * (k**3 - k)))
    assert chi2 == pytest.approx(corrected)
    assert p == pytest.approx(stats.chi2.sf(corrected, k - 1))


def test_friedman_needs_two_tasks():
    assert table({k: v for k, v in HAND.items() if k[0] == "t1"}).friedman() is None


def test_holm_adjustment():
    assert holm({"x": 0.01, "y": 0.04, "z": 0.03}) == {
        "x": pytest.approx(0.03),
        "z": pytest.approx(0.06),
        "y": pytest.approx(0.06),
    }


def test_versus_baseline_is_holm_corrected_wilcoxon_over_the_tasks_mean_accuracies():
    """One pair per task (Demšar 2006): c is worse than a on all 3 tasks, and with 3 pairs a two-sided
    signed-rank test can say no more than p = 0.25; pooling the 9 seed pairs said p = 0.004."""
    comparison = table(HAND)
    got = comparison.versus_baseline()
    a = [np.mean(HAND[t, "a"]) for t in ("t1", "t2", "t3")]
    raw = {c: stats.wilcoxon([np.mean(HAND[t, c]) for t in ("t1", "t2", "t3")], a).pvalue for c in "bc"}
    assert raw["c"] == pytest.approx(0.25) and got == pytest.approx(holm(raw))
    assert table({k: v for k, v in HAND.items() if k[0] == "t1"}).versus_baseline() == {}  # one task: no test


def test_equal_accuracies_in_another_order_tie():
    """0.1 + 0.2 + 0.3 and 0.3 + 0.2 + 0.1 differ in the last bit: ranks used to split the tie."""
    tied = table({("t", "a"): [0.1, 0.2, 0.3], ("t", "b"): [0.3, 0.2, 0.1]})
    assert tied.cells["t", "a"].mean == tied.cells["t", "b"].mean
    assert tied.average_ranks() == {"a": 1.5, "b": 1.5}


def test_a_cell_with_a_failed_seed_is_not_ranked_on_its_other_seeds():
    """Survivor bias: the mean of the seeds that did not diverge would flatter the method."""
    done = {"0": {"test_accuracy": 0.9}, "1": {"error": "diverged: loss nan"}, "2": {"test_accuracy": 0.95}}
    cell = compare_module._cell("t", "c", {k: {**v, "params": 1, "train_seconds": 1, "latency_ms": 1}
                                           if "error" not in v else v for k, v in done.items()}, 3)  # fmt: skip
    assert cell.mean == pytest.approx(0.925) and cell.result is None
    assert cell.shown() == "0.925 ± 0.318 (1 of 3 seeds failed: diverged: loss nan)"
    partial = table(HAND)
    partial.cells["t1", "c"] = cell
    assert partial.average_ranks()["c"] == 3.0 and "c" not in partial.friedman_candidates()


def test_a_task_where_every_candidate_failed_is_not_ranked():
    failed = table(HAND)
    for c in "abc":
        failed.cells["t3", c] = Cell("t3", c, error="diverged")
    assert failed.ranked_tasks() == ["t1", "t2"]
    assert failed.average_ranks() == {"a": 1.5, "b": 1.5, "c": 3.0}


PROTOCOL = {
    "name": "cmp",
    "kind": "normalization",
    "candidates": ["batchnorm", "explode"],
    "baseline": "batchnorm",
    "tasks": [{"name": "digits", "data": {"dataset": "digits"}}],
    "model": {"backbone": "small_cnn", "depth": 2, "width": 8},
    "train": {"epochs": 2, "batch_size": 32},
    "tune": {"lr": {"loguniform": [0.05, 0.2]}},
    "trials": 1,
    "seeds": 2,
}


def test_compare_runs_resumes_and_shows_failures_in_their_cell(monkeypatch):
    registry = registry_with_test_components()
    first = compare_module.compare(PROTOCOL, registry)
    ok, bad = first.cells["digits", "batchnorm"], first.cells["digits", "explode"]
    assert len(ok.accuracies) == 2 and ok.mean > 0.5 and ok.costs["params"] > 0
    assert bad.mean is None and bad.error.startswith("diverged")
    records = first.records()
    assert {r["candidate"] for r in records} == {"batchnorm", "explode"}

    calls = []
    real = compare_module._retrain
    monkeypatch.setattr(compare_module, "_retrain", lambda *a: calls.append(a[2]) or real(*a))
    again = compare_module.compare({**PROTOCOL, "seeds": 3}, registry)
    assert calls == [2]  # only the new seed is trained; seeds 0 and 1 come from the storage
    assert again.cells["digits", "batchnorm"].accuracies[:2] == ok.accuracies


def test_an_interrupted_comparison_resumes_to_the_numbers_it_would_have_given_uninterrupted():
    """Ctrl-C in the middle of a pair's tuning: resumed, the pair tunes (and so scores) as it would have."""
    protocol = {**PROTOCOL, "candidates": ["batchnorm", "layernorm"], "trials": 4, "seeds": 1}
    straight = compare_module.compare({**protocol, "name": "straight"}, registry_with_test_components())
    registry = registry_with_test_components(interrupt_from=2)
    with pytest.raises(KeyboardInterrupt):
        compare_module.compare({**protocol, "name": "resumed"}, registry)
    resumed = compare_module.compare({**protocol, "name": "resumed"}, registry)
    assert {k: c.accuracies for k, c in resumed.cells.items()} == {k: c.accuracies for k, c in straight.cells.items()}
    interrupted = optuna.load_study(
        study_name="resumed.digits.batchnorm", storage="sqlite:///resumed.digits.batchnorm.db"
    )
    assert [t.user_attrs.get("fail_reason") for t in interrupted.trials].count("interrupted") == 1


def test_protocol_defaults_to_every_installed_candidate(with_plugins):
    proto, specs = load_protocol({**PROTOCOL, "candidates": None, "baseline": None}, with_plugins)
    assert "sample_rms" in proto.candidates and "batchnorm" in proto.candidates
    assert ("digits", "sample_rms") in specs


def test_relative_task_paths_are_read_from_the_protocol_file_folder(tmp_path):
    (tmp_path / "protocols").mkdir()
    path = write(
        tmp_path / "protocols" / "p.yaml",
        "name: p\nkind: normalization\ncandidates: [batchnorm]\n"
        "tasks: [{name: cifar, data: {dataset: cifar10, root: ../data}},\n"
        "        {name: own, data: {dataset: npz, path: a.npz}}]\n",
    )
    _, specs = load_protocol(path, autonorm.get_registry())
    assert specs["cifar", "batchnorm"].data_params["root"] == str(tmp_path / "protocols" / ".." / "data")
    assert specs["own", "batchnorm"].data_params["path"] == str(tmp_path / "protocols" / "a.npz")


def test_candidates_may_tune_their_own_hyperparameters_with_the_same_budget():
    protocol = {**PROTOCOL, "candidates": {"batchnorm": None, "groupnorm": {"groups": [2, 4]}}, "baseline": None}
    proto, specs = load_protocol(protocol, registry_with_test_components())
    assert list(proto.candidates) == ["batchnorm", "groupnorm"]
    (groupnorm,) = specs["digits", "groupnorm"].space["normalization"]
    assert groupnorm.params["groups"].choices == (2, 4) and specs["digits", "groupnorm"].search.trials == 1
    (batchnorm,) = specs["digits", "batchnorm"].space["normalization"]
    assert all(isinstance(d, Fixed) for d in batchnorm.params.values())


def test_protocol_errors_name_the_place(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nkind: normalization\ncandidates: [batchnorm, gropnorm]\ntasks: [{name: d, data: {}}]\n")
    with pytest.raises(SpecError, match=r"p.yaml:3:25: candidates.1: unknown normalization 'gropnorm'"):
        load_protocol(path, autonorm.get_registry())
    with pytest.raises(SpecError, match="baseline 'x' is not among the candidates"):
        load_protocol({**PROTOCOL, "baseline": "x"}, registry_with_test_components())
    with pytest.raises(SpecError, match="baseline 'batchnrm' is not among .*; did you mean 'batchnorm'"):
        load_protocol({**PROTOCOL, "baseline": "batchnrm"}, registry_with_test_components())
    with pytest.raises(SpecError, match="tasks.0.data.dataset: unknown dataset 'digit'"):
        tasks = [{"name": "d", "data": {"dataset": "digit"}}]
        load_protocol({**PROTOCOL, "tasks": tasks}, registry_with_test_components())
    path.write_text("name: p\nkind: normalization\ntasks: [{name: d, data: {}}]\ntune: {lrr: [0.1, 0.2]}\n")
    with pytest.raises(SpecError, match=r"p.yaml:4:8: tune.lrr: unknown key.*\(tune takes training settings: batch"):
        load_protocol(path, autonorm.get_registry())
    twice = [{"name": "d", "data": {"dataset": "digits"}}, {"name": "d", "data": {"dataset": "digits", "imbalance": 5}}]
    for protocol, message in [
        ({"tasks": twice}, "tasks.1.name: task name 'd' is used twice"),
        ({"candidates": ["batchnorm", "explode", "batchnorm"]}, "candidates.2: 'batchnorm' is listed twice"),
        ({"candidates": [], "baseline": None}, "candidates: empty; leave the key out"),
        ({"candidates": {"groupnorm": {"groups": -1}}, "baseline": None}, "candidates.groupnorm.groups: expected at"),
        ({"candidates": {"batchnorm": None, "gropnorm": {}}, "baseline": None}, "candidates.gropnorm: unknown norm"),
        ({"model": {"backbone": "smal_cnn"}}, "model.backbone: unknown model 'smal_cnn'"),
        ({"space": {"normalization": ["layernorm"]}}, "space.normalization: the candidates are the normalization"),
        ({"space": {"normalization.groupnorm.groups": 2}}, "space.normalization.groupnorm.groups: the candidates"),
        ({"search": {"trials": 5}}, "search.trials: a comparison's tuning trials per pair are its top-level trials"),
        ({"train": {"lr": 0.1}}, "train.lr: also in tune: a training setting is fixed in train or tuned in tune"),
    ]:
        with pytest.raises(SpecError, match=message):
            load_protocol({**PROTOCOL, **protocol}, registry_with_test_components())


def test_a_protocol_and_a_space_are_not_taken_for_each_other(tmp_path, capsys):
    """Each command says which file it was given and which command reads it; a misspelt protocol key
    is named as such, not as a space's unknown key."""
    space = write(tmp_path / "s.yaml", "name: s\ntrain: {epochs: 1}\n")
    protocol = write(tmp_path / "p.yaml", "name: p\nkind: normalization\ntasks: [{name: d, data: {}}]\n")
    typo = write(tmp_path / "t.yaml", "name: t\nkind: normalization\ntask: [{name: d, data: {}}]\nseed: 2\n")
    for args, message in [
        (
            ["compare", str(space)],
            f"a search space, not a comparison protocol (it has no kind or tasks): run `autonorm search {space}`",
        ),
        (
            ["search", str(protocol)],
            f"a comparison protocol, not a search space (it has kind, tasks): run `autonorm compare {protocol}`",
        ),
        (["validate", str(typo)], "tasks: missing; is 'task' a misspelling of it?"),
    ]:
        assert main(args) == 2
        assert message in " ".join(capsys.readouterr().err.split())
    typo.write_text(typo.read_text().replace("task:", "tasks:"))
    assert main(["validate", str(typo)]) == 2
    assert "t.yaml:4:1: seed: unknown key; did you mean 'seeds'?" in capsys.readouterr().err


def test_compare_results_and_report_through_the_cli(tmp_path):
    protocol = write(
        tmp_path / "p.yaml",
        "name: cli_cmp\nkind: normalization\ncandidates: [batchnorm, groupnorm, layernorm]\nbaseline: batchnorm\n"
        "tasks: [{name: digits, data: {dataset: digits}}, {name: tail, data: {dataset: digits, imbalance: 5}}]\n"
        "model: {backbone: small_cnn, depth: 1, width: 8}\ntrain: {epochs: 1, batch_size: 64}\ntrials: 1\nseeds: 2\n",
    )
    before = load_comparison(protocol)
    assert {c.error for c in before.cells.values()} == {"not run yet"}

    proc = run_cli("compare", str(protocol), "-q")
    assert "cli_cmp: normalization compared on test accuracy" in proc.stdout
    assert "Friedman test over tasks:" in proc.stdout
    assert "Wilcoxon vs batchnorm over the tasks, Holm-corrected" in " ".join(proc.stdout.split())  # wrapped
    stored = load_comparison(protocol)
    cell = stored.cells["tail", "groupnorm"]
    assert len(cell.accuracies) == 2 and cell.error is None
    shown = cell.shown(3)
    assert shown in proc.stdout

    results = run_cli("results", str(protocol))
    assert shown in results.stdout and "Friedman test over tasks" in results.stdout
    rows = [json.loads(line) for line in run_cli("results", str(protocol), "--jsonl").stdout.splitlines()]
    row = next(r for r in rows if (r["task"], r["candidate"]) == ("tail", "groupnorm"))
    assert row["accuracies"] == cell.accuracies and row["n"] == 2

    run_cli("report", str(protocol), "-o", str(tmp_path / "cmp.html"))
    page = (tmp_path / "cmp.html").read_text()
    assert "Test accuracy of every seed" in page and "Average rank" in page
    assert f"<td>{cell.shown(4)}</td>" in page and page.count('class="plotly-graph-div"') == 2


def test_a_changed_protocol_is_refused_and_seed_results_follow_the_best_trial(tmp_path, capsys):
    """After an edit, the stored tuning and seeds would be shown (or extended) as the new protocol's."""
    text = (
        "kind: normalization\ncandidates: [batchnorm]\ntasks: [{name: digits, data: {dataset: digits}}]\n"
        "model: {backbone: small_cnn, depth: 1, width: 4}\ntrain: {epochs: 1, batch_size: 64}\ntrials: 1\nseeds: 1\n"
    )
    protocol = write(tmp_path / "edited.yaml", text)  # named after its file
    assert main(["compare", str(protocol), "-q"]) == 0
    write(protocol, text.replace("epochs: 1", "epochs: 2"))
    for command in ("compare", "results"):
        assert main([command, str(protocol)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"{protocol}:5:9: train.epochs: pair digits/batchnorm ran with 1, the protocol now gives 2" in err
    write(protocol, text.replace("seeds: 1", "seeds: 2"))  # more seeds (or trials) extend it
    assert len(load_comparison(protocol).cells["digits", "batchnorm"].accuracies) == 1
    study = optuna.load_study(study_name="edited.digits.batchnorm", storage="sqlite:///edited.digits.batchnorm.db")
    study.set_user_attr("seed_results", {"0": {"trial": 7, "test_accuracy": 0.5}})  # another trial's seed
    assert load_comparison(protocol).cells["digits", "batchnorm"].error == "not finished: 0 of 2 seeds run"


def test_the_default_tuning_leaves_alone_what_train_fixes():
    default = {k: v for k, v in PROTOCOL.items() if k != "tune"}
    _, specs = load_protocol({**default, "train": {"epochs": 1, "lr": 0.1}}, registry_with_test_components())
    assert specs["digits", "batchnorm"].train["lr"] == Fixed(0.1)


#: One epoch of a one-block CNN: enough for a cell to have numbers.
FAST = {"model": {"backbone": "small_cnn", "depth": 1, "width": 8}, "train": {"epochs": 1, "batch_size": 64}}


def test_pair_studies_are_tagged_with_comparison_task_candidate_and_kind():
    protocol = {**PROTOCOL, **FAST, "candidates": ["batchnorm"], "baseline": None, "seeds": 1}
    compare_module.compare(protocol, registry_with_test_components())
    study = optuna.load_study(study_name="cmp.digits.batchnorm", storage="sqlite:///cmp.digits.batchnorm.db")
    attrs = study.user_attrs
    assert {k: attrs[k] for k in ("comparison", "task", "candidate", "kind")} == {
        "comparison": "cmp",
        "task": "digits",
        "candidate": "batchnorm",
        "kind": "normalization",
    }


def square_images(path, n=400, seed=0):
    """A user's own 8x8 images in an .npz: the class is which quadrant is bright."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = 0.3 * rng.normal(size=(n, 1, 8, 8))
    for i, c in enumerate(y):
        x[i, 0, 4 * (c // 2) : 4 * (c // 2) + 4, 4 * (c % 2) : 4 * (c % 2) + 4] += 2.0
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def test_a_users_npz_task_is_compared_next_to_digits(tmp_path):
    square_images(tmp_path / "squares.npz")
    tasks = [
        {"name": "digits", "data": {"dataset": "digits"}},
        {"name": "squares", "data": {"dataset": "npz", "path": "squares.npz", "test_fraction": 0.25}},
    ]
    protocol = {**PROTOCOL, "candidates": ["batchnorm", "groupnorm"], "tasks": tasks, "seeds": 2}
    result = compare_module.compare(protocol, registry_with_test_components())
    assert result.tasks == ["digits", "squares"]  # 4 classes: chance is 0.25
    for cand in ("batchnorm", "groupnorm"):
        cell = result.cells["squares", cand]
        assert cell.error is None and len(cell.accuracies) == 2 and cell.mean > 0.4
        assert result.cells["digits", cand].error is None
    assert set(result.average_ranks()) == {"batchnorm", "groupnorm"}


def test_a_third_party_normalization_runs_in_a_comparison(with_plugins):
    protocol = {**PROTOCOL, "candidates": ["batchnorm", "sample_rms"], "seeds": 2}
    lines = []
    result = compare_module.compare(protocol, with_plugins, on_cell=lambda cell: lines.append(cell))
    cell = result.cells["digits", "sample_rms"]
    assert cell.error is None and len(cell.accuracies) == 2 and cell.mean > 0.2 and cell.costs["params"] > 0
    assert [c.candidate for c in lines] == ["batchnorm", "sample_rms"]
    shown = display.comparison_table(result)
    console = Console(width=200, record=True)
    console.print(shown)
    text = console.export_text()
    assert "sample_rms" in text and cell.shown(3) in text


def test_a_candidate_incompatible_with_the_backbone_shows_why_while_the_others_finish():
    # needs_resnet (a test pooling) requires the resnet backbone; the protocol uses small_cnn
    pooling = {"kind": "pooling", "candidates": ["avg", "needs_resnet"], "baseline": "avg", "seeds": 1}
    protocol = {**PROTOCOL, **FAST, **pooling}
    result = compare_module.compare(protocol, registry_with_test_components())
    bad, ok = result.cells["digits", "needs_resnet"], result.cells["digits", "avg"]
    assert bad.mean is None and bad.error.startswith("incompatible: needs_resnet requires model 'resnet'")
    assert ok.error is None and len(ok.accuracies) == 1
    records = {r["candidate"]: r for r in result.records()}
    assert records["needs_resnet"]["error"] == bad.error and records["avg"]["mean"] == ok.mean
    console = Console(width=200, record=True)
    console.print(display.comparison_table(result))
    assert "needs_resnet requires model 'resnet'" in console.export_text()


def test_a_protocol_on_the_ray_backend_runs_unchanged():
    """The only test here that uses Ray: the comparison starts one local Ray for its pairs and stops it."""
    ray = pytest.importorskip("ray")
    registry = Registry()  # the built-in plugins only, which Ray's workers import as the driver does
    registry.load_entry_points()
    protocol = {
        **PROTOCOL,
        **FAST,
        "candidates": ["batchnorm", "groupnorm"],
        "seeds": 2,
        "search": {"backend": "ray", "sampler": "random"},
    }
    result = autonorm.compare(protocol, registry)
    assert not ray.is_initialized()
    for cand in ("batchnorm", "groupnorm"):
        cell = result.cells["digits", cand]
        assert cell.error is None and len(cell.accuracies) == 2
        stored = autonorm.load_study(f"cmp.digits.{cand}")
        assert [t.state for t in stored.trials] == ["complete"]
    again = load_comparison(protocol, registry)
    assert again.cells["digits", "groupnorm"].accuracies == result.cells["digits", "groupnorm"].accuracies


def test_the_comparison_report_names_candidates_without_results_and_marks_the_baseline():
    from autonorm.report import render_comparison_report

    partial = table(HAND)
    partial.cells["t2", "c"] = Cell("t2", "c", error="diverged")
    for c in "abc":
        partial.cells["t3", c] = Cell("t3", c, error="diverged")
    page = render_comparison_report(partial)
    assert "t2 (no result: c)" in page and "t3 (no result: every candidate)" in page
    assert "a, the baseline, in orange" in page
