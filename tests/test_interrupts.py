"""Ctrl-C during a search: the first one counts, later ones are ignored, and a swallowed one is not lost."""

import os
import signal
import subprocess
import time

import optuna
import pytest

import autonorm
from autonorm.interrupts import interrupted_once, stop_if_interrupted
from tests.conftest import AUTONORM, TINY_SPACE, write


def test_a_ctrl_c_that_python_swallowed_still_ends_the_search_after_its_trial(tmp_path):
    """A KeyboardInterrupt raised inside a finalizer is printed as 'Exception ignored' and lost; the search
    used to run all its trials and exit 0."""

    def swallows_a_ctrl_c(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number == 0:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler runs here
            except KeyboardInterrupt:
                pass  # as Python does with one raised in a weakref callback or __del__

    path = write(tmp_path / "tiny.yaml", TINY_SPACE)
    with pytest.raises(KeyboardInterrupt), interrupted_once():
        autonorm.search(path, callbacks=[swallows_a_ctrl_c, stop_if_interrupted])
    assert len(autonorm.load_study("tiny").trials) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_swallowed_ctrl_c_is_raised_when_the_block_ends():
    with pytest.raises(KeyboardInterrupt), interrupted_once():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: ignored
        time.sleep(0.1)


def test_ctrl_c_pressed_twice_while_the_command_starts_ends_it_quietly(tmp_path):
    """The command spends seconds importing torch and the plugins; a terminal's Ctrl-C (and the copy the
    parent of --workers passes on) used to print a traceback from inside an import, or from a finalizer
    while Python exited."""
    path = write(tmp_path / "tiny.yaml", TINY_SPACE)
    proc = subprocess.Popen(
        [AUTONORM, "search", str(path), "-q"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.5)  # importing
    for _ in range(2):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGINT), out + err  # a shell shows both as 130
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert not (tmp_path / "tiny.db").exists()  # nothing had started
