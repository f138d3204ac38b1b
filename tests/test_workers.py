"""Many worker processes on one study: SQLite refused, a worker killed mid-trial (its trial retried by
another, none lost or duplicated), Ctrl-C recorded as interrupted and resumed. Real processes, a real
PostgreSQL (see tests/pg.py) and a real journal file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import yaml
from sqlalchemy.engine import make_url

import autonorm
from autonorm.backends.optuna import TARGET_ATTR, open_search_study
from autonorm.backends.workers import STORAGE_ENV, worker_spec
from autonorm.cli import main
from autonorm.interrupts import interrupt_once
from autonorm.objective import MAX_RERUNS
from autonorm.results import NOT_NEEDED, STOPPED, TrialRecord
from autonorm.storage import open_storage, rerun_stale
from tests.conftest import AUTONORM, write
from tests.pg import postgres_url  # noqa: F401 - a fixture

SPACE = """
name: {name}
model: {{backbone: small_cnn, depth: 1, width: 8}}
space: {{normalization: {{batchnorm: {{}}, groupnorm: {{groups: [2, 4]}}}}, activation: [relu, elu]}}
train: {{epochs: {epochs}, batch_size: 32}}
search: {{trials: {trials}, sampler: random, pruner: none, seed: 0}}
"""

#: Short heartbeats, so a killed worker's trial is found stale within seconds.
FAST_HEARTBEATS = {"AUTONORM_HEARTBEAT_INTERVAL": "1", "AUTONORM_GRACE_PERIOD": "3"}


def records(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; none while the study is not created yet."""
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    except KeyError:
        return []


