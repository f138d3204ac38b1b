"""The search-space file: YAML (``safe_load`` only) -> a validated :class:`SearchSpec`.

Two passes: pydantic checks the shape and types of the sections, then every component name and
hyperparameter domain is checked against the plugin registry. Every mistake becomes a
:class:`~autonorm.errors.SpecError` naming the file, line, column and key.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from autonorm.config import ComponentChoice
from autonorm.data import Data, load_data
from autonorm.errors import SpecError, first_problem
from autonorm.params import Categorical, Choice, Domain, DomainError, FilePath, Fixed, Float, Int, Param, parse_domain
from autonorm.registry import KINDS, Component, Registry, get_registry, unknown_name_message
from autonorm.storage import check_shareable, parse_url
from autonorm.yamlfile import locate, placed, read_yaml

#: Kinds a search space chooses among, with the component used when the space does not mention them.
SEARCHED_KINDS = {
    "normalization": "batchnorm",
    "activation": "relu",
    "pooling": "avg",
    "downsampling": "strided_conv",
    "head": "linear",
    "initializer": "kaiming",
    "augmentation": "none",
    "training": "none",
}


def _a_number(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic reads true as 1
        raise ValueError("expected a whole number, not true or false")
    if isinstance(value, str):  # pydantic reads '3' as 3, where a hyperparameter's '0.1' is refused
        quoted = value.strip().isdigit()
        raise ValueError("expected a whole number" + (", not text: write it without quotes" if quoted else ""))
    return value


#: A count in a file (epochs, trials, workers): a positive whole number, not ``true`` or ``'3'``.
Count = Annotated[PositiveInt, BeforeValidator(_a_number)]

#: Training hyperparameters: searched like a component's own, fixed to the default when omitted.
TRAIN_PARAMS: dict[str, Param] = {
    "batch_size": Int(64, 8, 256, log=True, minimum=1),
    "optimizer": Choice("sgd", ("sgd", "adam", "adamw")),
    "lr": Float(0.05, 1e-3, 0.5, log=True, minimum=0),
    "weight_decay": Float(5e-4, 1e-6, 1e-2, log=True, minimum=0),
    # "weights": tensors of 2+ dimensions only (not normalization scales, biases, methods' 1-D parameters)
    "weight_decay_on": Choice("weights", ("weights", "all")),
    "momentum": Float(0.9, 0.0, 0.99, minimum=0, maximum=1),
    "schedule": Choice("cosine", ("cosine", "constant")),
}

#: Written for a hyperparameter, searches it over the range its component declares.
SEARCH_KEYWORD = "search"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")
    dataset: str = "digits"
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")
    backbone: str = "resnet"


class _Train(_Section):
    epochs: Count = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False
    channels_last: bool = False
    batch_size: Any = None
    optimizer: Any = None
    lr: Any = None
    weight_decay: Any = None
    weight_decay_on: Any = None
    momentum: Any = None
    schedule: Any = None


class TrialResources(_Section):
    """What one Ray trial reserves: CPUs, and GPUs (a fraction such as 0.5 shares one GPU between trials)."""

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> TrialResources:
        if self.gpu > 1 and not self.gpu.is_integer():
            raise ValueError(f"gpu above 1 must be a whole number, got {self.gpu}")
        return self


class RaySettings(_Section):
    """The ``search.ray:`` section, read by the Ray backend only."""

    #: ``None`` starts a local Ray; ``auto`` joins the cluster of this machine; or ``host:port``, ``ray://host:port``.
    address: str | None = None
    resources_per_trial: TrialResources = TrialResources()
    max_concurrent: Count | None = None


#: Metrics a search may optimize, with the direction of each: accuracies up, losses and costs down.
OBJECTIVE_DIRECTIONS = {
    "val_accuracy": "maximize",
    "val_balanced_accuracy": "maximize",
    "val_loss": "minimize",
    "val_ece": "minimize",
    "latency_ms": "minimize",
    "params": "minimize",
    "train_seconds": "minimize",
    "peak_memory_mb": "minimize",
}
Objective = Literal[
    "val_accuracy",
    "val_balanced_accuracy",
    "val_loss",
    "val_ece",
    "latency_ms",
    "params",
    "train_seconds",
    "peak_memory_mb",
]


class SearchSettings(_Section):
    """How trials are run: the ``search:`` section."""

    backend: Literal["optuna", "ray"] = "optuna"
    trials: Count = 20
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    pruner: Literal["none", "median", "asha", "hyperband"] = "asha"
    #: One metric, or a list of them for a multi-objective (Pareto) search: ``[val_accuracy, latency_ms]``.
    objective: Objective | list[Objective] = "val_accuracy"
    storage: str | None = None
    seed: int = Field(0, ge=0, lt=2**32)  # what NumPy's and Optuna's random generators accept
    timeout: float | None = Field(None, gt=0)
    #: Optuna backend: processes running trials side by side on this machine (they need a shared storage).
    workers: Count = 1
    #: Train a configuration the sampler proposes again (TPE often does on categorical spaces) instead
    #: of reusing the earlier trial's outcome (every backend).
    retrain_repeats: bool = False
    ray: RaySettings = RaySettings()

    @model_validator(mode="after")
    def _check_objectives(self) -> SearchSettings:
        names = self.objectives
        if not names:
            raise ValueError("objective: give at least one metric")
        if len(set(names)) != len(names):
            raise ValueError(f"objective: repeated metrics in {names}")
        if len(names) > 1 and self.backend != "optuna":
            raise ValueError("objective: a multi-objective search needs backend: optuna")
        if self.workers > 1 and self.backend != "optuna":
            raise ValueError(
                "workers: worker processes are the Optuna backend's; on Ray, trials run side by side up to "
                "search.ray.max_concurrent"
            )
        return self

    @property
    def objectives(self) -> list[str]:
        """The optimized metrics, as a list (one for a single-objective search)."""
        return list(self.objective) if isinstance(self.objective, list) else [self.objective]

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVE_DIRECTIONS[name] for name in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def direction(self) -> str:
        """The direction of the first (primary) objective."""
        return self.directions[0]


class _File(_Section):
    # a file name (``NAME.db``; a comparison's ``NAME.TASK.CANDIDATE.db``), never an option
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=120)
    data: _Data = _Data()
    model: _Model = _Model()
    space: dict[str, Any] = {}
    train: _Train = _Train()
    search: SearchSettings = SearchSettings()


@dataclass(frozen=True)
class Candidate:
    """A component that may be chosen, with a domain for each of its hyperparameters."""

    component: Component
    params: dict[str, Domain]

    @property
    def name(self) -> str:
        return self.component.name


@dataclass
class SearchSpec:
    """A validated search space: what to train, which components to choose among, how to search."""

    name: str
    dataset: Component
    data_params: dict[str, Any]
    val_fraction: float
    test_fraction: float
    model: Candidate
    space: dict[str, list[Candidate]]
    epochs: int
    train: dict[str, Domain]
    train_options: dict[str, Any]
    search: SearchSettings
    source: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def dataset_choice(self) -> ComponentChoice:
        return ComponentChoice(name=self.dataset.name, params=self.data_params)

    @property
    def storage(self) -> str:
        """The storage URL; by default an SQLite file named after the space, in the working directory."""
        return self.search.storage or f"sqlite:///{self.name}.db"

    def load_data(self, registry: Registry) -> Data:
        """The data its trials train on (loaded once per process); a problem with it is an error placed in
        the space file (``space.yaml:2:9: data.path (...): no such file``)."""
        try:
            return load_data(self.dataset_choice, self.val_fraction, self.test_fraction, self.search.seed, registry)
        except SpecError as exc:
            raise placed(exc, self.source) from None

    def override(self, **settings: Any) -> None:
        """Replace ``search`` settings (``trials``, ``storage``, ``workers``: from the command line or a
        call), validated like the file's; None leaves one as it is."""
        given = {key: value for key, value in settings.items() if value is not None}
        if not given:
            return
        try:
            self.search = SearchSettings.model_validate({**self.search.model_dump(), **given})
        except ValidationError as exc:
            where, message = first_problem(exc, SearchSettings)
            raise SpecError(message, path=".".join(map(str, ("search", *where)))) from None


