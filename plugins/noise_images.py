"""Pure-noise images (OPeN) with Distribution-Aware Routing of batch statistics (DAR-BN).

Zada, Benou, Irani, "Pure Noise to the Rescue of Insufficient Data: Improving Imbalanced Classification
by Training on Random Noise Images", ICML 2022, arXiv:2112.08810. The authors' repository
(``shiranzada/pure-noise``) holds no code; this follows the paper's Appendix E listing.

OPeN ("oversampling with pure noise"), in the final phase of training:

1. batches are drawn class-balanced (every class equally likely: oversampling);
2. each sample i is replaced, with probability ``delta * (1 - N[y_i] / max_c N[c])``, by a pure-noise
   image and keeps its label y_i (so the largest class never gets noise, the rarest about ``delta``);
3. a noise image has every value i.i.d. Gaussian with the per-channel mean and standard deviation of
   the training split, in the model's input space (after autonorm's standardization);
4. every batch-dependent normalization routes by the noise mask (:mod:`autonorm.routing`, DAR-BN):
   natural rows alone make the batch and running statistics; noise rows are normalized with their own
   statistics and the same, locked, affine. Batch-independent normalizations need no routing.

Defaults: ``delta = 1/3``, the value of the unofficial reimplementation ``bodhitrii/OPeN`` (the paper's own
is not confirmed, (u)); OPeN starts after ``start = 0.8`` of the epochs (the last 40 of 200 epochs in that
reimplementation, on the LDAM-DRW code; the paper's own schedule is not given, (u)); before that, training
is plain instance-balanced. The start epoch is ``start * epochs`` rounded half up and at most the last
epoch, so OPeN always runs for at least one epoch (0.8 of 10 epochs: epochs 8 and 9; 0.95 of 10: epoch 9).
``noise_grad``: ``no_grad`` (default) is the Appendix E listing, where the noise rows' branch of every
DAR-BN runs under ``torch.no_grad()`` (noise then trains only the layers after the last routed
normalization); ``detach`` only locks the affine and lets gradients flow through the noise activations
(the paper's figure, (u)). Noise rows take the cross-entropy with their kept label; no extra class. The
loss is the training method's: with ``label_smoothing`` the noise rows' targets are smoothed like the
natural rows' (the kept label gets 1 - eps + eps / K).
"""

from __future__ import annotations

import torch
from torch import nn

import autonorm
from autonorm import Choice, Component, Float, TrainingMethod
from autonorm.routing import Router, route_batch_statistics
from autonorm.training_method import phase_start


class PureNoiseImages(TrainingMethod):
    """OPeN: class-balanced batches in which samples of small classes are replaced by labelled pure noise."""

    def __init__(self, delta: float = 1 / 3, start: float = 0.8, noise_grad: str = "no_grad") -> None:
        self.delta, self.start, self.noise_grad = delta, start, noise_grad
        self.router: Router | None = None
        self.epoch = 0

    def setup_data(self, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        self.x, self.y = x, y
        self.counts = torch.bincount(y)
        self.classes = self.counts.nonzero().squeeze(1)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.by_class = torch.argsort(y, stable=True)
        reduce = (0, *range(2, x.ndim))
        self.mean, self.std = x.mean(reduce, keepdim=True), x.std(reduce, unbiased=False, keepdim=True)
        self.start_epoch = phase_start(self.start, epochs)

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.router = route_batch_statistics(model, self.noise_grad)

    def balanced_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples drawn with replacement, each from a uniformly chosen class."""
        device = self.y.device
        cls = self.classes[torch.randint(len(self.classes), (n,), device=device)]
        within = (torch.rand(n, device=device) * self.counts[cls]).long().clamp_max(self.counts[cls] - 1)
        idx = self.by_class[self.offsets[cls] + within]
        return self.x[idx], self.y[idx]

    def add_noise(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace samples by pure noise with probability ``delta * (1 - N_y / N_max)``; the noise mask."""
        p = self.delta * (1 - self.counts[y] / self.counts.max())
        mask = torch.bernoulli(p).bool()
        noise = self.mean + self.std * torch.randn_like(x)
        return torch.where(mask.view(-1, *[1] * (x.ndim - 1)), noise, x), mask

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.epoch < self.start_epoch:
            return x, y
        x, y = self.balanced_batch(len(x))
        x, self.router.mask = self.add_noise(x, y)
        return x, y

    def after_step(self, model: nn.Module) -> None:
        self.router.mask = None

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        self.epoch = epoch + 1


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="augmentation",
            name="noise_images",
            factory=PureNoiseImages,
            params={
                "delta": Float(1 / 3, 0.05, 0.9),
                "start": Float(0.8, 0.0, 0.95),
                "noise_grad": Choice("no_grad", ("no_grad", "detach")),
            },
        )
    ]
