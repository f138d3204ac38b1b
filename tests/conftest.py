"""Shared fixtures: plugin packages installed for real, a working directory per test, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import autonorm

FIXTURES = Path(__file__).parent / "fixtures"
AUTONORM = str(Path(sys.executable).parent / "autonorm")


def pip_install(target: Path, *packages: str) -> Path:
    """Install fixture plugin packages with pip into ``target``, a directory of their own."""
    for package in packages:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--target",
                str(target),
                str(FIXTURES / package),
            ],
            check=True,
        )
    return target


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The example and the broken fixture plugin packages, installed."""
    return pip_install(tmp_path_factory.mktemp("site"), "example_plugin", "broken_plugin")


@pytest.fixture
def with_plugins(plugin_site):
    """Put the installed fixture plugins on the import path and reload the registry; undo both after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(plugin_site))
        patch.setenv("PYTHONPATH", os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")]))
        yield autonorm.get_registry(refresh=True)
    sys.modules.pop("autonorm_example_plugin", None)
    autonorm.get_registry(refresh=True)  # after the path is restored: the fixture plugins are gone


@pytest.fixture(scope="session")
def digits():
    """The embedded digits split as trials see it (seed 0)."""
    from autonorm import ComponentChoice
    from autonorm.data import load_data

    return load_data(ComponentChoice(name="digits"), 0.2, 0.2, seed=0)


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch) -> Path:
    """Every test runs in an empty working directory, where default study databases land."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed ``autonorm`` command as a user would."""
    proc = subprocess.run([AUTONORM, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"autonorm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


#: A tiny, fast search space for tests: 1-2 epochs of a small CNN on digits.
TINY_SPACE = """
name: tiny
data: {dataset: digits}
model: {backbone: small_cnn, depth: 2, width: 8}
space:
  normalization:
    batchnorm: {}
    groupnorm: {groups: [2, 4]}
  activation: [relu, elu]
train:
  epochs: 2
  batch_size: 64
  lr: {loguniform: [0.01, 0.2]}
search:
  trials: 3
  pruner: none
  seed: 0
"""
