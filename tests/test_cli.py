"""Every command end to end. Two tests run the installed ``autonorm`` executable as a user does;
the others call the same entry point in-process, because each new process spends seconds importing torch."""

import json
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import autonorm
from autonorm.cli import main
from tests.conftest import AUTONORM, TINY_SPACE, run_cli, write


@pytest.fixture
def cli(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str, code: int = 0) -> tuple[str, str]:
        assert main(list(args)) == code
        out, err = capsys.readouterr()
        return out, err

    return run


def test_installed_command_searches_a_third_party_plugin(with_plugins, tmp_path):
    space = write(
        tmp_path / "ext.yaml",
        "space: {normalization: [sample_rms, batchnorm]}\nmodel: {backbone: small_cnn, depth: 1, width: 4}\n"
        "train: {epochs: 1}\nsearch: {trials: 3, sampler: random, pruner: none}\n",
    )
    out = run_cli("search", str(space)).stdout
    assert "3 complete" in out and "best configuration" in out
    study = autonorm.load_study("ext")
    assert "sample_rms" in {t.config.components["normalization"].name for t in study.trials}


def test_installed_command_reports_errors_without_traceback(tmp_path):
    bad = write(tmp_path / "bad.yaml", "space:\n  normalization: [batchnrom]\n")
    proc = run_cli("validate", str(bad), check=False)
    assert proc.returncode == 2
    assert "bad.yaml:2:18: space.normalization" in proc.stderr and "did you mean 'batchnorm'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plugins_lists_components_with_package_and_params(with_plugins, cli):
    out, _ = cli("plugins")
    assert "groupnorm" in out and "autonorm 0.1.0" in out and "groups: 8 in {1 < 2" in out  # the declared values
    assert "sample_rms" in out and "autonorm-example-plugin 1.2.3" in out
    assert "plugins that failed to load" in out and "this plugin needs a library" in out
    out, _ = cli("plugins", "--kind", "activation")
    assert "elu" in out and "groupnorm" not in out
    out, _ = cli("plugins", "--kind", "training")
    assert "requires normalization:none, train.optimizer:sgd" in " ".join(out.replace("│", " ").split())


def test_validate_summarizes_the_space(tmp_path, cli):
    out, _ = cli("validate", str(write(tmp_path / "tiny.yaml", TINY_SPACE)))
    assert "ok" in out and "normalization: batchnorm, groupnorm" in out and "searched: lr" in out
    assert re.search(r"data digits: \d+ train / \d+ validation / \d+ test, 1x8x8, 10 classes", out), out
    one_choice = TINY_SPACE.replace("batch_size: 64", "batch_size: [64]")  # a list of one value is fixed
    out, _ = cli("validate", str(write(tmp_path / "tiny.yaml", one_choice)))
    assert "searched: lr\n" in out or out.rstrip().endswith("searched: lr"), out
    with_frn = TINY_SPACE.replace("    batchnorm: {}", "    batchnorm: {}\n    frn: {}")
    out, _ = cli("validate", str(write(tmp_path / "tiny.yaml", with_frn)))
    assert "activation: relu, elu (not chosen with frn)" in out and "model:" not in out
    wider = TINY_SPACE.replace("width: 8}", "width: [4, 8]}")
    out, _ = cli("validate", str(write(tmp_path / "tiny.yaml", wider)))
    assert "model: small_cnn; searched: width" in out


def test_validate_summarizes_a_comparison_protocol(cli):
    out, _ = cli("validate", str(Path(__file__).parent.parent / "search_spaces" / "compare_normalizations.yaml"))
    assert "ok" in out and "comparison 'compare_normalizations' of normalization" in out
    assert "5 candidates x 3 tasks" in out and "candidates: batchnorm, groupnorm" in out
    _, err = cli("best", str(Path(__file__).parent.parent / "search_spaces" / "compare_normalizations.yaml"), code=2)
    assert "a comparison has no single best configuration" in " ".join(err.split())