def wait_for_trial_mid_training(url: str, name: str, procs, timeout: float = 480) -> optuna.trial.FrozenTrial:
    """A running trial that has reported at least one epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in records(url, name):
            if t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values:
                return t
        assert any(p.poll() is None for p in procs), "the workers exited before a trial was caught mid-training"
        time.sleep(0.2)
    raise AssertionError("no trial was seen mid-training")


def test_a_worker_is_interrupted_by_the_first_ctrl_c_only():
    """A terminal's Ctrl-C reaches a worker twice (directly, and passed on by the parent that started
    it); the second must not cut short the recording of its trial as interrupted."""
    previous = signal.signal(signal.SIGINT, interrupt_once)
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        os.kill(os.getpid(), signal.SIGINT)  # ignored: no KeyboardInterrupt
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sqlite_is_refused_for_several_workers_and_left_untouched(tmp_path, capsys):
    space = write(tmp_path / "w.yaml", SPACE.format(name="w", epochs=1, trials=2))
    assert main(["search", str(space), "--workers", "2", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{space}: search.storage: sqlite:///w.db cannot be shared by 2 worker processes" in err
    assert main(["search", str(space), "--workers", "2", "--storage", "sqlite:///x.db", "-q"]) == 2
    assert "error: --storage: sqlite:///x.db cannot be shared" in " ".join(capsys.readouterr().err.split())
    assert "journal:///" in err and "postgresql" in err
    assert not (tmp_path / "w.db").exists()
    assert main(["worker", "w", "--storage", "sqlite:///w.db"]) == 2
    assert "sqlite:///w.db cannot be shared by a study's worker processes" in " ".join(capsys.readouterr().err.split())


def test_a_killed_worker_trial_is_retried_by_another_and_none_is_lost(tmp_path, postgres_url):  # noqa: F811
    # 12 epochs: the kill lands while the trial trains, however fast its epochs
    spec = autonorm.load_spec(yaml.safe_load(SPACE.format(name="k", epochs=12, trials=3)))
    spec.search = spec.search.model_copy(update={"storage": postgres_url})
    open_search_study(spec).set_user_attr(TARGET_ATTR, 3)
    env = {**os.environ, **FAST_HEARTBEATS, STORAGE_ENV: postgres_url}
    procs = [subprocess.Popen([AUTONORM, "worker", "k", "-q"], env=env) for _ in range(2)]
    try:
        victim = wait_for_trial_mid_training(postgres_url, "k", procs)
        pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        survivor = next(p for p in procs if p.pid != pid)
        assert survivor.wait(timeout=600) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    trials = records(postgres_url, "k")
    done = [t for t in trials if TrialRecord.from_frozen(t).counts_as_done]
    assert len(done) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == optuna.trial.TrialState.FAIL and "fail_reason" not in killed.user_attrs
    assert TrialRecord.from_frozen(killed).reason == STOPPED  # what results and the report show for it
    retried = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retried) == 1 and retried[0] in done and retried[0].params == victim.params
    assert not [t for t in trials if t.state.is_finished() is False]
    assert len({t.number for t in done}) == 3


def test_a_stale_trial_runs_again_without_the_killed_trials_rungs_and_at_most_three_times():
    """Optuna's own retry copied every attribute, ASHA's rungs among them: the copy skipped rung 0."""
    study = optuna.create_study(direction="maximize")
    norm = optuna.distributions.CategoricalDistribution(["batchnorm", "groupnorm"])
    killed = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL,
        params={"normalization": "groupnorm"},
        distributions={"normalization": norm},
        system_attrs={"completed_rung_0": 0.9}, user_attrs={"worker": "host:1", "config": {}},
    )  # fmt: skip
    study.add_trial(killed)
    rerun_stale(study, study.trials[0])
    (waiting,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert waiting.user_attrs == {"retry_of": 0} and waiting.system_attrs == {"fixed_params": killed.params}
    failed = 0
    for _ in range(MAX_RERUNS):  # each rerun killed in turn; the third is not run again
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"retry_of": failed}))
        failed = study.trials[-1].number
        rerun_stale(study, study.trials[-1])
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == MAX_RERUNS


@pytest.mark.parametrize("resumed_by", ["worker", "search"])
def test_on_a_journal_file_a_killed_processs_trial_is_failed_and_retried(tmp_path, resumed_by):
    """A journal has no heartbeats: the trial of a worker (or of a plain search) killed on this machine
    stayed running, and taken, for good, and the search could not finish."""
    space = write(tmp_path / "k.yaml", SPACE.format(name="k", epochs=1, trials=2))
    url = "journal:///k.log"
    autonorm.search(space, storage=url)
    study = optuna.load_study(study_name="k", storage=open_storage(url))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    orphan.suggest_categorical("normalization", ["batchnorm", "groupnorm"])
    assert autonorm.load_study("k", url).counts() == "2 complete, 0 pruned, 0 failed, 1 running"
    if resumed_by == "worker":
        assert main(["worker", "k", "--storage", url, "--trials", "3", "-q"]) == 0
    else:
        autonorm.search(space, storage=url, trials=3)
    trials = records(url, "k")
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert TrialRecord.from_frozen(trials[orphan.number]).reason == STOPPED
    assert sum(TrialRecord.from_frozen(t).counts_as_done for t in trials) == 3 and len(trials) == 4
    assert autonorm.load_study("k", url).counts() == "3 complete, 0 pruned, 0 failed, 1 stopped"
    (rerun,) = [t for t in trials if t.user_attrs.get("retry_of") == orphan.number]  # its configuration, again
    assert rerun.params["normalization"] == trials[orphan.number].params["normalization"]


def test_ctrl_c_records_interrupted_trials_and_the_rerun_finishes_only_the_missing(tmp_path):
    space = write(tmp_path / "c.yaml", SPACE.format(name="c", epochs=4, trials=3))
    url = "journal:///c.log"
    command = [AUTONORM, "search", str(space), "--workers", "2", "--storage", url, "-q"]
    parent = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        wait_for_trial_mid_training(url, "c", [parent])
        os.killpg(parent.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = parent.communicate(timeout=300)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 130 and err.count("run the same command again to resume") == 1  # not per worker
    trials = records(url, "c")
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]  # no trial left running
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == "interrupted"]
    assert interrupted and all(t.state == optuna.trial.TrialState.FAIL for t in interrupted)
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]  # their copies, to run first
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == [t.number for t in interrupted]
    done_before = {t.number for t in trials if TrialRecord.from_frozen(t).counts_as_done}
    assert len(done_before) < 3

    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    after = records(url, "c")
    done_after = {t.number for t in after if TrialRecord.from_frozen(t).counts_as_done}
    assert len(done_after) == 3 and done_before <= done_after
    leftover = [(t.number, t.state, t.user_attrs) for t in after if t.number not in done_after]
    assert all(attrs.get("fail_reason") in ("interrupted", NOT_NEEDED) for _, _, attrs in leftover), leftover


def test_workers_share_a_postgres_study_and_finish_exactly_the_requested_trials(tmp_path, postgres_url):  # noqa: F811
    url = postgres_url
    space = write(tmp_path / "s.yaml", SPACE.format(name="s", epochs=1, trials=3))
    proc = subprocess.run(
        [AUTONORM, "search", str(space), "--workers", "2", "--storage", url, "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 complete" in proc.stdout
    assert make_url(url).password not in proc.stdout + proc.stderr
    results = autonorm.load_study("s", url)
    assert sum(t.counts_as_done for t in results.trials) == 3
    assert {t.state for t in results.trials} <= {"complete", "failed"}
    assert all(t.reason == NOT_NEEDED for t in results.trials if t.state == "failed")


def test_workers_run_the_space_as_edited_and_read_its_files_from_its_folder(tmp_path, monkeypatch):
    """Workers read the space the study holds: it is the file as it is now (a resumed search with other
    epochs trains them), with its relative data paths resolved from the file's folder."""
    project = tmp_path / "project"
    project.mkdir()
    rng = np.random.default_rng(0)
    np.savez(project / "mine.npz", x=rng.normal(size=(60, 1, 8, 8)).astype(np.float32), y=np.arange(60) % 3)
    text = SPACE.format(name="edited", epochs=1, trials=2).replace(
        "model:", "data: {dataset: npz, path: mine.npz}\nmodel:"
    ).replace("seed: 0}", "seed: 0, storage: 'journal:///edited.log'}")
    space = write(project / "space.yaml", text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["search", str(space), "--workers", "2", "-q"]) == 0
    write(space, text.replace("epochs: 1", "epochs: 2"))
    assert main(["search", str(space), "--workers", "2", "--trials", "4", "-q"]) == 0
    trials = [TrialRecord.from_frozen(t) for t in records("journal:///edited.log", "edited")]
    done = [t for t in trials if t.state == "complete"]
    assert len(done) == 4 and {t.config.epochs for t in done} == {1, 2}
    assert all(t.config.dataset.params["path"] == str(project / "mine.npz") for t in done)


def test_a_worker_joining_a_plain_search_aims_for_the_trials_the_search_was_given(tmp_path):
    """``--trials 2`` over the file's 3: a joining worker took the file's count, and stopped at once."""
    space = write(tmp_path / "j.yaml", SPACE.format(name="j", epochs=1, trials=3))
    url = f"journal:///{tmp_path / 'j.log'}"
    autonorm.search(space, storage=url, trials=2)
    assert worker_spec("j", url, autonorm.get_registry()).search.trials == 2
