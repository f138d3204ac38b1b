"""autonorm: search normalization, activation, pooling, initialization and head methods for PyTorch.

Public names are re-exported here; a plugin imports :data:`hookimpl` and :class:`Component`. They are
imported on first use, so that importing the package (as the ``autonorm`` command and its worker
processes do first) does not import torch: a Ctrl-C while torch loads then ends a command quietly.
"""

# ruff: noqa: F401 (the names under TYPE_CHECKING are re-exports)

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

hookimpl = pluggy.HookimplMarker("autonorm")
"""Marks a plugin's implementation of a hook in :mod:`autonorm.hookspecs`."""

__version__ = "0.1.0"

_MODULES = {
    "search": "api",
    "Layers": "build",
    "build_model": "build",
    "conv_factory": "build",
    "Comparison": "comparison",
    "compare": "comparison",
    "ComponentChoice": "config",
    "TrialConfig": "config",
    "Arrays": "data",
    "Data": "data",
    "SpecError": "errors",
    "TrialFailed": "errors",
    "TrainedModel": "final",
    "load_trained": "final",
    "standardize": "final",
    "train": "final",
    "Choice": "params",
    "FilePath": "params",
    "Float": "params",
    "Int": "params",
    "Str": "params",
    "Component": "registry",
    "Registry": "registry",
    "get_registry": "registry",
    "StudyResults": "results",
    "TrialRecord": "results",
    "load_study": "results",
    "SearchSpec": "spec",
    "load_spec": "spec",
    "check_component": "testing",
    "TrainingMethod": "training_method",
}

__all__ = sorted([*_MODULES, "hookimpl"])


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'autonorm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"autonorm.{_MODULES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULES])


if TYPE_CHECKING:  # the same names, for type checkers and editors
    from autonorm.api import search
    from autonorm.build import Layers, build_model, conv_factory
    from autonorm.comparison import Comparison, compare
    from autonorm.config import ComponentChoice, TrialConfig
    from autonorm.data import Arrays, Data
    from autonorm.errors import SpecError, TrialFailed
    from autonorm.final import TrainedModel, load_trained, standardize, train
    from autonorm.params import Choice, FilePath, Float, Int, Str
    from autonorm.registry import Component, Registry, get_registry
    from autonorm.results import StudyResults, TrialRecord, load_study
    from autonorm.spec import SearchSpec, load_spec
    from autonorm.testing import check_component
    from autonorm.training_method import TrainingMethod
