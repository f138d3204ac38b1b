"""The Ray Tune backend against a real local Ray (one per module: it takes many seconds to start), and
against a two-node Ray cluster started on 127.0.0.1 and stopped by the test. Searches are tiny."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import ray
import torch

import autonorm
from autonorm import load_spec
from autonorm.backends.ray import connect
from tests.conftest import AUTONORM, TINY_SPACE, write
from tests.helpers import registry_with_test_components

ROOT = str(Path(__file__).parent.parent)
RAY = str(Path(AUTONORM).parent / "ray")


def ray_space(name: str, trials: int, **search) -> dict:
    return {
        "name": name,
        "model": {"backbone": "small_cnn", "depth": 1, "width": 8},
        "space": {"normalization": {"batchnorm": {}, "groupnorm": {"groups": [2, 4]}}},
        "train": {"epochs": 1, "batch_size": 64},
        "search": {"backend": "ray", "trials": trials, "pruner": "none", "sampler": "random", **search},
    }


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module; its workers can import the test plugin (``tests``)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    for attempt in range(2):  # a loaded machine may miss Ray's fixed 30 s start-up deadline once
        try:
            connect(None)
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    yield ray.get_runtime_context()
    ray.shutdown()


def test_ray_search_writes_the_optuna_study_that_results_and_resume_read(local_ray):
    registry = registry_with_test_components()
    results = autonorm.search(ray_space("ray_tiny", 2), registry=registry)
    assert [t.state for t in results.trials] == ["complete", "complete"]
    loaded = autonorm.load_study("ray_tiny")
    assert [t.value for t in loaded.trials] == [t.value for t in results.trials]
    best = loaded.best
    assert best.metrics["params"] > 0 and "latency_ms" in best.metrics
    assert best.config.components["normalization"].name in ("batchnorm", "groupnorm")
    assert autonorm.build_model(best.config)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    study = optuna.load_study(study_name="ray_tiny", storage="sqlite:///ray_tiny.db")
    assert {t.user_attrs["ray_node"] for t in study.trials} <= {n["NodeID"] for n in ray.nodes()}
    assert all(t.intermediate_values == {0: t.value} for t in study.trials)  # epoch reports, as Optuna's own
    resumed = autonorm.search(ray_space("ray_tiny", 3), registry=registry)
    assert len(resumed.trials) == 3 and [t.params for t in resumed.trials[:2]] == [t.params for t in loaded.trials]


def test_a_trial_that_raises_on_ray_is_recorded_with_its_traceback(local_ray):
    registry = registry_with_test_components()
    space = ray_space("ray_fail", 1)
    space["space"]["activation"] = ["raises"]
    (trial,) = autonorm.search(load_spec(space, registry), registry=registry).trials
    assert trial.state == "failed" and trial.reason == "RuntimeError: boom inside a trial"
    (frozen,) = optuna.load_study(study_name="ray_fail", storage="sqlite:///ray_fail.db").trials
    assert "Traceback" in frozen.user_attrs["traceback"] and "testing_plugin.py" in frozen.user_attrs["traceback"]


def test_ray_started_here_serves_no_dashboard(local_ray):
    """Only Ray's core servers listen (GCS and raylet; Ray 2.60 binds them to every interface, see the
    module docstring of autonorm.backends.ray); no dashboard, no agent with an HTTP port."""
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path()).name
    listeners = {pid: listening_addresses([pid]) for pid in pids_mentioning(session)}
    listeners = {pid: found for pid, found in listeners.items() if found}
    assert listeners, "found no listening socket of this Ray"
    programs = {Path((Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]).decode()).name for pid in listeners}
    assert programs <= {"gcs_server", "raylet"}, programs
    assert 8265 not in {port for found in listeners.values() for _, port in found}


def test_search_on_a_two_node_cluster(tmp_path):
    # every process of this cluster names its temp dir (short: Ray's socket paths must fit in 107 bytes),
    # so the test stops exactly those
    temp = Path(tempfile.mkdtemp(prefix="anr", dir="/tmp"))
    port = "6391"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", str(temp), "--disable-usage-stats"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    try:
        subprocess.run(
            [RAY, "start", "--head", "--port", port, "--include-dashboard", "false", *common], check=True, env=env
        )
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", *common], check=True, env=env)
        space = write(
            tmp_path / "cluster.yaml",
            TINY_SPACE.replace("name: tiny", "name: cluster")
            .replace("epochs: 2", "epochs: 1")
            .replace("seed: 0", f"seed: 0\n  backend: ray\n  ray: {{address: '127.0.0.1:{port}'}}"),
        )
        proc = subprocess.run([AUTONORM, "search", str(space), "-q"], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "3 complete" in proc.stdout
        study = optuna.load_study(study_name="cluster", storage="sqlite:///cluster.db")
        assert all(len(t.user_attrs["ray_node"]) == 56 for t in study.trials)  # ran as Ray tasks of the cluster
    finally:
        for pid in pids_mentioning(str(temp)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
    assert not pids_mentioning(str(temp))


# ---------------------------------------------------------------- processes and sockets, from /proc


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def listening_addresses(pids: list[int]) -> list[tuple[str, int]]:
    """(host, port) of every TCP socket these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                found.append((_host(host, family), int(port, 16)))
    return found


def _host(hexed: str, family: int) -> str:
    raw = bytes.fromhex(hexed)
    if family == 4:
        return ".".join(str(b) for b in reversed(raw))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    return str(ipaddress.IPv6Address(b"".join(words)))
