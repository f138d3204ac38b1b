"""Hyperparameters: what a component declares, and the search domains a YAML file may give them.

A component declares each of its hyperparameters with a type, a default and a default search range
(``Float(0.1, 1e-3, 1.0, log=True)``). A search space may fix it, list choices or narrow the range;
:func:`parse_domain` checks what the YAML says against the declaration, and a :class:`Domain` is
sampled define-by-run from an Optuna trial.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

__all__ = [
    "Float",
    "Int",
    "Choice",
    "Str",
    "FilePath",
    "Domain",
    "Fixed",
    "Categorical",
    "Ordered",
    "FloatRange",
    "IntRange",
    "parse_domain",
]


class DomainError(ValueError):
    """A search domain that does not fit its declaration; the caller adds the location."""


# ---------------------------------------------------------------- domains: what gets sampled


class Domain:
    """A set of values to sample one from."""

    def distribution(self) -> optuna.distributions.BaseDistribution | None:
        """The Optuna distribution it suggests from; None if it suggests nothing."""
        return None

    def suggest(self, trial: Any, name: str) -> Any:
        raise NotImplementedError

    @property
    def is_searched(self) -> bool:
        return True


@dataclass(frozen=True)
class Fixed(Domain):
    value: Any

    def suggest(self, trial: Any, name: str) -> Any:
        return self.value

    @property
    def is_searched(self) -> bool:
        return False

    def __str__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Categorical(Domain):
    choices: tuple

    def distribution(self) -> optuna.distributions.BaseDistribution | None:
        return optuna.distributions.CategoricalDistribution(self.choices) if len(self.choices) > 1 else None

    def suggest(self, trial: Any, name: str) -> Any:
        if len(self.choices) == 1:
            return self.choices[0]
        return trial.suggest_categorical(name, list(self.choices))

    @property
    def is_searched(self) -> bool:
        return len(self.choices) > 1

    def __str__(self) -> str:
        return "{" + ", ".join(map(str, self.choices)) + "}"


@dataclass(frozen=True)
class Ordered(Domain):
    """Three or more numbers, searched as positions in their sorted order.

    Optuna has no ordered choice: a categorical one treats 0.3 as no nearer to 1.0 than to 0.003,
    so TPE learns nothing about a value from its neighbours. The trial suggests the position
    (``suggest_int``, 0 for the smallest), which TPE models as a number; Optuna's storage and
    optuna-dashboard therefore show the position, and autonorm's configuration the value.
    ``benchmarks/search_efficiency.py`` measured it: 71.4 mean epochs to the optimum as a
    categorical choice, 63.0 as an ordered one (200 seeds).
    """

    choices: tuple  # ascending

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(0, len(self.choices) - 1)

    def suggest(self, trial: Any, name: str) -> Any:
        return self.choices[trial.suggest_int(name, 0, len(self.choices) - 1)]

    def __str__(self) -> str:
        return "{" + " < ".join(map(str, self.choices)) + "}"


@dataclass(frozen=True)
class FloatRange(Domain):
    low: float
    high: float
    log: bool = False

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class IntRange(Domain):
    low: int
    high: int
    log: bool = False

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(self.low, self.high, log=self.log)

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def __str__(self) -> str:
        return f"[{self.low}, {self.high}]" + (" log" if self.log else "")


# ---------------------------------------------------------------- declarations: what a component has


def _accepts(param: Float | Int) -> str:
    """``; accepts >= 0`` (or ``<= 1``, ``in [0, 1]``): the values a hyperparameter takes beyond its default
    search range, where it declares bounds."""
    low, high = param.minimum, param.maximum
    if low is None and high is None:
        return ""
    if low is not None and high is not None:
        return f"; accepts [{low:g}, {high:g}]"
    return f"; accepts >= {low:g}" if low is not None else f"; accepts <= {high:g}"


@dataclass(frozen=True)
class Float:
    """A real hyperparameter: default value and default search range."""

    default: float
    low: float
    high: float
    log: bool = False
    #: the least and greatest values it accepts at all, fixed or searched (None: no bound)
    minimum: float | None = None
    maximum: float | None = None

    type_name = "number"

    def __post_init__(self) -> None:
        _check_declaration(self)

    def check(self, value: Any) -> float:
        # numbers.Real: NumPy's scalars too (np.float32 is not a float), as a program may pass them
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise DomainError(f"expected a finite number, got {value!r}")
        return float(_within(self, float(value)))

    def default_domain(self) -> Domain:
        return FloatRange(self.low, self.high, self.log)

    def range_domain(self, low: Any, high: Any, log: bool) -> Domain:
        return FloatRange(self.check(low), self.check(high), log)

    def __str__(self) -> str:
        return f"{self.default:g} in {self.default_domain()}{_accepts(self)}"


@dataclass(frozen=True)
class Int:
    """An integer hyperparameter: default value and default search range."""

    default: int
    low: int
    high: int
    log: bool = False
    #: the least and greatest values it accepts at all, fixed or searched (None: no bound)
    minimum: int | None = None
    maximum: int | None = None
    #: when given, ``search`` samples these values (an ordered choice, from ``low`` to ``high``) instead of
    #: every integer in the range: a group count must divide a channel count, which 3 or 5 rarely do
    values: tuple[int, ...] = ()

    type_name = "integer"

    def __post_init__(self) -> None:
        _check_declaration(self)
        object.__setattr__(self, "values", tuple(self.values))
        if self.values:
            try:
                for value in self.values:
                    self.check(value)
            except DomainError as exc:
                raise ValueError(f"{self!r}: values: {exc}") from None
            ends = (self.values[0], self.values[-1])
            if list(self.values) != sorted(set(self.values)) or ends != (self.low, self.high):
                raise ValueError(f"{self!r}: values must ascend, without repeats, from low to high")
            if self.default not in self.values:
                raise ValueError(f"{self!r}: default {self.default} is not one of the values")

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # np.int64 too
            raise DomainError(f"expected an integer, got {value!r}")
        return _within(self, int(value))

    def default_domain(self) -> Domain:
        return Ordered(self.values) if self.values else IntRange(self.low, self.high, self.log)

    def range_domain(self, low: Any, high: Any, log: bool) -> Domain:
        return IntRange(self.check(low), self.check(high), log)

    def __str__(self) -> str:
        return f"{self.default} in {self.default_domain()}{_accepts(self)}"


@dataclass(frozen=True)
class Choice:
    """A hyperparameter with a fixed set of values (strings, booleans, numbers)."""

    default: Any
    choices: tuple

    type_name = "choice"

    def __post_init__(self) -> None:
        if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, (tuple, list)) or not self.choices:
            raise ValueError(f"{self!r}: choices must be a non-empty tuple of values")
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.default not in self.choices:
            raise ValueError(f"{self!r}: default {self.default!r} is not one of the choices")

    def check(self, value: Any) -> Any:
        if value not in self.choices:
            raise DomainError(f"expected one of {list(self.choices)}, got {value!r}")
        return value

    def default_domain(self) -> Domain:
        return Categorical(tuple(self.choices))

    def range_domain(self, low: Any, high: Any, log: bool) -> Domain:
        raise DomainError(f"a range does not apply to a choice; list values from {list(self.choices)}")

    def __str__(self) -> str:
        return f"{self.default!r} in {self.default_domain()}"


@dataclass(frozen=True)
class Str:
    """A free-text hyperparameter, such as a file path; never searched."""

    default: str

    type_name = "text"

    def __post_init__(self) -> None:
        if not isinstance(self.default, str):
            raise ValueError(f"{self!r}: the default must be text")

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise DomainError(f"expected text, got {value!r}")
        return value

    def default_domain(self) -> Domain:
        return Fixed(self.default)

    def range_domain(self, low: Any, high: Any, log: bool) -> Domain:
        raise DomainError("a range does not apply to text")

    def __str__(self) -> str:
        return repr(self.default)


@dataclass(frozen=True)
class FilePath(Str):
    """A file or folder; never searched. A relative path is read from the folder of the YAML file
    that gives it (or leaves it at its default), so a space or protocol reads the same files from
    any working directory; one given from Python is relative to the working directory."""

    type_name = "path"

    def resolve(self, value: str, folder: Path) -> str:
        return str(folder / Path(value).expanduser())  # an absolute path stays as it is


Param = Float | Int | Choice | Str


def _within(param: Float | Int, value: float) -> Any:
    if param.minimum is not None and value < param.minimum:
        raise DomainError(f"expected at least {param.minimum}, got {value!r}")
    if param.maximum is not None and value > param.maximum:
        raise DomainError(f"expected at most {param.maximum}, got {value!r}")
    return value


def _check_declaration(param: Float | Int) -> None:
    """A plugin's range declaration is refused when it is made, naming itself: a bad one would
    otherwise fail deep inside Optuna, or fail every trial, long after the plugin loaded."""
    try:
        for value in (param.default, param.low, param.high):
            param.check(value)
    except DomainError as exc:
        raise ValueError(f"{param!r}: {exc}") from None
    if not param.low < param.high:
        raise ValueError(f"{param!r}: low {param.low} must be below high {param.high}")
    if param.log and param.low <= 0:
        raise ValueError(f"{param!r}: a log range needs low > 0")
    if not param.low <= param.default <= param.high:
        raise ValueError(f"{param!r}: default {param.default} is outside [{param.low}, {param.high}]")

_RANGE_FORMS = {"uniform": False, "loguniform": True, "range": False, "logrange": True}


def parse_domain(param: Param, raw: Any) -> Domain:
    """Turn what a YAML file gives for ``param`` into a :class:`Domain`.

    ``3`` fixes it; ``[2, 4, 8]`` lists choices (three or more numbers are an :class:`Ordered`
    choice); ``{low: 1e-3, high: 1, log: true}``, ``{uniform: [a, b]}`` or ``{loguniform: [a, b]}``
    give a range.
    """
    if isinstance(raw, list):
        if not raw:
            raise DomainError("empty list of choices")
        values = tuple(param.check(v) for v in raw)
        if len(set(map(repr, values))) != len(values):
            raise DomainError(f"repeated choices in {raw!r}")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numbers and len(set(values)) == len(values) >= 3:
            return Ordered(tuple(sorted(values)))
        return Categorical(values)
    if isinstance(raw, dict):
        return _parse_range(param, raw)
    return Fixed(param.check(raw))


def _parse_range(param: Param, raw: dict) -> Domain:
    if set(raw) <= {"low", "high", "log"} and {"low", "high"} <= set(raw):
        low, high, log = raw["low"], raw["high"], raw.get("log", False)
        if not isinstance(log, bool):
            raise DomainError(f"'log' must be true or false, got {log!r}")
    elif len(raw) == 1 and next(iter(raw)) in _RANGE_FORMS:
        form, bounds = next(iter(raw.items()))
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise DomainError(f"'{form}' expects a list [low, high], got {bounds!r}")
        (low, high), log = bounds, _RANGE_FORMS[form]
    else:
        raise DomainError(
            f"expected a value, a list of choices, {{low: .., high: .., log: ..}} or one of "
            f"{{{', '.join(f'{k}: [low, high]' for k in _RANGE_FORMS)}}}, got {raw!r}"
        )
    domain = param.range_domain(low, high, log)
    if not domain.low < domain.high:
        raise DomainError(f"empty or inverted range: low {domain.low} must be below high {domain.high}")
    if log and domain.low <= 0:
        raise DomainError(f"a log range needs low > 0, got {domain.low}")
    return domain
