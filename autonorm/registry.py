"""Components by (kind, name), discovered through the ``autonorm`` entry-point group with pluggy.

Built-in and third-party plugins are found the same way: each entry point names a module whose
``autonorm_components`` hook returns :class:`Component` declarations. A plugin that fails to import
or whose hook raises is recorded in :attr:`Registry.failures` and the others still load.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from autonorm import hookspecs
from autonorm.errors import SpecError
from autonorm.params import Choice, DomainError, Float, Int, Param, Str

ENTRY_POINT_GROUP = "autonorm"

#: Every kind of component, in the order a configuration is resolved.
KINDS = (
    "dataset",
    "model",
    "normalization",
    "activation",
    "pooling",
    "downsampling",
    "head",
    "initializer",
    "augmentation",
    "training",
)

#: Floating dtypes a component may declare in :attr:`Component.dtypes` (names of ``torch`` dtypes).
DTYPES = ("float32", "float64", "bfloat16", "float16")

#: Kinds whose components are nothing but a :class:`~autonorm.training_method.TrainingMethod`:
#: their factory is ``f(**params) -> TrainingMethod``.
METHOD_KINDS = ("augmentation", "training")


@dataclass(frozen=True)
class Component:
    """One method, declared by a plugin.

    ``factory`` is called with the kind's positional arguments (see :mod:`autonorm.build`) and the
    component's hyperparameters as keywords. ``requires`` and ``excludes`` hold ``"kind"`` or
    ``"kind:name"``: excluding a kind means it is not chosen at all alongside this component (FRN
    brings its own activation); excluding or requiring ``kind:name`` rules combinations out or in. A
    requirement ``train.KEY:value`` (``train.optimizer:sgd``) is on a training setting: a space whose
    setting can never take that value is refused when it is read (the method refuses other values at
    run time itself).
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    params: Mapping[str, Param] = field(default_factory=dict)
    batch_dependent: bool = False
    requires: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    #: activations only: output channels per input channel (pairwise activations give 0.5).
    channel_ratio: float = 1.0
    #: normalizations only: an activation factory ``f(num_channels)`` that replaces the searched one; it also
    #: receives those of the component's hyperparameters that its signature names (see :meth:`bind_own_activation`).
    own_activation: Callable[..., Any] | None = None
    #: normalizations only: ``f(num_channels, **params) -> nn.Module`` for a normalization that an activation
    #: follows, replacing both (Proxy Normalization: a norm without affine, then the proxy-normalized activation);
    #: a normalization nothing follows (ending a residual branch) stays ``factory``, and the activation after a
    #: residual sum stays the searched one (or ``own_activation``). None: norm then activation everywhere.
    pair: Callable[..., Any] | None = None
    #: normalizations only: a conv factory ``f(dims, in_channels, out_channels, kernel_size, *, stride, padding,
    #: bias) -> nn.Module`` that replaces every conv a backbone places before a normalization (e.g. weight
    #: standardization).
    conv: Callable[..., Any] | None = None
    #: any kind: ``f(**params) -> TrainingMethod`` the trainer calls when this component is chosen;
    #: for the kinds in :data:`METHOD_KINDS` it defaults to ``factory``.
    training_method: Callable[..., Any] | None = None
    #: normalizations only: ``f(head, num_classes, **params) -> nn.Module`` wrapping the classifier head
    #: (MimicNorm puts a BatchNorm on the logits).
    head_wrapper: Callable[..., Any] | None = None
    #: normalizations only: ``f(index, convs) -> nn.Module`` scaling the output of each residual branch (before
    #: the sum with the shortcut); ``index`` counts the model's residual blocks from 1, ``convs`` is the number
    #: of convs on the branch (MimicNorm's learnable scalar ``1.2**convs / index``). None: branches unscaled.
    residual_scale: Callable[..., Any] | None = None
    #: the floating dtypes (names from :data:`DTYPES`) the module runs in, forward and backward, when
    #: converted with ``module.to(dtype)``; float32 is required. ``autonorm check-plugin`` checks each one.
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16")
    doc: str = ""
    plugin: str = ""
    package: str = ""
    version: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"component {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "dtypes", tuple(self.dtypes))
        self._check_params()
        self._check_rules()
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown or "float32" not in self.dtypes:
            raise ValueError(
                f"component {self.name!r}: dtypes {tuple(self.dtypes)} must include 'float32' and name only {DTYPES}"
            )
        if not self.doc:  # the factory's own docstring, not one a class inherits (nn.Module's)
            own = vars(self.factory).get("__doc__") if isinstance(self.factory, type) else self.factory.__doc__
            object.__setattr__(self, "doc", inspect.cleandoc(own) if isinstance(own, str) else "")
        if self.kind in METHOD_KINDS and self.training_method is None:
            object.__setattr__(self, "training_method", self.factory)
        if self.own_activation is not None and "activation" not in self.excludes:
            object.__setattr__(self, "excludes", (*self.excludes, "activation"))

    def _check_params(self) -> None:
        """Each declared hyperparameter is a Float/Int/Choice/Str that the factory accepts as a keyword."""
        for pname, param in self.params.items():
            if not isinstance(param, (Float, Int, Choice, Str)):
                raise ValueError(
                    f"component {self.name!r}: hyperparameter {pname!r} is declared as {param!r}; "
                    "expected autonorm.Float, Int, Choice, Str or FilePath"
                )
        factory = self.training_method if self.kind in METHOD_KINDS and self.training_method else self.factory
        for function in (factory, self.pair):
            if function is not None:
                self._check_accepts(function)

    def _check_rules(self) -> None:
        """``requires`` and ``excludes`` name kinds (``kind`` or ``kind:name``) or, required only, a training
        setting (``train.KEY:value``): a misspelt one would never match, and rule nothing in or out."""
        from autonorm.spec import TRAIN_PARAMS  # the training settings; spec.py imports this module

        for field_name in ("requires", "excludes"):
            rules = getattr(self, field_name)
            if isinstance(rules, str):
                raise ValueError(f"component {self.name!r}: {field_name} must be a tuple of rules, not a string")
            for rule in rules:
                kind, _, name = str(rule).partition(":")
                if kind.startswith("train.") and field_name == "requires":
                    key = kind.removeprefix("train.")
                    if key not in TRAIN_PARAMS or not name:
                        message = "name the value: train.KEY:VALUE"
                        if key not in TRAIN_PARAMS:
                            message = unknown_name_message("training setting", key, TRAIN_PARAMS)
                        raise ValueError(f"component {self.name!r}: requires {rule!r}: {message}")
                elif kind not in KINDS:
                    message = unknown_name_message("kind", kind, KINDS)
                    if kind.startswith("train."):
                        message = "a training setting can be required, not excluded"
                    raise ValueError(f"component {self.name!r}: {field_name} {rule!r}: {message}")

    def _check_accepts(self, function: Callable[..., Any]) -> None:
        try:
            accepted = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
            return
        if any(p.kind is p.VAR_KEYWORD for p in accepted):
            return
        names = {p.name for p in accepted if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        missing = [pname for pname in self.params if pname not in names]
        if missing:
            raise ValueError(
                f"component {self.name!r}: its factory {getattr(function, '__name__', function)!r} takes no "
                f"keyword argument {', '.join(map(repr, missing))}, which it declares as hyperparameters"
            )

    @property
    def summary(self) -> str:
        """The docstring's first paragraph, on one line (its first line may end mid-sentence)."""
        return " ".join(self.doc.strip().split("\n\n", 1)[0].split()) if self.doc else ""

    def defaults(self) -> dict[str, Any]:
        return {name: p.default for name, p in self.params.items()}

    def values(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every hyperparameter's value: ``params`` (each declared, and accepted by its declaration)
        over the defaults; a :class:`SpecError` names a wrong one (a hand-edited configuration)."""
        section = self.kind if self.kind in ("model", "dataset") else f"components.{self.kind}"
        for name, value in (params or {}).items():
            where = f"{section}.params.{name}"
            if name not in self.params:
                raise SpecError(unknown_name_message(f"hyperparameter of {self.name}", name, self.params), path=where)
            try:
                self.params[name].check(value)
            except DomainError as exc:
                raise SpecError(str(exc), path=where) from None
        return {**self.defaults(), **(params or {})}

    def bind(self, params: Mapping[str, Any] | None = None) -> Callable[..., Any]:
        """The factory with this component's hyperparameters filled in (defaults for missing ones)."""
        return functools.partial(self.factory, **self.values(params))

    def bind_pair(self, params: Mapping[str, Any] | None = None) -> Callable[..., Any] | None:
        """``pair`` with this component's hyperparameters filled in; None if it declares none."""
        return None if self.pair is None else functools.partial(self.pair, **self.values(params))

    def bind_own_activation(self, params: Mapping[str, Any] | None = None) -> Callable[..., Any] | None:
        """``own_activation`` with the hyperparameters its signature names filled in (an IC layer's dropout rate)."""
        if self.own_activation is None:
            return None
        accepted = inspect.signature(self.own_activation).parameters
        values = {**self.defaults(), **(params or {})}
        return functools.partial(self.own_activation, **{k: v for k, v in values.items() if k in accepted})


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    package: str
    error: str
    #: the file and line of the plugin's own code the error came from, if known
    where: str = ""


class Registry:
    """Holds the discovered components; look them up with :meth:`get`."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Component] = {}
        self.failures: list[PluginFailure] = []
        self.plugin_manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.plugin_manager.add_hookspecs(hookspecs)

    # -- filling
    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register every plugin of the entry-point group: autonorm's own first, so that a third-party
        plugin reusing a built-in name is the one reported as failing, whatever the install order."""
        for ep in sorted(entry_points(group=group), key=_load_order):
            package = _package_of(ep)
            taken = self.plugin_manager.get_plugin(ep.name)
            if taken is not None:
                if getattr(taken, "__name__", None) != ep.module:  # the same module found twice is no clash
                    used = f"{ep.name!r} is already the name of plugin module {getattr(taken, '__name__', taken)!r}"
                    self.failures.append(PluginFailure(ep.name, package, f"entry point {used}; left out"))
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin must not stop the others
                self.failures.append(PluginFailure(ep.name, package, *_describe(exc, ep.module)))
                continue
            self.register(plugin, ep.name, package)

    def register(self, plugin: Any, name: str | None = None, package: str = "") -> None:
        """Register a plugin object (usually a module) and collect its components; each one that cannot
        be added (not a Component, a name already taken) is a failure of this plugin, the others stay. A
        plugin pluggy refuses (a hook with arguments autonorm does not pass), or one that implements no
        autonorm hook (a misspelt name, a missing ``@autonorm.hookimpl``), is a failure too."""
        name = name or self.plugin_manager.get_canonical_name(plugin)
        try:
            self.plugin_manager.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            self.failures.append(PluginFailure(name, package, f"{exc} (none of its components is loaded)"))
            return
        if problem := _hook_problem(plugin, self.plugin_manager.get_hookcallers(plugin) or []):
            self.failures.append(PluginFailure(name, package, problem))
        module = getattr(plugin, "__name__", "")
        for impl in self.plugin_manager.hook.autonorm_components.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                components = impl.function()
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                self.failures.append(PluginFailure(name, package, *_describe(exc, module)))
                continue
            if not isinstance(components, (list, tuple)):
                got = type(components).__name__
                self.failures.append(PluginFailure(name, package, f"autonorm_components returned a {got}, not a list"))
                continue
            for comp in components:
                try:
                    self._add(comp, name, package)
                except (TypeError, ValueError) as exc:
                    self.failures.append(PluginFailure(name, package, f"{type(exc).__name__}: {exc}"))

    def _add(self, comp: Component, plugin: str, package: str) -> None:
        if not isinstance(comp, Component):
            raise TypeError(f"autonorm_components returned {comp!r}, not a Component")
        key = (comp.kind, comp.name)
        if key in self._components:
            other = self._components[key]
            owner = f"plugin {other.plugin!r}" + (f" ({other.package})" if other.package else "")
            raise ValueError(f"{comp.kind} {comp.name!r} is already registered by {owner}; this one is left out")
        name, _, version = package.partition(" ")
        self._components[key] = replace(comp, plugin=plugin, package=name, version=version)

    # -- lookup
    def get(self, kind: str, name: str) -> Component:
        try:
            return self._components[(kind, name)]
        except KeyError:
            raise KeyError(unknown_name_message(kind, name, self.names(kind)) + self.failure_note(name)) from None

    def failure_note(self, name: str | None = None, only_about: bool = False) -> str:
        """`` (plugin 'P' failed to load: ...)`` for an unknown-name error, or ``""``: the name may belong
        to a plugin that could not be loaded. The failures that mention ``name`` are shown, or all of them
        while they are few; the others are counted (``only_about``: only those that mention it, for an
        error about a component another plugin's of the same name lost to)."""
        about = [f for f in self.failures if name is not None and repr(name) in f.error]
        if not self.failures or (only_about and not about):
            return ""
        shown = about or (self.failures if len(self.failures) <= 3 else [])
        notes = [f"plugin {f.plugin!r} failed to load: {f.error.strip().splitlines()[0]}" for f in shown]
        if (rest := len(self.failures) - len(shown)) and not only_about:
            others = f"{rest} {'other ' if shown else ''}plugin{'s' if rest > 1 else ''}"
            notes.append(f"{others} failed to load: `autonorm plugins` says why")
        return f" ({'; '.join(notes)})"

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._components if k == kind)

    def components(self, kind: str | None = None) -> list[Component]:
        return [c for (k, _), c in sorted(self._components.items()) if kind in (None, k)]

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._components


def _describe(exc: BaseException, module: str) -> tuple[str, str]:
    """A plugin's error, and the file and line of the plugin's own code it came from (a bad declaration's
    error names the declaration, not the component it belongs to)."""
    top = module.split(".")[0]
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in tb if top and top in Path(f.filename).with_suffix("").parts]
    return f"{type(exc).__name__}: {exc}", f"{frames[-1].filename}, line {frames[-1].lineno}" if frames else ""


