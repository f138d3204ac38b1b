"""``autonorm train``: the final model of a chosen configuration, trained once and saved.

The search has spent the validation split on choosing, so the final model trains on the training
and validation splits together and is scored on the held-out test split, the same split the search
never saw (``TrialConfig.data_seed`` reproduces it). The output folder holds:

- ``model.pt``: the state_dict (plain tensors; load with ``torch.load(..., weights_only=True)``),
- ``config.yaml``: the resolved configuration, which :func:`autonorm.build_model` builds,
- ``metrics.json``: test accuracy, balanced accuracy and loss, and the cost metrics,
- ``inputs.json``: the per-channel mean and standard deviation the model's inputs are standardized with
  (the training split's, as during the search): :func:`standardize` applies them to raw inputs.

Where a training method evaluates another model than the one it trains (averaged weights, an EMA
teacher), that evaluated model is what gets scored and saved.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autonorm.build import build_model, build_training_methods
from autonorm.config import TrialConfig
from autonorm.data import Data, load_data
from autonorm.errors import Incompatible, SpecError, TrialFailed
from autonorm.params import DomainError
from autonorm.registry import METHOD_KINDS, Registry, get_registry
from autonorm.space import check_compatible
from autonorm.spec import TRAIN_PARAMS
from autonorm.trainer import fit
from autonorm.yamlfile import placed

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
INPUTS_FILE = "inputs.json"


@dataclass
class TrainedModel:
    """The outcome of :func:`train`: the model (eval mode, on the CPU), its test metrics, where it was saved."""

    model: nn.Module
    config: TrialConfig
    metrics: dict[str, float]
    out_dir: Path

    @property
    def weights(self) -> Path:
        return self.out_dir / WEIGHTS_FILE


def train(
    config: TrialConfig | dict[str, Any] | str | os.PathLike,
    out_dir: str | os.PathLike = "trained",
    registry: Registry | None = None,
) -> TrainedModel:
    """Train ``config`` (a :class:`TrialConfig`, its dict, or a YAML file from ``autonorm best``) on
    train + validation, score it on the test split, and save it under ``out_dir``.

    >>> trained = autonorm.train("best.yaml", "final")  # doctest: +SKIP
    >>> trained.metrics["test_accuracy"]  # doctest: +SKIP
    0.97
    """
    if Path(out_dir).exists() and not Path(out_dir).is_dir():  # checked before training, not after
        raise SpecError(
            "exists and is not a folder; give a folder for the weights, configuration and metrics", file=str(out_dir)
        )
    source = str(config) if isinstance(config, (str, os.PathLike)) else None
    config = config if isinstance(config, TrialConfig) else TrialConfig.load(config)
    try:
        return _train(config, Path(out_dir), registry or get_registry())
    except SpecError as exc:  # a key of the configuration file: name the file, line and column too
        raise (placed(exc, source) if exc.path else exc) from None


def _train(config: TrialConfig, out: Path, registry: Registry) -> TrainedModel:
    try:  # a search's space names a known dataset; a hand-edited configuration may not
        registry.get("dataset", config.dataset.name)
    except KeyError as exc:
        raise SpecError(exc.args[0], path="dataset.name") from None
    data = load_data(config.dataset, config.val_fraction, config.test_fraction, config.data_seed, registry)
    if len(data.x_test) == 0:
        raise SpecError("no test split to score the final model on: use test_fraction > 0", path="test_fraction")
    full = Data(
        x_train=torch.cat([data.x_train, data.x_val]),
        y_train=torch.cat([data.y_train, data.y_val]),
        x_val=data.x_test,
        y_val=data.y_test,
        x_test=data.x_test,
        y_test=data.y_test,
        num_classes=data.num_classes,
    )

    _check_fits(config, data)
    _check_compatible(config, registry)
    torch.manual_seed(config.seed)
    n = int(config.train["batch_size"])
    try:
        model = build_model(config, full.x_train[:n], registry, sample_labels=full.y_train[:n])
    except (ValueError, TypeError, RuntimeError) as exc:  # a hand-edited group count, or width (out of memory)
        raise SpecError(f"cannot build this configuration: {exc}", path="components") from None
    methods = build_training_methods(config, registry)
    try:
        result = fit(model, full, config.train, config.epochs, methods=methods)
    except TrialFailed as exc:  # diverged, incompatible, no CUDA: what a search records as the trial's reason
        raise SpecError(f"cannot train this configuration: {exc}") from None
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        raise SpecError(f"cannot train this configuration: out of memory ({exc})") from None
    evaluated = model
    for method in methods:
        evaluated = method.eval_model(evaluated)
    final = _same_architecture(evaluated, model).cpu().eval()

    metrics = {("test_" + key[4:] if key.startswith("val_") else key): v for key, v in result.metrics.items()}
    out.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in final.state_dict().items()}
    torch.save(state, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(config.to_yaml())
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    inputs = {"mean": data.mean.flatten().tolist(), "std": data.std.flatten().tolist()}
    (out / INPUTS_FILE).write_text(json.dumps(inputs, indent=2) + "\n")
    _check_reload(final, load_trained(out, registry), data.x_test[:64], config)
    return TrainedModel(final, config, metrics, out)


def load_trained(out_dir: str | os.PathLike, registry: Registry | None = None) -> nn.Module:
    """The model :func:`train` saved in ``out_dir``: built from its configuration, weights loaded, eval mode."""
    out = Path(out_dir)
    model = build_model(TrialConfig.load(out / CONFIG_FILE), registry=registry)
    model.load_state_dict(_read_weights(out / WEIGHTS_FILE, model))
    return model.eval()


def standardize(out_dir: str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    """Raw inputs ``(N, C, *spatial)``, as the dataset gives them, standardized per channel as the model
    :func:`train` saved in ``out_dir`` was trained on (``inputs.json``)."""
    inputs = json.loads((Path(out_dir) / INPUTS_FILE).read_text())
    shape = (1, -1, *[1] * (x.dim() - 2))
    mean, std = (torch.tensor(inputs[key], dtype=x.dtype, device=x.device).view(shape) for key in ("mean", "std"))
    return (x - mean) / std


def _read_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict in ``path``, loaded as plain tensors only and checked against ``model``'s keys
    and shapes, so a truncated, corrupted or foreign file is a :class:`SpecError` naming it."""
    expected = f"expected a state_dict saved by `autonorm train` next to its {CONFIG_FILE}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise SpecError(f"cannot read the weights: {exc.strerror}; {expected}", file=str(path)) from None
    except Exception:  # noqa: BLE001 - torch raises many types here; none of their texts helps the user
        raise SpecError(
            f"cannot load the weights: the file is truncated, corrupted or not a checkpoint of plain tensors; "
            f"{expected}",
            file=str(path),
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise SpecError(f"holds a {type(state).__name__}, not a state_dict of tensors; {expected}", file=str(path))
    own = model.state_dict()
    problems = []
    if missing := [k for k in own if k not in state]:
        problems.append(f"missing {_some(missing)}")
    if unexpected := [k for k in state if k not in own]:
        problems.append(f"unexpected {_some(unexpected)}")
    if wrong := [k for k in own if k in state and state[k].shape != own[k].shape]:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} shape mismatch(es), e.g. {k} is {list(state[k].shape)} in the file, "
            f"{list(own[k].shape)} in the model"
        )
    if problems:
        raise SpecError(
            f"the weights do not match the model of {CONFIG_FILE} ({'; '.join(problems)}); {expected}",
            file=str(path),
        )
    return state