# ---------------------------------------------------------------- loading


def name_from_file(file: str | os.PathLike | None) -> str:
    """A study's default name: its file's stem in the characters a name takes (étude.yaml -> etude)."""
    stem = unicodedata.normalize("NFKD", Path(file).stem if file else "autonorm").encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", stem).lstrip("._-") or "autonorm"


#: Top-level keys of a comparison protocol that a search space does not have.
PROTOCOL_KEYS = ("kind", "candidates", "baseline", "tasks", "tune", "seeds")


def protocol_keys(raw: Any) -> list[str]:
    """The keys only a comparison protocol has that the file's top-level mapping ``raw`` holds."""
    return [key for key in PROTOCOL_KEYS if key in raw] if isinstance(raw, dict) else []


def load_spec(
    source: str | os.PathLike | Mapping[str, Any], registry: Registry | None = None, folder: Path | None = None
) -> SearchSpec:
    """Read and validate a search space from a YAML file path or an already-parsed mapping.

    Relative paths (a dataset's ``path``, ``root``) are read from the file's folder; for a mapping,
    from ``folder`` if given (a protocol file's), else from the working directory.
    """
    registry = registry or get_registry()
    if isinstance(source, Mapping):
        return _Parser(None, None, registry, folder).parse(dict(source))
    path = Path(source)
    raw, tree = read_yaml(path, "search space")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"expected a mapping of sections at the top, got {type(raw).__name__}", file=str(path))
    return _Parser(str(path), tree, registry, path.absolute().parent).parse(raw)


