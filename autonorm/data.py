"""Datasets as tensors: what a dataset plugin returns, and the fixed train/validation/test split.

A dataset plugin's factory returns :class:`Arrays` (features ``(N, C, L)`` or ``(N, C, H, W)`` and
integer labels). The split is stratified (unless a class has a single sample: a warning says so) and
seeded, so every trial of a study sees the same one; features are standardized per channel with
statistics of the training split only.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from autonorm.config import ComponentChoice
from autonorm.errors import SpecError
from autonorm.params import FilePath
from autonorm.registry import Component, Registry, get_registry


@dataclass(frozen=True)
class Arrays:
    """What a dataset plugin returns. Explicit validation or test arrays replace the random split."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    num_classes: int | None = None


@dataclass(frozen=True)
class Data:
    """Train, validation and test tensors (float32 features, int64 labels) on the CPU."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    #: the per-channel mean and standard deviation the features were standardized with (the training
    #: split's), shaped to broadcast over ``(N, C, *spatial)``: what raw inputs need before a trained model
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_data(
    dataset: ComponentChoice,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    registry: Registry | None = None,
) -> Data:
    """Load a dataset by its plugin name and split it; cached per process for repeated trials.

    The cache key holds, for every parameter naming an existing file or folder, its resolved path and
    modification time: the same relative path in another directory, or a rewritten file, is read again.
    """
    files = {
        key: [str(path.resolve()), path.stat().st_mtime_ns]
        for key, value in dataset.params.items()
        if isinstance(value, str) and (path := Path(value)).exists()
    }
    params = json.dumps(dataset.params, sort_keys=True, default=str)
    return _load(dataset.name, params, json.dumps(files), val_fraction, test_fraction, seed, registry or get_registry())


@functools.lru_cache(maxsize=4)
def _load(
    name: str, params_json: str, files: str, val_fraction: float, test_fraction: float, seed: int, registry: Registry
) -> Data:
    """``files`` only keys the cache (see :func:`load_data`)."""
    comp = registry.get("dataset", name)
    params = json.loads(params_json)
    arrays = _arrays_of(comp, params)
    files = [f"data.{key} ({params.get(key, p.default)})" for key, p in comp.params.items() if isinstance(p, FilePath)]
    _check_arrays(files[0] if files else f"dataset {name}", arrays)
    arrays = replace(
        arrays, **{k: getattr(arrays, k).astype(np.float32) for k in _FEATURES if getattr(arrays, k) is not None}
    )
    x, y = arrays.x, arrays.y
    if arrays.x_test is not None:
        x_test, y_test = arrays.x_test, arrays.y_test
    elif test_fraction > 0:
        x, x_test, y, y_test = _split(name, x, y, test_fraction, seed, "test_fraction")
    else:
        x_test, y_test = x[:0], y[:0]
    if arrays.x_val is not None:
        x_val, y_val = arrays.x_val, arrays.y_val
    else:
        x, x_val, y, y_val = _split(name, x, y, val_fraction, seed + 1, "val_fraction")
    reduce = (0, *range(2, x.ndim))
    mean = x.mean(axis=reduce, keepdims=True)
    std = x.std(axis=reduce, keepdims=True) + 1e-6

    def features(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32))

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    num_classes = arrays.num_classes or int(max(y.max(), y_val.max(), y_test.max(initial=0))) + 1
    return Data(
        features(x), labels(y), features(x_val), labels(y_val), features(x_test), labels(y_test), num_classes,
        mean=torch.from_numpy(mean.astype(np.float32)), std=torch.from_numpy(std.astype(np.float32)),
    )  # fmt: skip


def _split(name: str, x: np.ndarray, y: np.ndarray, fraction: float, seed: int, key: str) -> tuple[np.ndarray, ...]:
    counts = np.bincount(y)
    single = np.flatnonzero(counts == 1)
    if len(single):  # scikit-learn stratifies only classes of two samples or more
        classes = ", ".join(map(str, single[:5])) + (", ..." if len(single) > 5 else "")
        message = f"dataset {name}: class {classes} has one sample, so the {key} split is not stratified"
        warnings.warn(message, stacklevel=2)
    stratify = None if len(single) else y
    from sklearn.model_selection import train_test_split  # here: importing scikit-learn takes a second

    try:
        return tuple(train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify))
    except ValueError as exc:  # too few samples for the fraction, or for one per class on each side
        raise SpecError(
            f"dataset {name}: cannot split {len(y)} samples of {np.count_nonzero(counts)} classes by "
            f"{key} {fraction}: {exc}; give more samples or change {key}",
            path=f"data.{key}",
        ) from None


#: The feature arrays of :class:`Arrays`.
_FEATURES = ("x", "x_val", "x_test")

#: Labels may skip values (a subset of a dataset's classes), but a head this much wider than the
#: labels in use is a labelling mistake (and would allocate gigabytes), not a dataset.
_SPARSE_LABELS = 100


def _arrays_of(comp: Component, params: dict) -> Arrays:
    """What the dataset plugin's factory returns, its arrays as NumPy's; its failure, or anything but
    :class:`Arrays`, is an error naming the dataset and its plugin rather than a traceback."""
    where = f"dataset {comp.name} (plugin {comp.plugin!r}{f', {comp.package} {comp.version}' if comp.package else ''})"
    try:
        arrays = comp.bind(params)()
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - the plugin's failure, told as such
        raise SpecError(f"{where} failed: {type(exc).__name__}: {exc}", path="data.dataset") from None
    if not isinstance(arrays, Arrays):
        raise SpecError(f"{where} returned {type(arrays).__name__}, not autonorm.Arrays", path="data.dataset")
    try:  # torch tensors or lists work as well as NumPy arrays
        return replace(arrays, **{
            key: np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
            for key in ("x", "y", *_FEATURES[1:], "y_val", "y_test")
            if (value := getattr(arrays, key)) is not None
        })  # fmt: skip
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SpecError(f"{where} returned arrays NumPy cannot read: {exc}", path="data.dataset") from None


def _check_arrays(where: str, arrays: Arrays) -> None:
    """Refuse, naming ``where`` (the file, or the dataset), what would fail later inside training or
    train nothing: wrong shapes, non-numeric or non-finite features, labels that are not 0..K-1."""
    if len(arrays.x) == 0:
        raise SpecError("'x' holds no samples", path=where)
    for xs, ys in zip(_FEATURES, ("y", "y_val", "y_test"), strict=True):
        x, y = getattr(arrays, xs), getattr(arrays, ys)
        if x is None and y is None:
            continue
        if x is None or y is None:
            raise SpecError(f"'{xs}' and '{ys}' must be given together", path=where)
        if x.ndim not in (3, 4):
            raise SpecError(f"'{xs}' must have shape (N, C, L) or (N, C, H, W), got {x.shape}", path=where)
        if y.ndim != 1 or len(y) != len(x):
            raise SpecError(f"'{ys}' must be one integer label per row of '{xs}', got shape {y.shape}", path=where)
        if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise SpecError(f"'{ys}' must hold non-negative integer class labels", path=where)
        if x.shape[1:] != arrays.x.shape[1:]:
            raise SpecError(f"'{xs}' has samples of shape {x.shape[1:]}, 'x' of {arrays.x.shape[1:]}", path=where)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
            raise SpecError(f"'{xs}' must hold real numbers, got dtype {x.dtype}", path=where)
        if (bad := x.size - np.count_nonzero(np.isfinite(x))) > 0:
            raise SpecError(f"'{xs}' holds {bad} NaN or infinite value(s); training on them diverges", path=where)
        distinct = len(np.unique(y))
        if ys == "y" and distinct < 2:
            raise SpecError("'y' holds a single class; a classifier needs at least two", path=where)
        if len(y) and y.max() >= max(1000, _SPARSE_LABELS * distinct):
            raise SpecError(
                f"'{ys}' has labels up to {y.max()} but {distinct} distinct ones: the head would have "
                f"{y.max() + 1} outputs; number the classes 0..K-1",
                path=where,
            )
