"""The Ray Tune backend against a real local Ray (one per module: it takes many seconds to start), and
against a two-node Ray cluster started on this machine and stopped by the test. Searches are tiny."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import optuna
import pytest
import ray
import torch
from torch import nn

import autonorm
import autonorm.cli
from autonorm import Component, load_spec
from autonorm.backends.ray import check_resources, connect
from autonorm.spec import RaySettings
from tests.conftest import AUTONORM, TINY_SPACE, run_cli, write
from tests.helpers import registry_with_test_components

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}

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
    """One local Ray for the module, started as the backend starts one, with one (pretend) GPU; its
    workers can import the test plugin (``tests``)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    for attempt in range(2):  # a loaded machine may miss Ray's fixed 30 s start-up deadline once
        try:
            connect(None, num_gpus=1)
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    yield ray.get_runtime_context()
    ray.shutdown()


def test_ray_search_writes_the_optuna_study_that_results_and_resume_read(local_ray):
    registry = registry_with_test_components()
    handler = signal.getsignal(signal.SIGINT)
    results = autonorm.search(ray_space("ray_tiny", 2), registry=registry)
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C works as before once the search is over
    assert [t.state for t in results.trials] == ["complete", "complete"]
    loaded = autonorm.load_study("ray_tiny")
    assert [t.value for t in loaded.trials] == [t.value for t in results.trials]
    best = loaded.best
    assert best.metrics["params"] > 0 and "latency_ms" in best.metrics
    assert best.config.components["normalization"].name in ("batchnorm", "groupnorm")
    assert autonorm.build_model(best.config)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    study = optuna.load_study(study_name="ray_tiny", storage="sqlite:///ray_tiny.db")
    assert {t.user_attrs["ray_node"] for t in study.trials} <= {n["NodeID"] for n in ray.nodes()}
    assert all(t.intermediate_values == {1: t.value} for t in study.trials)  # step = epochs done, as without Ray
    resumed = autonorm.search(ray_space("ray_tiny", 3), registry=registry)
    assert len(resumed.trials) == 3 and [t.params for t in resumed.trials[:2]] == [t.params for t in loaded.trials]


def test_a_callback_that_cannot_be_pickled_sees_every_ray_trial(local_ray):
    """The live progress display holds locks; Tune pickles its search algorithm, callbacks included."""
    seen, lock = [], threading.RLock()

    def callback(study, trial):
        with lock:
            seen.append(trial.number)

    autonorm.search(ray_space("ray_progress", 2), registry=registry_with_test_components(), callbacks=[callback])
    assert sorted(seen) == [0, 1]


def test_a_trial_that_raises_on_ray_is_recorded_with_its_traceback(local_ray):
    registry = registry_with_test_components()
    space = ray_space("ray_fail", 1)
    space["space"]["activation"] = ["raises"]
    (trial,) = autonorm.search(load_spec(space, registry), registry=registry).trials
    assert trial.state == "failed" and trial.reason == "RuntimeError: boom inside a trial"
    (frozen,) = optuna.load_study(study_name="ray_fail", storage="sqlite:///ray_fail.db").trials
    assert "Traceback" in frozen.user_attrs["traceback"] and "testing_plugin.py" in frozen.user_attrs["traceback"]


def test_a_trial_that_diverges_on_ray_is_recorded_as_pruned_with_its_reason(local_ray):
    registry = registry_with_test_components()
    space = ray_space("ray_diverge", 1)
    space["space"]["normalization"] = ["explode"]
    (trial,) = autonorm.search(load_spec(space, registry), registry=registry).trials
    assert trial.state == "pruned" and trial.rejected and trial.reason.startswith("diverged")
    (frozen,) = optuna.load_study(study_name="ray_diverge", storage="sqlite:///ray_diverge.db").trials
    assert frozen.state == optuna.trial.TrialState.PRUNED and "autonorm_pruned" not in frozen.user_attrs


def test_ray_started_here_listens_on_the_loopback_address_only(local_ray):
    """Every listening socket of this Ray (GCS, raylet, workers, agents, the driver) is on 127.0.0.1,
    and there is no dashboard."""
    import psutil  # Ray's own copy, on the path once ray is imported

    session = Path(ray._private.worker.global_worker.node.get_session_dir_path()).name
    me = psutil.Process()
    processes = {me.pid, *(p.pid for p in me.children(recursive=True)), *pids_mentioning(session)}
    listening = [
        (c.pid, c.laddr)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in processes
    ]
    programs = {psutil.Process(pid).name() for pid, _ in listening}
    assert {"gcs_server", "raylet"} <= programs, programs
    assert all(addr.ip in LOOPBACK for _, addr in listening), listening
    assert 8265 not in {addr.port for _, addr in listening}
    assert ray._private.worker.global_worker.node.node_ip_address == "127.0.0.1"


