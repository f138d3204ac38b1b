"""Ctrl-C during a search or a worker: the first one interrupts, later ones are ignored, and none is lost.

A terminal's Ctrl-C reaches the workers of ``--workers N`` and their parent, which passes it on to the
workers it started; and a user often presses it more than once. A second KeyboardInterrupt while the
first is being handled (Optuna recording the trial, the storage writing it) leaves the trial half
recorded, or hangs on a locked database, and one while Python exits prints a traceback from a
finalizer; so after the first, Ctrl-C is ignored until the command ends (SIGTERM and SIGKILL still
stop it at once). The ``autonorm`` command installs :func:`interrupt_once` before it imports
anything heavy, so this holds from its start. And a KeyboardInterrupt that lands inside a
finalizer is swallowed by Python ("Exception ignored in ..."): the Ctrl-C is remembered, and
:func:`stop_if_interrupted` ends the search after its trial.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

_interrupted = threading.Event()


def interrupt_once(signum: int, frame: Any) -> None:
    """SIGINT handler: the first Ctrl-C raises KeyboardInterrupt and is remembered; later ones are ignored."""
    if not _interrupted.is_set():
        _interrupted.set()
        raise KeyboardInterrupt


def stop_if_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna callback: end the search after this trial if a Ctrl-C came and was swallowed."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


@contextmanager
def interrupted_once() -> Iterator[None]:
    """Handle SIGINT with :func:`interrupt_once` inside the block (main thread only); a Ctrl-C that the
    block swallowed is raised as KeyboardInterrupt when it ends."""
    _interrupted.clear()
    previous = signal.signal(signal.SIGINT, interrupt_once)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if _interrupted.is_set():
        raise KeyboardInterrupt