EXAMPLES = sorted((Path(__file__).parent.parent / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_space_validates(path, cli):
    out, _ = cli("validate", str(path))
    assert "ok" in out


def test_search_resume_results_best(tmp_path, cli):
    space = write(tmp_path / "tiny.yaml", TINY_SPACE)
    out, _ = cli("search", str(space), "-q")
    assert "3 complete" in out and "best configuration" in out and "val_accuracy" in out
    out, _ = cli("search", str(space), "--trials", "4")
    assert "resuming study tiny: 3 of 4 trials already done" in out and "4 complete" in out
    assert "4/4 4 complete 0 pruned 0 failed best" in out  # the live line counts the earlier trials too
    assert "\nstudy tiny in sqlite:///tiny.db: 4 trials" in out  # the progress display ends its line
    out, _ = cli("results", str(tmp_path / "tiny.db"))  # the study's SQLite file, as the search named it
    assert f"study tiny in sqlite:///{tmp_path / 'tiny.db'}: 4 trials" in out
    out, _ = cli("search", str(space), "--trials", "2", "-q")
    assert "study tiny has 4 trials done, 2 asked: nothing to run" in out
    board, _ = cli("results", "tiny")
    assert "top 10 by val_accuracy" in board and board.count("complete") >= 4
    assert "lr" in board and "head" not in board  # only the columns that vary
    board_by_file, _ = cli("results", str(space))
    assert board_by_file == board
    lines, _ = cli("results", "tiny", "--jsonl")  # every trial, as search --jsonl prints them
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [r["number"] for r in rows] == [0, 1, 2, 3] and {r["state"] for r in rows} == {"complete"}
    assert max(r["value"] for r in rows) == autonorm.load_study("tiny").best.value
    cli("best", "tiny", "-o", "best.yaml")
    config = autonorm.TrialConfig.load(tmp_path / "best.yaml")
    assert config.model.name == "small_cnn" and config.input_shape == (1, 8, 8)
    assert config == autonorm.load_study("tiny").best.config
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["components"]["normalization"]["name"] in (
        "batchnorm",
        "groupnorm",
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="amp is on where CUDA is")
def test_a_search_with_amp_on_the_cpu_says_it_trains_without(tmp_path, cli):
    space = write(
        tmp_path / "amp.yaml",
        TINY_SPACE.replace("epochs: 2", "epochs: 1\n  amp: true").replace("trials: 3", "trials: 1"),
    )
    out, _ = cli("search", str(space), "-q")
    assert "note: amp is CUDA's (bf16 autocast); trials here train on the CPU, without it" in out
    out, _ = cli("search", str(write(tmp_path / "plain.yaml", TINY_SPACE.replace("trials: 3", "trials: 1"))), "-q")
    assert "note: amp" not in out


def test_version_names_autonorm_torch_and_optuna(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith(f"autonorm {autonorm.__version__} (torch ") and "optuna" in out


def test_output_piped_to_a_reader_that_goes_away_ends_quietly(tmp_path):
    """``autonorm results STUDY --jsonl | head -1``: no 'Broken pipe' error, no traceback."""
    run_cli("search", str(write(tmp_path / "tiny.yaml", TINY_SPACE)), "-q")
    proc = subprocess.Popen([AUTONORM, "results", "tiny", "--jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the command has imported torch and written its first line
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""


def test_results_of_a_missing_study_is_a_clear_error(cli):
    _, err = cli("results", "nothing", code=2)
    assert "no study database at 'nothing.db' in " in err and "run the command where the search ran" in err


def test_best_of_a_trial_without_a_configuration_says_why(tmp_path, cli):
    space = """
name: rejected
model: {backbone: small_cnn, depth: 1, width: 4}
space: {normalization: [none, batchnorm], training: [enorm]}
train: {epochs: 1}
search: {trials: 6, sampler: random, seed: 0}
"""
    cli("search", str(write(tmp_path / "rejected.yaml", space)), "-q", code=1)  # every trial incompatible
    rejected = next(t for t in autonorm.load_study("rejected").trials if t.config is None)
    _, err = cli("best", "rejected", "--trial", str(rejected.number), code=2)
    assert f"trial {rejected.number} did not train to a result: incompatible: training enorm requires" in err
    _, err = cli("best", "rejected", "--trial", "6", code=2)
    assert "no trial 6 (it has 6)" in err


def test_best_on_stdout_is_yaml_whatever_the_terminals_width(tmp_path, cli, monkeypatch):
    """A long path in the configuration used to be wrapped at the terminal's width, breaking the YAML."""
    folder = tmp_path / ("a_rather_long_folder_name_" * 6)
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "arrays.npz", x=rng.normal(size=(60, 1, 8)).astype(np.float32), y=np.arange(60) % 3)
    space = "name: long\ndata: {dataset: npz, path: arrays.npz}\nmodel: {backbone: small_cnn, depth: 1, width: 4}\n"
    cli("search", str(write(folder / "long.yaml", space + "train: {epochs: 1}\nsearch: {trials: 1}\n")), "-q")
    monkeypatch.setenv("COLUMNS", "60")
    out, _ = cli("best", "long")
    assert yaml.safe_load(out)["dataset"]["params"]["path"] == str(folder / "arrays.npz")


def test_train_on_a_space_file_says_to_export_a_configuration_first(tmp_path, cli):
    path = write(tmp_path / "tiny.yaml", TINY_SPACE)
    _, err = cli("train", str(path), code=2)
    err = " ".join(err.split())
    assert f"{path}: is a search space, not a configuration" in err and "autonorm best STUDY -o best.yaml" in err


def test_results_of_an_unknown_study_lists_the_known_ones(tmp_path, cli):
    cli("search", str(write(tmp_path / "tiny.yaml", TINY_SPACE)), "--trials", "1", "-q")
    _, err = cli("results", "tinyy", "--storage", "sqlite:///tiny.db", code=2)
    assert "no study 'tinyy' in sqlite:///tiny.db (studies there: tiny)" in err


def test_unknown_storage_scheme_is_a_clear_error(tmp_path, cli):
    space = write(tmp_path / "tiny.yaml", TINY_SPACE)
    _, err = cli("search", str(space), "--storage", "redis://localhost/0", code=2)
    assert "unknown storage scheme 'redis'" in err
    for command in ("results", "best", "report"):
        _, err = cli(command, "tiny", "--storage", "redis://localhost/0", code=2)
        assert err.startswith("error: --storage: unknown storage scheme 'redis'"), (command, err)


def test_best_of_a_study_without_completed_trials(tmp_path, cli):
    space = write(
        tmp_path / "t.yaml",
        TINY_SPACE.replace("trials: 3", "trials: 1").replace("lr: {loguniform: [0.01, 0.2]}", "lr: 1.0e+30"),
    )
    _, err = cli("search", str(space), "-q", code=1)  # scripts and CI see that nothing came of it
    assert "error: study tiny: no trial completed; the reasons are listed with `autonorm results tiny`" in err
    for args in ([], ["--by", "val_loss"], ["--max", "latency_ms=1"]):
        _, err = cli("best", "tiny", *args, code=2)
        assert "study tiny: no completed trial yet" in err, args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["results", "tiny", "--top", "0"], "argument --top: expected at least 1, got 0"),
        (["plugins", "--kind", "normalisation"], "argument --kind: invalid choice: 'normalisation'"),
    ],
)
def test_bad_command_line_values_are_usage_errors(args, message):
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_warning_is_one_line_without_the_quoted_source(tmp_path, cli):
    cli("validate", str(write(tmp_path / "tiny.yaml", TINY_SPACE)))  # main installs the format
    shown = warnings.formatwarning(UserWarning("plugin 't': autonorm_trial_reported raised"), UserWarning, "o.py", 58)
    assert shown == "warning: plugin 't': autonorm_trial_reported raised\n"
