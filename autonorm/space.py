"""Define-by-run sampling: a :class:`SearchSpec` and an Optuna trial give a :class:`TrialConfig`.

A component's own hyperparameters are suggested only when the component is chosen, under names
``kind.component.param`` (``normalization.groupnorm.groups``), so the space is conditional for free.
"""

from __future__ import annotations

from typing import Any

from autonorm.config import ComponentChoice, TrialConfig
from autonorm.errors import Incompatible
from autonorm.params import Categorical, Domain
from autonorm.results import place
from autonorm.spec import Candidate, SearchSpec


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
