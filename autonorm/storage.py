"""Optuna storage from a URL, with errors that name the key and passwords that never get printed.

Two kinds of URL: an SQLAlchemy URL of a relational database (``sqlite:///study.db``,
``postgresql+psycopg2://user:password@host/db``), opened with heartbeats so the trials of a killed
process are found stale and retried; or ``journal:///study.log`` (``journal:////abs/path.log``), an
Optuna journal file that several processes on one machine may share (it has no heartbeats).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from autonorm.errors import SpecError

_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
JOURNAL_SCHEME = "journal"

#: Seconds between a running trial's heartbeats, and after how long without one it counts as stale.
#: The environment variables ``AUTONORM_HEARTBEAT_INTERVAL`` and ``AUTONORM_GRACE_PERIOD`` override them.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


def parse_url(url: str) -> tuple[Any, str]:
    """The parsed storage URL and its scheme; a :class:`SpecError` (key ``search.storage``) for a URL
    that is not one, an unknown scheme, or an in-memory SQLite database. Connects to nothing, so
    ``autonorm validate`` checks it too."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise SpecError(f"not a storage URL: {mask_url(url)!r}", path="search.storage") from None
    scheme = parsed.get_backend_name()
    if scheme != JOURNAL_SCHEME and scheme not in _RDB_SCHEMES:
        known = ", ".join((*_RDB_SCHEMES, JOURNAL_SCHEME))
        raise SpecError(
            f"unknown storage scheme {scheme!r}; expected one of {known} (e.g. sqlite:///study.db)",
            path="search.storage",
        )
    if scheme == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise SpecError(
            f"{mask_url(url)!r} keeps the study in memory, lost when the command ends (and a search cannot resume); "
            "name a file: sqlite:///study.db",
            path="search.storage",
        )
    return parsed, scheme


def open_storage(url: str, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage with heartbeats, so trials of a killed process are detected as stale."""
    parsed, scheme = parse_url(url)
    if scheme == JOURNAL_SCHEME:
        return _open_journal(parsed.database or "", must_exist)
    if scheme == "sqlite" and must_exist and not Path(parsed.database or "").is_file():
        where = "" if Path(parsed.database or "").is_absolute() else f" in {Path.cwd()}"
        raise SpecError(
            f"no study database at {parsed.database!r}{where} (a relative sqlite path is read from the working "
            "directory: run the command where the search ran, or give --storage)",
            path="storage",
        )
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what resume relies on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=int(os.environ.get("AUTONORM_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL)),
                grace_period=int(os.environ.get("AUTONORM_GRACE_PERIOD", GRACE_PERIOD)),
                heartbeat_stale_trial_callback=rerun_stale,
                engine_kwargs={"connect_args": {"timeout": 30}} if scheme == "sqlite" else {},
            )
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise SpecError(f"cannot open storage {mask_url(url)}: {reason}", path="search.storage") from None


def rerun_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Heartbeats' callback for a killed process's trial (:func:`autonorm.objective.rerun_stopped`).
    Optuna's own retry copies the trial's attributes, the pruner's rungs among them, so the copy would
    skip the rungs the killed trial had passed."""
    from autonorm.objective import rerun_stopped  # the objective's module imports this one's importers

    rerun_stopped(study, trial)


def _open_journal(path: str, must_exist: bool) -> optuna.storages.BaseStorage:
    if not path:
        raise SpecError("a journal storage needs a file: journal:///study.log", path="search.storage")
    relative = "" if Path(path).is_absolute() else f" in {Path.cwd()} (journal:///F is relative, journal:////F not)"
    if must_exist and not Path(path).is_file():
        raise SpecError(f"no study journal at {path!r}{relative}", path="storage")
    try:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    except OSError as exc:
        raise SpecError(f"cannot open journal {path!r}{relative}: {exc.strerror}", path="search.storage") from None


def alone(url: str) -> bool:
    """Whether one process at a time uses this storage (SQLite: see :func:`check_shareable`)."""
    return _scheme(url) == "sqlite"


def check_shareable(url: str, processes: int | None) -> None:
    """Refuse a storage that ``processes`` concurrent writers (None: a worker joining a study, with any
    number of others) would corrupt or lock up (SQLite)."""
    if (processes is None or processes > 1) and alone(url):
        sharers = "a study's worker processes" if processes is None else f"{processes} worker processes"
        raise SpecError(
            f"{mask_url(url)} cannot be shared by {sharers}: SQLite locks the whole file. "
            "Use a PostgreSQL or MySQL URL (postgresql+psycopg2://user:password@host/db) or an Optuna journal "
            "file (journal:///study.log)",
            path="search.storage",
        )


def has_heartbeats(url: str) -> bool:
    """Whether a killed process's running trials are detected (as stale) in this storage."""
    return _scheme(url) in _RDB_SCHEMES


def _scheme(url: str) -> str:
    try:
        return make_url(url).get_backend_name()
    except (ArgumentError, ValueError):
        return ""
