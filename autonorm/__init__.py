"""autonorm: search normalization, activation, pooling, initialization and head methods for PyTorch.

Public names are re-exported here; a plugin imports :data:`hookimpl` and :class:`Component`.
"""

from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("autonorm")
"""Marks a plugin's implementation of a hook in :mod:`autonorm.hookspecs`."""

from autonorm.api import search  # noqa: E402
from autonorm.build import Layers, build_model, conv_factory  # noqa: E402
from autonorm.comparison import Comparison, compare  # noqa: E402
from autonorm.config import ComponentChoice, TrialConfig  # noqa: E402
from autonorm.data import Arrays, Data  # noqa: E402
from autonorm.errors import SpecError, TrialFailed  # noqa: E402
from autonorm.final import TrainedModel, load_trained, train  # noqa: E402
from autonorm.params import Choice, FilePath, Float, Int, Str  # noqa: E402
from autonorm.registry import Component, Registry, get_registry  # noqa: E402
from autonorm.results import StudyResults, TrialRecord, load_study  # noqa: E402
from autonorm.spec import SearchSpec, load_spec  # noqa: E402
from autonorm.testing import check_component  # noqa: E402
from autonorm.training_method import TrainingMethod  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Arrays",
    "Choice",
    "Component",
    "ComponentChoice",
    "Data",
    "FilePath",
    "Float",
    "Int",
    "Layers",
    "Registry",
    "SearchSpec",
    "SpecError",
    "Str",
    "StudyResults",
    "TrialConfig",
    "TrialFailed",
    "TrainedModel",
    "TrialRecord",
    "TrainingMethod",
    "build_model",
    "conv_factory",
    "compare",
    "Comparison",
    "check_component",
    "get_registry",
    "hookimpl",
    "load_trained",
    "load_spec",
    "load_study",
    "search",
    "train",
]