class _Parser:
    def __init__(self, file: str | None, tree: yaml.Node | None, registry: Registry, folder: Path | None) -> None:
        self.file, self.tree, self.registry, self.folder = file, tree, registry, folder

    def error(self, path: tuple, message: str) -> SpecError:
        line, col = locate(self.tree, path)
        dotted = ".".join(str(p) for p in path) or None
        return SpecError(message, file=self.file, path=dotted, line=line, column=col)

    def parse(self, raw: dict[str, Any]) -> SearchSpec:
        try:
            file = _File.model_validate(raw)
        except ValidationError as exc:
            given = protocol_keys(raw)
            if self.file and given:
                raise SpecError(
                    f"a comparison protocol, not a search space (it has {', '.join(given)}): "
                    f"run `autonorm compare {self.file}`",
                    file=self.file,
                ) from None
            raise self.error(*first_problem(exc, _File)) from None
        default_name = name_from_file(self.file)
        dataset = self.component("dataset", file.data.dataset, ("data", "dataset"))
        data_extra = dict(file.data.model_extra or {})
        data_params = {key: self.fixed_value(dataset, key, value, ("data", key)) for key, value in data_extra.items()}
        for key, param in dataset.params.items():
            if isinstance(param, FilePath) and self.folder is not None:
                data_params[key] = param.resolve(data_params.get(key, param.default), self.folder)
        backbone = self.component("model", file.model.backbone, ("model", "backbone"))
        model = Candidate(backbone, self.params(backbone, file.model.model_extra or {}, ("model",)))
        space = {kind: self.candidates(kind, file.space.get(kind, default)) for kind, default in SEARCHED_KINDS.items()}
        for kind in file.space:
            if kind not in SEARCHED_KINDS:
                raise self.error(("space", kind), unknown_name_message("kind", kind, SEARCHED_KINDS))
        train = {
            key: self.domain(param, getattr(file.train, key), ("train", key)) for key, param in TRAIN_PARAMS.items()
        }
        spec = SearchSpec(
            name=file.name or default_name,
            dataset=dataset,
            data_params=data_params,
            val_fraction=file.data.val_fraction,
            test_fraction=file.data.test_fraction,
            model=model,
            space=space,
            epochs=file.train.epochs,
            train=train,
            train_options={k: getattr(file.train, k) for k in ("device", "amp", "channels_last")},
            search=file.search,
            source=self.file,
            raw=raw,
        )
        self.check_combinations(spec)
        try:
            parse_url(spec.storage)
            if spec.search.backend == "optuna" and spec.search.storage:  # the default: --storage may give one
                check_shareable(spec.storage, spec.search.workers)
        except SpecError as exc:
            raise self.error(("search", "storage"), exc.message) from None
        return spec

    # -- pieces
    def component(self, kind: str, name: Any, path: tuple) -> Component:
        if not isinstance(name, str):
            raise self.error(path, f"expected the name of a {kind}, got {name!r}")
        try:
            return self.registry.get(kind, name)
        except KeyError as exc:
            raise self.error(path, exc.args[0]) from None

    def candidates(self, kind: str, raw: Any) -> list[Candidate]:
        path = ("space", kind)
        if isinstance(raw, str):
            raw = {raw: {}}
        elif isinstance(raw, list):
            if not all(isinstance(n, str) for n in raw):
                raise self.error(path, f"expected a list of {kind} names, got {raw!r}")
            if len(set(raw)) != len(raw):
                raise self.error(path, f"repeated names in {raw!r}")
            raw = {name: {} for name in raw}
        if not isinstance(raw, dict) or not raw:
            raise self.error(path, f"expected a {kind} name, a list of names or a mapping name -> parameters")
        found = []
        for name, params in raw.items():
            comp = self.component(kind, name, (*path, name))
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise self.error((*path, name), f"expected a mapping of {name}'s parameters, got {params!r}")
            found.append(Candidate(comp, self.params(comp, params, (*path, name))))
        return found

    def params(self, comp: Component, raw: Mapping[str, Any], path: tuple) -> dict[str, Domain]:
        for key in raw:
            if key not in comp.params:
                known = ", ".join(comp.params) or "none"
                note = self.registry.failure_note(comp.name, only_about=True)  # another plugin's of that name?
                raise self.error((*path, key), f"{comp.name} has no parameter {key!r} (parameters: {known}){note}")
        return {key: self.domain(param, raw.get(key), (*path, key)) for key, param in comp.params.items()}

    def domain(self, param: Param, raw: Any, path: tuple) -> Domain:
        if isinstance(param, FilePath) and self.folder is not None:  # a relative path is the file's folder's
            raw = param.default if raw in (None, SEARCH_KEYWORD) else raw
            raw = param.resolve(raw, self.folder) if isinstance(raw, str) else raw
        if raw == SEARCH_KEYWORD:
            return param.default_domain()
        if raw is None:
            return Fixed(param.default)
        try:
            return parse_domain(param, raw)
        except DomainError as exc:
            raise self.error(path, str(exc)) from None

    def fixed_value(self, comp: Component, key: str, raw: Any, path: tuple) -> Any:
        if key not in comp.params:
            known = ", ".join(comp.params) or "none"
            raise self.error(path, f"dataset {comp.name} has no parameter {key!r} (parameters: {known})")
        try:
            return comp.params[key].check(raw)
        except DomainError as exc:
            searched = isinstance(raw, (dict, list)) or raw == SEARCH_KEYWORD
            message = f"a dataset's parameters are fixed, not searched: give one value ({exc})" if searched else exc
            raise self.error(path, str(message)) from None

    def check_combinations(self, spec: SearchSpec) -> None:
        """Reject what can never run: a required component that is not offered, or a candidate that
        excludes every choice of another kind that must be chosen."""
        offered = {kind: {c.name for c in cands} for kind, cands in spec.space.items()}
        offered["model"] = {spec.model.name}
        offered["dataset"] = {spec.dataset.name}
        for key, domain in spec.train.items():  # a requirement such as "train.optimizer:sgd"
            if isinstance(domain, (Fixed, Categorical)):
                values = (domain.value,) if isinstance(domain, Fixed) else domain.choices
                offered[f"train.{key}"] = {str(v) for v in values}
        for kind, cands in [*spec.space.items(), ("model", [spec.model])]:
            for cand in cands:
                path = ("model",) if kind == "model" else ("space", kind, cand.name)
                for req in cand.component.requires:
                    rkind, _, rname = req.partition(":")
                    open_range = rkind.startswith("train.") and rkind not in offered  # a searched range: may hold it
                    if rname and not open_range and rname not in offered.get(rkind, ()):
                        offer = ", ".join(sorted(offered.get(rkind, ()))) or "none"
                        raise self.error(
                            path, f"{cand.name} requires {rkind} {rname!r}, which the space does not offer ({offer})"
                        )
                for exc in cand.component.excludes:
                    ekind, _, ename = exc.partition(":")
                    if ename and offered.get(ekind) == {ename}:
                        raise self.error(
                            path, f"{cand.name} cannot be combined with {ekind} {ename!r}, the only {ekind} offered"
                        )


__all__ = ["SearchSpec", "SearchSettings", "Candidate", "load_spec", "SEARCHED_KINDS", "TRAIN_PARAMS", "KINDS"]