def _out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError (torch has no class for that one)."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc)


def _check_fits(config: TrialConfig, data: Data) -> None:
    """What ``autonorm best`` wrote, perhaps edited by hand, must train on its data: every training
    setting declared and valid, at least one epoch, the data's input shape and classes."""
    if config.epochs < 1:
        raise SpecError(f"expected at least 1 epoch, got {config.epochs}", path="epochs")
    for key, param in TRAIN_PARAMS.items():
        if key not in config.train:
            raise SpecError(f"missing; expected {param.type_name}, e.g. {param.default!r}", path=f"train.{key}")
        try:
            param.check(config.train[key])
        except DomainError as exc:
            raise SpecError(str(exc), path=f"train.{key}") from None
    for key, value in (("input_shape", data.input_shape), ("num_classes", data.num_classes)):
        if getattr(config, key) != value:
            raise SpecError(f"{getattr(config, key)} does not match the data's {value}", path=key)


def _check_compatible(config: TrialConfig, registry: Registry) -> None:
    """The components of a hand-edited configuration must not rule each other out, as in a search."""
    chosen = {}
    for kind, choice in [("model", config.model), *config.components.items()]:
        try:
            chosen[kind] = registry.get(kind, choice.name)
        except KeyError as exc:
            raise SpecError(exc.args[0], path="model.name" if kind == "model" else f"components.{kind}.name") from None
    try:
        check_compatible(chosen)
    except Incompatible as exc:
        raise SpecError(str(exc), path="components") from None


def _check_reload(final: nn.Module, reloaded: nn.Module, x: torch.Tensor, config: TrialConfig) -> None:
    """The saved files must rebuild the model that was scored: a training method that changes the
    model beyond its weights (a test-time scale held outside them) would make them describe another.
    Up to rounding: a model trained in channels_last is scored in that layout and saved contiguous."""
    with torch.no_grad():
        scored, rebuilt = final(x), reloaded(x)
        differ = not torch.allclose(rebuilt, scored, rtol=1e-4, atol=1e-5 * max(1.0, float(scored.abs().max())))
    if differ:
        methods = ", ".join(c.name for kind, c in config.components.items() if kind in METHOD_KINDS)
        raise SpecError(
            "the saved weights do not rebuild the scored model: build_model(config) + model.pt give other outputs; "
            f"a training method ({methods}) changes the model beyond its weights",
            path="components.training",
        )


def _some(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} key(s): {', '.join(keys[:shown])}{more}"


def _same_architecture(evaluated: nn.Module, trained: nn.Module) -> nn.Module:
    """The evaluated model as a module of the configuration's architecture (unwrapping e.g. an
    ``AveragedModel``), so that ``build_model(config)`` loads its weights."""
    keys = trained.state_dict().keys()
    for candidate in (evaluated, getattr(evaluated, "module", None)):
        if isinstance(candidate, nn.Module) and candidate.state_dict().keys() == keys:
            return candidate
    raise SpecError(
        f"the model a training method evaluates ({type(evaluated).__name__}) is not the configuration's "
        "architecture, so its weights cannot be saved for build_model",
        path="components.training",
    )
