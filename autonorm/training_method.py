"""The points where a method that changes the training step, not the model, plugs into the trainer.

A :class:`TrainingMethod` is a plain object the trainer calls; every hook defaults to doing nothing.
Components of any kind may bring one (``Component.training_method``), e.g. a normalization that
projects weights after every optimizer step; augmentation and training-method plugins are made of one.
"""

from __future__ import annotations

import torch
from torch import nn


class TrainingMethod:
    """Hooks, in the order the trainer calls them."""

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Once, before the first step, with the model on its device; may add parameter groups to the
        optimizer (the learning-rate schedule is built after setup, so they follow it)."""

    def setup_data(self, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        """Once, before :meth:`setup`, with the whole training split on the device and the number of
        epochs: for methods that need class counts, data statistics or a schedule over the run."""

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
