"""One short, fast training loop.

Data lives on the training device as tensors; batches are index slices of a per-epoch permutation,
so there is no per-step host work. The loop reports the validation metrics every epoch (pruners act
on them), ends a trial whose loss stops being finite (:class:`Diverged`, reason "diverged"), and
records cost metrics: trainable parameters, training seconds, inference latency, peak memory.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autonorm.data import Data
from autonorm.errors import Diverged, Incompatible, TrialFailed
from autonorm.training_method import TrainingMethod

#: Equal-width confidence bins of the expected calibration error (the bar width 0.05 of JEM's reliability diagrams).
ECE_BINS = 20

#: Called after every epoch with (epoch, metrics); may raise to stop the trial (pruning).
Reporter = Callable[[int, dict[str, float]], None]


@dataclass
class FitResult:
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrialFailed("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def decay_groups(model: nn.Module, weight_decay: float, decay_on: str = "weights") -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups. With ``decay_on="weights"`` only tensors of two or
    more dimensions (conv and linear weights, a head's class centres) are decayed; normalization scales
    and shifts, biases and the methods' per-channel or scalar parameters (FRN's tau, Proxy Norm's, a
    Hadamard head's scale) keep their value, as in timm and Proxy Normalization's official code:
    decaying them pulls a normalization's scale towards zero, which changes the method rather than
    regularizing the model. ``decay_on="all"`` decays every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_on == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer over :func:`decay_groups`; a group a training method adds later without its own
    ``weight_decay`` gets ``train["weight_decay"]``."""
    lr, wd = train["lr"], train["weight_decay"]
    groups = decay_groups(model, wd, train["weight_decay_on"])
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=train["momentum"], weight_decay=wd, nesterov=train["momentum"] > 0
        )
    if train["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)


def make_schedule(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def fit(
    model: nn.Module,
    data: Data,
    train: dict[str, Any],
    epochs: int,
    report: Reporter | None = None,
    x_eval: torch.Tensor | None = None,
    y_eval: torch.Tensor | None = None,
    methods: Sequence[TrainingMethod] = (),
) -> FitResult:
    """Train ``model`` on ``data.x_train`` and evaluate on the validation split (or ``x_eval``) each epoch.

    ``methods`` are called at their hook points (see :class:`~autonorm.training_method.TrainingMethod`).

    ``train`` holds batch_size, optimizer, lr, weight_decay, weight_decay_on, momentum, schedule, device, amp
    (bf16 autocast on CUDA) and channels_last.
    """
    device = resolve_device(train.get("device", "auto"))
    use_amp = bool(train.get("amp")) and device.type == "cuda"
    memory_format = torch.channels_last if train.get("channels_last") and data.x_train.ndim == 4 else None
    model = model.to(device, memory_format=memory_format) if memory_format else model.to(device)

    # -------------------------------------------------------------- data on the device, once
    x, y = data.x_train.to(device), data.y_train.to(device)
    xv = (data.x_val if x_eval is None else x_eval).to(device)
    yv = (data.y_val if y_eval is None else y_eval).to(device)
    if memory_format:
        x, xv = x.contiguous(memory_format=memory_format), xv.contiguous(memory_format=memory_format)
    n = len(x)
    batch_size = min(int(train["batch_size"]), n)
    steps = n // batch_size  # drop the last partial batch: no size-1 batches for batch statistics

    optimizer = make_optimizer(model, train)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    history: list[dict[str, float]] = []
    for method in methods:
        try:
            method.setup_data(x, y, epochs)
            method.setup(model, optimizer)
        except ValueError as exc:  # the method cannot act on this model or optimizer: steer away, as from a build
            raise Incompatible(f"incompatible: {exc}") from None
    # after setup, so parameter groups a method adds follow the schedule too
    scheduler = make_schedule(optimizer, train["schedule"], steps * epochs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trained = 0.0  # seconds spent training: the batches and the methods' end of epoch, not evaluation

    # -------------------------------------------------------------- loop
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=device)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            for method in methods:
                xb, yb = method.transform_batch(xb, yb)
            with autocast():
                loss = next((v for m in methods if (v := m.loss(model, xb, yb)) is not None), None)
                if loss is None:
                    loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for method in methods:
                method.after_backward(model)
            optimizer.step()
            scheduler.step()
            for method in methods:
                method.after_step(model)
            loss_sum += loss.detach()
        train_loss = loss_sum.item() / max(steps, 1)  # one host sync per epoch
        if not math.isfinite(train_loss):
            raise Diverged(f"diverged: training loss became {train_loss} in epoch {epoch + 1}")
        eval_model = model
        for method in methods:
            method.end_epoch(model, epoch)
            eval_model = method.eval_model(eval_model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        trained += time.perf_counter() - start
        metrics = {"train_loss": train_loss, **evaluate(eval_model, xv, yv, autocast)}
        if len(xv) and not math.isfinite(metrics["val_loss"]):  # an averaged or EMA model gone NaN, say
            raise Diverged(f"diverged: validation loss became {metrics['val_loss']} in epoch {epoch + 1}")
        history.append(metrics)
        if report is not None:
            report(epoch, metrics)

    # -------------------------------------------------------------- costs
    metrics = dict(history[-1])
    metrics["train_seconds"] = trained
    metrics["params"] = float(sum(p.numel() for p in model.parameters() if p.requires_grad))
    try:
        metrics["latency_ms"] = latency_ms(model, xv[:1], autocast)
    except (RuntimeError, ValueError) as exc:  # the trained result stands; only this cost is missing
        warnings.warn(f"latency not measured: the model cannot run on a single sample ({exc})", stacklevel=2)
    if device.type == "cuda":
        metrics["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return FitResult(metrics, history)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: Callable = contextlib.nullcontext,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean of the per-class recalls, over the classes present), mean
    cross-entropy and expected calibration error of ``model`` in eval mode.

    ECE: the max softmax probability (confidence) of each sample falls in one of ``ECE_BINS`` equal-width
    bins of [0, 1]; ECE = sum over bins of (n_b / N) * |accuracy_b - mean confidence_b| (empty bins add 0).
    """
    model.eval()
    if len(x) == 0:
        return {name: float("nan") for name in ("val_accuracy", "val_balanced_accuracy", "val_loss", "val_ece")}
    num_classes = int(y.max()) + 1
    correct = torch.zeros(num_classes, device=x.device)
    loss = torch.zeros((), device=x.device)
    bin_conf = torch.zeros(ECE_BINS, device=x.device)  # per confidence bin: sums of confidences and of hits
    bin_hits = torch.zeros(ECE_BINS, device=x.device)
    for i in range(0, len(x), batch_size):
        with autocast():
            logits = model(x[i : i + batch_size]).float()
        target = y[i : i + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum")
        conf, pred = logits.softmax(1).max(1)
        hit = (pred == target).float()
        correct += torch.bincount(target, weights=hit, minlength=num_classes)
        bins = (conf * ECE_BINS).long().clamp_(0, ECE_BINS - 1)  # bin b holds [b/B, (b+1)/B); 1.0 goes in the last
        bin_conf.index_add_(0, bins, conf)
        bin_hits.index_add_(0, bins, hit)
    counts = torch.bincount(y, minlength=num_classes)
    present = counts > 0
    balanced = (correct[present] / counts[present]).mean()
    ece = (bin_hits - bin_conf).abs().sum() / len(x)  # (n_b / N) |acc_b - conf_b| = |hits_b - conf sum_b| / N
    total, balanced, loss, ece = torch.stack([correct.sum(), balanced, loss, ece]).tolist()  # one host sync
    return {
        "val_accuracy": total / len(x),
        "val_balanced_accuracy": balanced,
        "val_loss": loss / len(x),
        "val_ece": ece,
    }


@torch.no_grad()
def latency_ms(
    model: nn.Module, sample: torch.Tensor, autocast: Callable = contextlib.nullcontext, repeats: int = 20
) -> float:
    """Median milliseconds of one forward pass on a single sample, in eval mode and under ``autocast``
    (the precision the model is evaluated in), after 3 warm-up passes."""
    model.eval()
    times = []
    for _ in range(repeats + 3):
        if sample.is_cuda:
            torch.cuda.synchronize(sample.device)
        t0 = time.perf_counter()
        with autocast():
            model(sample)
        if sample.is_cuda:
            torch.cuda.synchronize(sample.device)
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times[3:])[repeats // 2]