class Meet(nn.Module):
    """An activation that, the first time it trains in a process, marks ``folder`` and waits (up to
    30 s) for a mark of another process: two trials meet only if they run at the same time."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = Path(folder)

    def forward(self, x):
        mark = self.folder / str(os.getpid())
        if self.training and not mark.exists():
            mark.touch()
            deadline = time.monotonic() + 30
            while len(list(self.folder.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            mark.write_text(str(len(list(self.folder.iterdir()))))
        return torch.relu(x)


class MeetPlugin:
    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    @autonorm.hookimpl
    def autonorm_components(self):
        return [Component(kind="activation", name="meet", factory=partial(_meet, self.folder))]


def _meet(folder: str, num_channels: int) -> Meet:
    return Meet(folder)


def test_half_a_gpu_per_trial_packs_two_trials_on_one_gpu(local_ray, tmp_path):
    assert ray.cluster_resources().get("GPU") == 1
    folder = tmp_path / "marks"
    folder.mkdir()
    registry = registry_with_test_components()
    registry.register(MeetPlugin(folder), "meet")
    space = ray_space("ray_gpu", 2, ray={"resources_per_trial": {"cpu": 1, "gpu": 0.5}, "max_concurrent": 2})
    space["space"]["activation"] = ["meet"]
    space["train"]["device"] = "cpu"  # the GPU is Ray's bookkeeping only; the trials train on the CPU
    results = autonorm.search(space, registry=registry)
    assert [t.state for t in results.trials] == ["complete", "complete"]
    marks = {p.name: p.read_text() for p in folder.iterdir()}
    assert len(marks) == 2 and set(marks.values()) == {"2"}, marks  # both trials saw the other running


def test_asha_on_ray_finishes_exactly_the_requested_trials(local_ray):
    registry = registry_with_test_components()
    space = ray_space("ray_asha", 4, pruner="asha")
    space["train"]["epochs"] = 3  # first rung after 1 epoch, as without Ray; never after the last
    space["train"]["lr"] = {"loguniform": [0.001, 0.3]}  # no repeats: each trial trains, and some are stopped
    results = autonorm.search(space, registry=registry)
    assert len(results.trials) == 4 and {t.state for t in results.trials} <= {"complete", "pruned"}
    study = optuna.load_study(study_name="ray_asha", storage="sqlite:///ray_asha.db")
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED and "repeat_of" not in t.user_attrs]
    assert pruned and all(list(t.intermediate_values) == [1] for t in pruned)  # stopped at the first rung, epoch 1
    assert all(t.user_attrs["params"] > 0 and len(t.user_attrs["history"]) == 1 for t in pruned)  # as without Ray
    assert all(t.user_attrs["config"]["seed"] == t.number for t in study.trials)
    again = autonorm.search(space, registry=registry)  # all counted as done: nothing more to run
    assert [t.number for t in again.trials] == [0, 1, 2, 3]


def test_a_repeated_configuration_on_ray_reuses_the_earlier_outcome(local_ray):
    """One trial at a time over 3 configurations: of 5 trials, each configuration trains once at most."""
    autonorm.search(ray_space("ray_repeats", 5, ray={"max_concurrent": 1}), registry=registry_with_test_components())
    trials = optuna.load_study(study_name="ray_repeats", storage="sqlite:///ray_repeats.db").trials
    trained = {}
    for t in trials:
        config = tuple(sorted(t.params.items()))
        if "repeat_of" in t.user_attrs:
            earlier = trials[t.user_attrs["repeat_of"]]
            assert earlier.params == t.params and (t.state, t.value) == (earlier.state, earlier.value)
            assert t.user_attrs.get("history") == earlier.user_attrs.get("history") and t.user_attrs["ray_node"]
        else:
            assert config not in trained
            trained[config] = t
    assert len(trained) <= 3 and len(trials) == 5 and all(t.state.is_finished() for t in trials)


def test_ctrl_c_stops_a_ray_search_records_interrupted_and_exits_130(tmp_path):
    """The same ending as the local backend: stdout stays JSON lines (Tune prints nothing there)."""
    space = write(
        tmp_path / "stop.yaml",
        TINY_SPACE.replace("name: tiny", "name: stop")
        .replace("epochs: 2", "epochs: 200")
        .replace("seed: 0", "seed: 0\n  backend: ray"),
    )
    proc = subprocess.Popen(
        [AUTONORM, "search", str(space), "--jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    try:
        deadline = time.monotonic() + 120
        while not any(t.state.name == "RUNNING" and t.intermediate_values for t in trials_of("stop")):
            assert proc.poll() is None and time.monotonic() < deadline, "no trial was seen training"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    assert "Token authentication" not in err  # a local Ray's default, not news on every search
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and all(line["state"] == "failed" and line["reason"] == "interrupted" for line in lines)
    trials = trials_of("stop")
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.user_attrs.get("fail_reason") == "interrupted" for t in failed)
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]  # to run again on resume
    copies = {t.user_attrs["retry_of"]: t.system_attrs["fixed_params"] for t in waiting}
    assert copies == {t.number: t.params for t in failed} and len(trials) == 2 * len(failed)

    space.write_text(space.read_text().replace("epochs: 200", "epochs: 1"))
    run_cli("search", str(space), "-q")  # resumed: the interrupted configurations run first
    done = {t.user_attrs.get("retry_of"): t for t in trials_of("stop") if t.state.is_finished()}
    assert all(done[t.number].params == t.params for t in failed)
    assert all(done[t.number].user_attrs["config"]["seed"] == t.number for t in failed)  # in its place


def test_an_address_nothing_answers_at_is_an_error_at_once(tmp_path, capsys):
    far = TINY_SPACE.replace("seed: 0", "seed: 0\n  backend: ray\n  ray: {address: '127.0.0.1:9'}")
    space = write(tmp_path / "far.yaml", far)
    started = time.monotonic()
    assert autonorm.cli.main(["search", str(space), "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{space}:" in err and "search.ray.address: nothing answers at 127.0.0.1:9" in err, err
    assert time.monotonic() - started < 30


def test_a_trial_asking_for_more_than_this_machine_has_is_an_error(local_ray):
    for resources, message in [({"cpu": 512}, "512 CPU(s) per trial, but this machine's Ray has"),
                               ({"gpu": 8}, "8 GPU(s) per trial, but this machine's Ray has 1")]:  # fmt: skip
        settings = RaySettings.model_validate({"resources_per_trial": resources})
        with pytest.raises(autonorm.SpecError, match=re.escape(message)):
            check_resources(settings)
    check_resources(RaySettings())


def test_search_on_a_two_node_cluster(tmp_path):
    # Ray 2.60 puts both nodes on the machine's network address (it replaces 127.0.0.1: nodes of a
    # cluster must reach each other). Every process of this cluster names its temp dir (short: Ray's
    # socket paths must fit in 107 bytes), so the test stops exactly those.
    temp = Path(tempfile.mkdtemp(prefix="anr", dir="/tmp"))
    port = "6391"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", str(temp), "--disable-usage-stats"]
    # its own token (Ray's token authentication), whatever ~/.ray holds or a ray.init here enabled
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, "PYTHONPATH": ROOT, **token}
    try:
        subprocess.run(
            [RAY, "start", "--head", "--port", port, "--include-dashboard", "false", *common], check=True, env=env
        )
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", *common], check=True, env=env)
        head = (temp / "ray_current_cluster").read_text().strip()
        # a trial takes one CPU (the default), a node has one, and Tune starts max_concurrent trials at
        # once: one on each node
        space = write(
            tmp_path / "cluster.yaml",
            TINY_SPACE.replace("name: tiny", "name: cluster")
            .replace("epochs: 2", "epochs: 1")
            .replace("seed: 0", "seed: 0\n  backend: ray\n  ray: {address: auto, max_concurrent: 2}"),
        )
        proc = subprocess.run(  # `auto`: the cluster named by RAY_ADDRESS, as Ray looks it up
            [AUTONORM, "search", str(space), "--jsonl", "-q"],
            capture_output=True,
            text=True,
            env={**env, "RAY_ADDRESS": head},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout: JSON lines only
        assert [line["state"] for line in lines] == ["complete"] * 3
        study = optuna.load_study(study_name="cluster", storage="sqlite:///cluster.db")
        nodes = {t.user_attrs["ray_node"] for t in study.trials}
        assert len(nodes) == 2, nodes  # ran on both nodes of the cluster
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


def trials_of(name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of the study in ``NAME.db``; none while it is not created yet."""
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{name}.db").get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - not created yet, or the database is being written
        return []


def test_auto_without_a_cluster_says_what_to_do(monkeypatch):
    def no_cluster(**_):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    message = r"search.ray.address: no Ray cluster to join \(Could not find any running Ray instance\): start one"
    with pytest.raises(autonorm.SpecError, match=message):
        connect("auto")