def _hook_problem(plugin: Any, callers: list[pluggy.HookCaller]) -> str | None:
    """Why a registered plugin will never be called, or None: it implements a hook autonorm does not
    have (a misspelt name), or none at all."""
    known = [name for name in vars(hookspecs) if name.startswith("autonorm_")]

    def function(name: str) -> Any:  # a method's function: each lookup makes a new bound method
        member = getattr(plugin, name, None)
        return getattr(member, "__func__", member)

    implemented = [function(name) for name in known if hasattr(plugin, name)]
    unknown = [  # a second name for an implemented hook (``_orig = autonorm_components``) is no mistake
        caller.name for caller in callers if not caller.has_spec() and function(caller.name) not in implemented
    ]
    if unknown:
        return "; ".join(unknown_name_message("hook", hook, known) for hook in unknown)
    if callers:
        return None
    unmarked = [name for name in known if callable(getattr(plugin, name, None))]
    if unmarked:
        return f"{', '.join(unmarked)} is not marked with @autonorm.hookimpl, so autonorm never calls it"
    return f"it implements no autonorm hook (expected one of {', '.join(known)}, marked with @autonorm.hookimpl)"


def unknown_name_message(kind: str, name: object, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (known: {', '.join(known) or 'none installed'})"


def _load_order(ep: Any) -> tuple[bool, str, str]:
    """autonorm's own entry points first, then the others by package and name."""
    package = _package_of(ep)
    return (not package.startswith(f"{ENTRY_POINT_GROUP} "), package, ep.name)


def _package_of(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else ""


@functools.cache
def _default_registry() -> Registry:
    registry = Registry()
    registry.load_entry_points()
    return registry


def get_registry(refresh: bool = False) -> Registry:
    """The registry of every installed plugin, loaded once per process (``refresh`` reloads it)."""
    if refresh:
        _default_registry.cache_clear()
    return _default_registry()
