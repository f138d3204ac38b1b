"""The Python face of the commands: ``search``, ``load_study`` and ``build_model``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import optuna

from autonorm.backends import run_optuna
from autonorm.backends.optuna import Callback
from autonorm.backends.workers import run_workers
from autonorm.registry import Registry, get_registry
from autonorm.results import StudyResults
from autonorm.space import check_choices_matter
from autonorm.spec import SearchSpec, load_spec


def search(
    source: str | os.PathLike | Mapping[str, Any] | SearchSpec,
    *,
    trials: int | None = None,
    storage: str | None = None,
    workers: int | None = None,
    registry: Registry | None = None,
    callbacks: Sequence[Callback] = (),
) -> StudyResults:
    """Run (or resume) the search a space file describes and return the study's results.

    ``trials``, ``storage`` and ``workers`` override the file's ``search.trials``, ``search.storage`` and
    ``search.workers``. With ``search.backend: ray`` the trials run on Ray Tune; with more than one worker,
    that many ``autonorm worker`` processes share the study (the storage must allow it: not SQLite).

    >>> results = autonorm.search("search_spaces/quickstart.yaml")  # doctest: +SKIP
    >>> results.best.config.summary()  # doctest: +SKIP
    'resnet | groupnorm | relu | avg | strided_conv | linear | kaiming | none | none'
    """
    registry = registry or get_registry()
    spec = source if isinstance(source, SearchSpec) else load_spec(source, registry)
    spec.override(trials=trials, storage=storage, workers=workers)
    check_choices_matter(spec, spec.load_data(registry), registry)
    return run(spec, registry, callbacks)


def run(spec: SearchSpec, registry: Registry, callbacks: Sequence[Callback] = ()) -> StudyResults:
    """Run a checked spec's search on its backend (what :func:`search` does after its checks, and the
    command line after its own)."""
    with _optuna_quiet():
        if spec.search.backend == "ray":
            from autonorm.backends.ray import run_ray  # Ray is imported only by searches that use it

            return run_ray(spec, registry, callbacks)
        if spec.search.workers > 1:
            return run_workers(spec, spec.search.workers, callbacks)
        return run_optuna(spec, registry, callbacks)


@contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's own messages off while autonorm searches: a line per trial, and for a failed trial a
    warning about the NaN it is recorded with, say less than the trial's recorded reason."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(level, optuna.logging.ERROR))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
