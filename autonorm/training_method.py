"""The points where a method that changes the training step, not the model, plugs into the trainer.

A :class:`TrainingMethod` is a plain object the trainer calls; every hook defaults to doing nothing.
Components of any kind may bring one (``Component.training_method``), e.g. a normalization that
projects weights after every optimizer step; augmentation and training-method plugins are made of one.
The trainer of a search's trials and of ``autonorm train`` calls the same hooks. With several methods
chosen, each hook is called on each method in the order of the configuration's kinds (normalization
before augmentation before training); ``transform_batch`` passes the batch along that chain, and the
first ``loss`` that is not None is the loss.

A subclass is checked when it is defined: a hook overridden with other positional parameters, or a
method named almost like a hook (``after_steps``), is a ``TypeError`` there, not an error in the middle
of a trial or a hook that is never called.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any

import torch
from torch import nn


def phase_start(fraction: float, epochs: int) -> int:
    """The epoch (from 0) in which a phase that begins after ``fraction`` of ``epochs`` starts: rounded
    half up, and at most the last epoch, so that the phase always runs (0.8 of 10 epochs: epoch 8; 0.95
    of 10: epoch 9, where Python's ``round`` would give 10 and no phase at all)."""
    return min(math.floor(fraction * epochs + 0.5), max(epochs - 1, 0))


class TrainingMethod:
    """Hooks, in the order the trainer calls them: ``setup_data`` and ``setup`` once; for each batch
    ``transform_batch``, ``loss``, ``after_backward``, ``after_step``; after each epoch ``end_epoch``,
    then ``eval_model`` for the model it evaluates."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hooks = [name for name in vars(TrainingMethod) if not name.startswith("_")]
        for name, member in vars(cls).items():
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            if name in hooks:
                _check_signature(cls, name, member)
            elif close := difflib.get_close_matches(name, hooks, n=1, cutoff=0.85):
                raise TypeError(
                    f"{cls.__name__}.{name}: not a TrainingMethod hook, so the trainer never calls it; "
                    f"did you mean {close[0]!r}? (hooks: {', '.join(hooks)})"
                )

    def setup_data(self, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        """Once, before :meth:`setup`, with the whole training split on the device and the number of
        epochs: for methods that need class counts, data statistics or a schedule over the run."""

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Once, before the first step, with the model on its device; may add parameter groups to the
        optimizer (the learning-rate schedule is built after setup, so they follow it)."""

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Change a training batch (augmentation); may change its size."""
        return x, y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Compute the training loss; None leaves it to the next method or to cross-entropy on ``model(x)``."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """After every backward pass, before the optimizer step: the gradients may be changed here (a
        penalty applied through its subgradient)."""

    def after_step(self, model: nn.Module) -> None:
        """After every optimizer step."""

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """After the last step of each epoch, before evaluation."""

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model to evaluate (e.g. averaged weights, an EMA teacher); the default is ``model``."""
        return model


def _positional(function: Any) -> tuple[int, bool]:
    """How many positional parameters ``function`` takes, and whether it takes any number (``*args``)."""
    params = inspect.signature(function).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in params), any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def _check_signature(cls: type, name: str, function: Any) -> None:
    """The hook ``name`` of ``cls`` takes what the trainer passes it."""
    expected, _ = _positional(getattr(TrainingMethod, name))
    takes, any_number = _positional(function)
    if takes != expected and not (any_number and takes <= expected):
        names = ", ".join(inspect.signature(getattr(TrainingMethod, name)).parameters)
        raise TypeError(f"{cls.__name__}.{name}{inspect.signature(function)}: the trainer calls {name}({names})")
