"""Routing of batch statistics: rows of a training batch that must not shape the statistics of the others.

Some augmentations put rows into a batch that come from another distribution than the data (pure-noise
images, Zada et al. 2022, arXiv:2112.08810). A normalization that computes statistics over the batch
would mix them with the natural rows' statistics and carry them into its running estimates.
:func:`route_batch_statistics` makes every batch-dependent normalization of a model route its input by
a boolean row mask (``router.mask``, set per training batch by the method that built it):

- natural rows (``mask`` false) go through the module as usual, alone: batch statistics of the natural
  rows only, running statistics updated from them, parameters trained by them;
- masked rows go through the same module in training mode with their own batch statistics, its
  buffers untouched (running statistics never see them) and its parameters locked (``detach``: the
  affine is shared but not trained by them; ``no_grad``: no gradient at all through this module's
  masked rows);
- outputs are put back in batch order. With no mask, an all-false mask, or in eval mode the module is
  called unchanged, so its outputs are bit-identical to the unrouted module.

This is generic: it wraps the module's own forward, so BatchNorm, batch-channel normalization,
whitening or any other batch-dependent layer is routed without code of its own. Which modules are
batch-dependent: every ``torch.nn`` BatchNorm (``_BatchNorm``: BatchNorm1d/2d/3d, SyncBatchNorm and
their subclasses), every module built by a normalization component declared ``batch_dependent=True``
(:func:`autonorm.build.build_model` marks them with :func:`mark_batch_dependent`), and any module
with a true ``batch_dependent`` attribute (set it on a class that computes batch statistics but is not
built by a normalization factory). Batch-independent normalizations (GroupNorm, LayerNorm, FRN, ...)
are left alone: each row's output does not depend on the other rows. Only the outermost such module
is routed (a batch-dependent module made of BatchNorms is routed as a whole).

A subset with fewer than two values per channel (one row of a ``(N, C)`` input) has no batch variance:
it is normalized as in eval mode, with the running statistics, and updates nothing.

Layers that pass information along the autograd graph (``grad_fn.metadata``; Batch Kalman Norm's
statistics and priors) see through routing: each subset's input node carries the metadata of the
routed input's node, and the routed output's node carries that of the natural rows' output.

An augmentation that reorders or resizes the batch after the mask is set must reorder or resize
``router.mask`` with it; a mask whose length differs from the batch is an error, not a silent mismatch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call


class Router:
    """The row mask shared by the routed modules of one model.

    ``mask`` is a bool tensor with one entry per row of the next training batches (true: a row to keep
    out of the batch statistics), or None. ``detach`` (default) locks the parameters for masked rows
    but lets gradients flow through the masked activations; ``no_grad`` stops gradients at every routed
    module for masked rows.
    """

    MODES = ("detach", "no_grad")

    def __init__(self, grad: str = "detach") -> None:
        if grad not in self.MODES:
            raise ValueError(f"routing grad mode must be one of {self.MODES}, got {grad!r}")
        self.grad = grad
        self.mask: torch.Tensor | None = None
        self._bypass = False

    @contextlib.contextmanager
    def bypassed(self) -> Iterator[None]:
        self._bypass = True
        try:
            yield
        finally:
            self._bypass = False


def is_batch_dependent(module: nn.Module) -> bool:
    """Whether the module computes statistics over the batch in training mode."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or bool(getattr(module, "batch_dependent", False))


def mark_batch_dependent(module: nn.Module) -> nn.Module:
    """Mark a module as batch-dependent (what ``build_model`` does for a ``batch_dependent`` normalization)."""
    module.batch_dependent = True
    return module


class _Routed:
    """Mixed into a batch-dependent module's class: routes its forward by ``self.batch_router.mask``."""

    batch_router: Router

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        router = self.batch_router
        mask = router.mask
        if router._bypass or mask is None or not self.training:
            return super().forward(x, *args, **kwargs)
        if mask.shape != x.shape[:1]:
            raise RuntimeError(
                f"routing mask has {mask.shape[0]} rows but the batch has {x.shape[0]}; an augmentation "
                "that resizes or reorders the batch must do the same to router.mask"
            )
        masked = mask.nonzero().squeeze(1)
        if len(masked) == 0:
            return super().forward(x, *args, **kwargs)
        natural = (~mask).nonzero().squeeze(1)
        parts, order = [], []
        if len(natural):
            parts.append(self._subset(_carried(x, x.index_select(0, natural)), args, kwargs, locked=False))
            order.append(natural)
        parts.append(self._subset(_carried(x, x.index_select(0, masked)), args, kwargs, locked=True))
        order.append(masked)
        inverse = torch.argsort(torch.cat(order))
        return _carried(parts[0], torch.cat(parts).index_select(0, inverse))

    def _subset(self, x: torch.Tensor, args: tuple, kwargs: dict, locked: bool) -> torch.Tensor:
        """The module on a subset of rows; ``locked``: own batch statistics, no buffer update, no training."""
        no_stats = x.shape[0] * math.prod(x.shape[2:]) < 2
        if not locked and not no_stats:
            return super().forward(x, *args, **kwargs)
        router = self.batch_router
        grad = torch.no_grad() if locked and router.grad == "no_grad" else contextlib.nullcontext()
        state = {n: p.detach() if locked else p for n, p in self.named_parameters()}
        state.update({n: b.clone() for n, b in self.named_buffers()})  # updates land on the copies
        was_training = self.training
        with router.bypassed(), grad:
            if no_stats:
                self.train(False)
            try:
                return functional_call(self, state, (x, *args), kwargs)
            finally:
                self.train(was_training)


def _carried(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target``, its autograd node given ``source``'s node metadata (see the module docstring)."""
    if source.grad_fn is not None and target.grad_fn is not None:
        target.grad_fn.metadata.update(source.grad_fn.metadata)
    return target


_ROUTED_CLASSES: dict[type, type] = {}


def _routed_class(cls: type) -> type:
    if cls not in _ROUTED_CLASSES:
        _ROUTED_CLASSES[cls] = type(f"Routed{cls.__name__}", (_Routed, cls), {"__module__": cls.__module__})
    return _ROUTED_CLASSES[cls]


def route_batch_statistics(model: nn.Module, grad: str = "detach") -> Router:
    """Make every outermost batch-dependent module of ``model`` route by a shared :class:`Router`.

    The modules keep their parameters, buffers and state-dict keys (only their class changes, the way
    ``torch.nn.utils.parametrize`` does it), so optimizers and checkpoints are unaffected. Calling it
    again on a routed model returns the router it already has.
    """
    routed = [m for m in model.modules() if isinstance(m, _Routed)]
    if routed:
        return routed[0].batch_router
    router = Router(grad)

    def visit(module: nn.Module) -> None:
        if is_batch_dependent(module):
            module.__class__ = _routed_class(type(module))
            module.batch_router = router
        else:
            for child in module.children():
                visit(child)

    visit(model)
    return router


__all__ = ["Router", "is_batch_dependent", "mark_batch_dependent", "route_batch_statistics"]
