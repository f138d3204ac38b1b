"""Define-by-run sampling: a :class:`SearchSpec` and an Optuna trial give a :class:`TrialConfig`.

A component's own hyperparameters are suggested only when the component is chosen, under names
``kind.component.param`` (``normalization.groupnorm.groups``), so the space is conditional for free.
"""

from __future__ import annotations

from typing import Any

from autonorm.build import build_model
from autonorm.config import ComponentChoice, TrialConfig
from autonorm.data import Data
from autonorm.errors import Incompatible, SpecError
from autonorm.params import Categorical, Domain
from autonorm.registry import Registry
from autonorm.results import place
from autonorm.spec import Candidate, SearchSpec
from autonorm.yamlfile import placed


def _choose(trial: Any, name: str, candidates: list[Candidate]) -> Candidate:
    if len(candidates) == 1:
        return candidates[0]
    picked = trial.suggest_categorical(name, [c.name for c in candidates])
    return next(c for c in candidates if c.name == picked)


def _params(trial: Any, prefix: str, cand: Candidate) -> dict[str, Any]:
    return {key: dom.suggest(trial, f"{prefix}.{key}") for key, dom in cand.params.items()}


def sample_config(trial: Any, spec: SearchSpec, input_shape: tuple[int, ...], num_classes: int) -> TrialConfig:
    """Choose every component and hyperparameter for one trial.

    Raises :class:`Incompatible` for a combination that the components' declarations rule out.
    """
    chosen: dict[str, Candidate] = {"model": spec.model}
    for kind, candidates in spec.space.items():
        if any(kind in c.component.excludes for c in chosen.values()):
            continue
        chosen[kind] = _choose(trial, kind, candidates)
    check_compatible({kind: c.component for kind, c in chosen.items()})
    components = {
        kind: ComponentChoice(name=c.name, params=_params(trial, f"{kind}.{c.name}", c))
        for kind, c in chosen.items()
        if kind != "model"
    }
    return TrialConfig(
        dataset=spec.dataset_choice,
        val_fraction=spec.val_fraction,
        test_fraction=spec.test_fraction,
        input_shape=input_shape,
        num_classes=num_classes,
        model=ComponentChoice(name=spec.model.name, params=_params(trial, "model", spec.model)),
        components=components,
        epochs=spec.epochs,
        train={key: dom.suggest(trial, f"train.{key}") for key, dom in spec.train.items()} | spec.train_options,
        seed=spec.search.seed + _place(trial),
        data_seed=spec.search.seed,
    )


def _place(trial: Any) -> int:
    """The trial's place in its search (see :func:`~autonorm.results.place`); a trial replayed away from
    its study (a ``FixedTrial``, as Ray's actors replay the driver's) has the place it was given, or else
    its number."""
    study = getattr(trial, "study", None)
    return getattr(trial, "place", trial.number) if study is None else place(study, trial.number)


def searched_domains(spec: SearchSpec) -> dict[str, tuple[Domain, str]]:
    """Every parameter a trial of ``spec`` may suggest, under :func:`sample_config`'s names: its
    domain, and where the space file sets it."""
    found: dict[str, tuple[Domain, str]] = {}
    for kind, candidates in spec.space.items():
        found[kind] = (Categorical(tuple(c.name for c in candidates)), f"space.{kind}")
        for cand in candidates:
            found |= {f"{kind}.{cand.name}.{k}": (d, f"space.{kind}.{cand.name}.{k}") for k, d in cand.params.items()}
    found |= {f"model.{k}": (d, f"model.{k}") for k, d in spec.model.params.items()}
    found |= {f"train.{k}": (d, f"train.{k}") for k, d in spec.train.items()}
    return {name: (domain, path) for name, (domain, path) in found.items() if domain.distribution() is not None}


def check_compatible(chosen: dict[str, Any]) -> None:
    """Raise :class:`Incompatible` if a chosen component excludes, or lacks, another chosen one (``chosen``:
    the model, then a component per kind)."""
    names = {kind: comp.name for kind, comp in chosen.items()}
    summary = " | ".join(names.values())
    for comp in chosen.values():
        for rule in comp.excludes:
            kind, _, name = rule.partition(":")
            if name and names.get(kind) == name:
                raise Incompatible(f"incompatible: {comp.kind} {comp.name} excludes {kind} {name}", summary)
        for rule in comp.requires:
            kind, _, name = rule.partition(":")
            if kind.startswith("train."):  # checked when the file is read; a method refuses other values itself
                continue
            missing = names.get(kind) != name if name else kind not in names
            if missing:
                raise Incompatible(f"incompatible: {comp.kind} {comp.name} requires {rule}", summary)


#: The kinds that fill a slot of the backbone (the rest act on initialization, data or training).
MODEL_SLOTS = ("normalization", "activation", "pooling", "downsampling", "head")


class _FirstChoice:
    """A stand-in trial that takes each choice's first value, each range's low end, and the candidates
    given for some kinds."""

    number = 0

    def __init__(self, chosen: dict[str, str]) -> None:
        self.chosen = chosen

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self.chosen.get(name, choices[0])

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        return low

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return low


def first_model(spec: SearchSpec, data: Data, registry: Registry, chosen: dict[str, str] | None = None) -> str | None:
    """The module structure (``repr``) of the model ``spec`` builds with every kind at its first choice (or
    as ``chosen``); None if that combination cannot be built (its trials report why)."""
    try:
        config = sample_config(_FirstChoice(chosen or {}), spec, data.input_shape, data.num_classes)
        uninitialized = {k: c for k, c in config.components.items() if k != "initializer"}  # the structure only
        return repr(build_model(config.model_copy(update={"components": uninitialized}), registry=registry))
    except Exception:  # incompatible, or a failing plugin: the trials say why, with their reasons
        return None


def same_model_error(model: str, kind: str, names: list[str], path: str) -> SpecError:
    """The error for choices of ``kind`` that all build the same ``model``."""
    return SpecError(
        f"the {model} backbone builds the same model whichever of {', '.join(names)} is chosen (it has no "
        f"{kind} layer for them to fill): choose a backbone that uses it, or do not vary {kind}",
        path=path,
    )


def check_choices_matter(spec: SearchSpec, data: Data, registry: Registry) -> None:
    """Refuse a searched kind whose choices all build the same model: the backbone has no slot for it
    (``resnet`` downsamples inside its blocks, so ``downsampling: [max, all_conv]`` changes nothing), and
    its trials would train one model again and again. Models are compared by their module structure,
    built with every other kind at its first choice that leaves this kind in (FRN brings its own
    activation: the activations are compared beside another normalization)."""
    for kind in MODEL_SLOTS:
        candidates = spec.space.get(kind, [])
        others = {
            other: next((c.name for c in cands if kind not in c.component.excludes), None)
            for other, cands in spec.space.items()
            if other != kind
        }
        if len(candidates) < 2 or None in others.values() or kind in spec.model.component.excludes:
            continue
        built = set()
        for cand in candidates:
            built.add(first_model(spec, data, registry, {**others, kind: cand.name}))
            if len(built) > 1 or None in built:
                break
        if len(built) == 1 and None not in built:
            same = same_model_error(spec.model.name, kind, [c.name for c in candidates], f"space.{kind}")
            raise placed(same, spec.source)
