"""Errors: :class:`SpecError` for mistakes a user can fix (caught once at the CLI and printed plainly,
located), the reasons a trial fails or is rejected, and the helpers that turn a pydantic error or an
output path into a :class:`SpecError`."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


class SpecError(Exception):
    """A user error, located: ``file:line:col: key.path: message``.

    Any part of the location may be missing (a Python dict has no lines, a missing key no column).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.path = path
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line, self.column) if p is not None)
        parts = [p for p in (where, self.path) if p]
        return ": ".join([*parts, self.message])


class TrialFailed(Exception):
    """A trial that cannot finish (diverged, incompatible input); its reason is recorded in the study."""


class Rejected(TrialFailed):
    """A configuration the search should steer away from: it diverged, or its components rule each
    other out.

    A search records it as a pruned trial with its reason rather than a failed one: Optuna's samplers
    leave failed trials out of their model, so TPE would keep proposing it, while a pruned trial
    counts against the region it came from.
    """


class Diverged(Rejected):
    """The training loss stopped being finite."""


class Incompatible(Rejected):
    """The chosen components rule each other out (a component's ``excludes`` or ``requires``), or the chosen
    values cannot build the model (a group count that does not divide a layer's channels), or a training
    method cannot act on the model or its optimizer (its ``setup`` raised :class:`ValueError`).

    ``summary`` is the one-line configuration when the trial is rejected before it has one (the chosen
    components rule each other out), so that tables can show what was chosen."""

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary


def output_file(path: str | os.PathLike) -> Path:
    """``path`` as a file to write, its folder created; a :class:`SpecError` if it is a folder."""
    out = Path(path)
    if out.is_dir():
        raise SpecError("is a folder; give a file name to write", file=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def first_problem(exc: ValidationError, model: type[BaseModel] | None = None) -> tuple[tuple, str]:
    """Where (the keys of the user's data, without pydantic's tags for the members of a union) and
    what, in plain words, of the first problem pydantic found; of a union's members, the one that
    got deepest into the value (``[val_accuracy, latncy]`` is wrong at item 1, not as a whole). With
    the ``model`` validated, a misspelt key is named: ``trails: unknown key; did you mean 'trials'?``,
    and a required key missing next to it says so."""

    def where(err: Any) -> tuple:
        return tuple(part for part in err["loc"] if not (isinstance(part, str) and "[" in part))

    errors = exc.errors()
    first = where(errors[0])
    err = max((e for e in errors if where(e)[: len(first)] == first), key=lambda e: len(where(e)))
    unknown = [where(e) for e in errors if e["type"] == "extra_forbidden"]
    if err["type"] == "missing":  # a required key, perhaps misspelt: ``task:`` for ``tasks:``
        for key in unknown:
            if key[:-1] == where(err)[:-1] and difflib.get_close_matches(str(key[-1]), [str(where(err)[-1])]):
                return where(err), f"missing; is {key[-1]!r} a misspelling of it?"
    if err["type"] == "extra_forbidden":
        names = _field_names(model, where(err)[:-1])
        close = difflib.get_close_matches(str(where(err)[-1]), names, n=1)
        return where(err), "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict) else ""
    if err["type"] == "model_type":  # not "a valid dictionary or instance of _Data": the class is ours
        return where(err), f"expected a mapping of keys to values{shown}"
    return where(err), err["msg"].removeprefix("Value error, ") + shown


def _field_names(model: type[BaseModel] | None, path: tuple) -> list[str]:
    """The keys the (nested) model at ``path`` of ``model`` takes; none where that is not a model."""
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return [field.alias or name for name, field in model.model_fields.items()] if model is not None else []
