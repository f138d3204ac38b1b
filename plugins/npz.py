"""A user's own arrays from a NumPy ``.npz`` file.

Keys: ``x`` of shape (N, C, L) or (N, C, H, W) and integer labels ``y``; optionally ``x_val``/``y_val``
and ``x_test``/``y_test`` to give the validation and test splits explicitly.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

import autonorm
from autonorm import Arrays, Component, FilePath, SpecError

_KEYS = ("x", "y", "x_val", "y_val", "x_test", "y_test")


def npz(path: str) -> Arrays:
    """Arrays from an ``.npz`` file with keys x, y and optionally x_val, y_val, x_test, y_test."""
    where = f"data.path ({path})"
    if not Path(path).is_file():
        raise SpecError("no such file", path=where)
    if not zipfile.is_zipfile(path):
        raise SpecError("not an .npz file (a zip archive of arrays, as numpy.savez writes)", path=where)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in _KEYS if k in f.files}
    except (OSError, ValueError) as exc:
        raise SpecError(f"not a readable .npz file: {exc}", path=where) from None
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise SpecError(f"missing array(s) {sorted(missing)}; the file has {sorted(arrays)}", path=where)
    return Arrays(**arrays)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [Component(kind="dataset", name="npz", factory=npz, params={"path": FilePath("data.npz")})]
