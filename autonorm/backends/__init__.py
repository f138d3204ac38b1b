"""Backends turn a :class:`~autonorm.spec.SearchSpec` into trials written to one Optuna storage."""

from autonorm.backends.optuna import run_optuna

__all__ = ["run_optuna"]
