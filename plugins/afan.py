"""A-FAN: Chen, Cheng, Gan, Wang, Wang, Wang, Liu, "Adversarial Feature Augmentation and Normalization for Visual
Recognition", TMLR 2022, arXiv:2103.12171 (official code: ``VITA-Group/CV_A-FAN``).

The model is split at a stage boundary into a head (input -> features h) and a tail (h -> logits). Each step:

1. Clean pass: h = head(x), logits = tail(h); CE_clean = CE(logits, y).
2. PGD in feature space from h.detach(): T steps h_adv <- h_adv + step * sign(d CE(tail(h_adv), y) / d h_adv), with
   optional random start in [-eps, eps] and projection onto the L-inf ball of radius eps around h (both off in the
   released classification runs, so the perturbation is bounded by T * step). Only h_adv is differentiated
   (``torch.autograd.grad``), so PGD leaves no gradient on the parameters.
3. Adversarial feature normalization: the clean features take the adversarial moments,
   h_mix = sigma_adv * (h - mu_h) / sigma_h + mu_adv with sigma = sqrt(var + 1e-5) (the released ``mix_feature``
   rule; ``stat_mix`` < 1 interpolates the target moments toward the clean ones, 1 is the paper's rule).
4. Loss: (1 - adv_weight) * CE_clean + adv_weight * mean of CE(tail(h_adv), y) and, with ``normalize``,
   CE(tail(h_mix), y). With adv_weight = 0.5 and no normalization this is the released classification loss
   (1/2 clean + 1/2 adversarial). The adversarial branch starts from the detached feature: its terms train the tail
   only. Evaluation is the plain clean model.

The attack's defaults are those of the released CIFAR-10 runs: split after the first residual stage, T = 5 steps
of 0.5/255, eps = 2/255, no clip, no random start. The loss default is the paper's method, augmentation and
normalization (``normalize=True``: 1/2 clean + 1/4 adversarial + 1/4 normalized); ``normalize: false`` gives the
released classification loss. Decisions on the open points:

- Statistic axis (u): ``stats="batch"`` (default) takes per-channel moments over the batch and spatial positions
  (the abstract's "batch normalization" statistics); ``stats="channel"`` takes them over the channel axis per sample
  and position, as the released ``mix_feature`` does.
- Combination of the normalized feature with the loss (u): the classification code has no normalization step; here
  CE(tail(h_mix)) joins the adversarial term with equal weight.
- Batch statistics during the adversarial tail passes: ``bn_stats="update"`` (default, as in the official code, whose
  PGD passes run in train mode and update running statistics) or ``"clean"``, which restores the tail's buffers
  after the adversarial passes so running statistics see clean features only. The order differs from the
  official step (attack first, the clean forward last): here the clean pass comes first, so clean features make
  a smaller share of the tail's running statistics (about 8% against 19% at T = 5).
- Moments use the biased variance (the released ``mix_feature`` uses ``.var()``, unbiased); the factor cancels
  in sigma_adv / sigma_h up to the 1e-5 added to each.

Supported backbones: ``resnet`` (stage 1..3 = after that residual stage) and ``small_cnn`` (stage 1..depth = after
that conv layer). Any other model, or a stage it does not have, fails the trial at setup (``TrialFailed``).
The registry's ``requires`` is conjunctive, so it cannot say "resnet or small_cnn"; as these are the only built-in
backbones, the component declares no requirement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autonorm_plugins.resnet import ResNet
from autonorm_plugins.small_cnn import SmallCNN
from torch import nn

import autonorm
from autonorm import Choice, Component, Float, Int, TrainingMethod
from autonorm.errors import TrialFailed

SUPPORTED = "resnet (stage 1..3) and small_cnn (stage 1..depth)"


def split_model(model: nn.Module, stage: int) -> tuple[nn.Module, nn.Module]:
    """(head, tail) sharing the model's modules, with tail(head(x)) == model(x), cut after ``stage``."""
    if isinstance(model, ResNet):
        blocks = list(model.blocks)
        per_stage = len(blocks) // 3
        if not 1 <= stage <= 3:
            raise TrialFailed(f"afan: resnet has stages 1..3, got stage={stage}")
        cut = stage * per_stage
        return nn.Sequential(model.stem, *blocks[:cut]), nn.Sequential(*blocks[cut:], model.pool, model.head)
    if isinstance(model, SmallCNN):
        layers = list(model.features)
        depth = len(layers) // 2
        if not 1 <= stage <= depth:
            raise TrialFailed(f"afan: this small_cnn has conv layers 1..{depth}, got stage={stage}")
        cut = 2 * stage
        return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:], model.pool, model.head)
    raise TrialFailed(f"afan: cannot split {type(model).__name__} into head and tail; supported: {SUPPORTED}")


def feature_moments(h: torch.Tensor, stats: str, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sqrt(var + eps) of ``h`` (N, C, ...): per channel over all other axes (``batch``), or over the
    channel axis per sample and position (``channel``)."""
    dims = [d for d in range(h.dim()) if d != 1] if stats == "batch" else [1]
    mean = h.mean(dim=dims, keepdim=True)
    std = (h.var(dim=dims, keepdim=True, unbiased=False) + eps).sqrt()
    return mean, std


def mix_feature(clean: torch.Tensor, adv: torch.Tensor, stats: str = "batch", stat_mix: float = 1.0) -> torch.Tensor:
    """Normalize ``clean`` with its own moments and re-scale it with the target moments
    (1 - stat_mix) * clean + stat_mix * adversarial (stat_mix = 1: the adversarial moments)."""
    mean_c, std_c = feature_moments(clean, stats)
    mean_a, std_a = feature_moments(adv, stats)
    mean_t = torch.lerp(mean_c, mean_a, stat_mix)
    std_t = torch.lerp(std_c, std_a, stat_mix)
    return (clean - mean_c) / std_c * std_t + mean_t


def feature_pgd(
    tail: nn.Module,
    h: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    step_size: float,
    eps: float,
    clip: bool = False,
    rand_init: bool = False,
) -> torch.Tensor:
    """L-inf sign-gradient ascent on CE(tail(h_adv), y) from ``h`` (detached); returns the detached h_adv."""
    h = h.detach()
    h_adv = h.clone()
    if rand_init:
        h_adv += torch.empty_like(h).uniform_(-eps, eps)
    for _ in range(steps):
        h_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(tail(h_adv), y), h_adv)
        h_adv = h_adv.detach() + step_size * grad.sign()
        if clip:
            h_adv = torch.max(torch.min(h_adv, h + eps), h - eps)
    return h_adv.detach()


class AFAN(TrainingMethod):
    """Adversarial feature augmentation (feature-space PGD at a stage boundary) and normalization."""

    def __init__(
        self,
        stage: int = 1,
        steps: int = 5,
        step_size: float = 0.5 / 255,
        eps: float = 2 / 255,
        clip: bool = False,
        rand_init: bool = False,
        adv_weight: float = 0.5,
        normalize: bool = True,
        stat_mix: float = 1.0,
        stats: str = "batch",
        bn_stats: str = "update",
    ) -> None:
        if stats not in ("batch", "channel"):
            raise ValueError(f"afan: stats must be 'batch' or 'channel', got {stats!r}")
        if bn_stats not in ("update", "clean"):
            raise ValueError(f"afan: bn_stats must be 'update' or 'clean', got {bn_stats!r}")
        self.stage, self.steps, self.step_size, self.eps = stage, steps, step_size, eps
        self.clip, self.rand_init = clip, rand_init
        self.adv_weight, self.normalize, self.stat_mix = adv_weight, normalize, stat_mix
        self.stats, self.bn_stats = stats, bn_stats
        self._model: nn.Module | None = None
        self._parts: tuple[nn.Module, nn.Module] | None = None

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._split(model)

    def _split(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        if self._model is not model or self._parts is None:
            self._parts, self._model = split_model(model, self.stage), model
        return self._parts

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        head, tail = self._split(model)
        h = head(x)
        clean = F.cross_entropy(tail(h), y)
        saved = [b.clone() for b in tail.buffers()] if self.bn_stats == "clean" else None
        h_adv = feature_pgd(tail, h, y, self.steps, self.step_size, self.eps, self.clip, self.rand_init)
        adv_terms = [F.cross_entropy(tail(h_adv), y)]
        if self.normalize:
            adv_terms.append(F.cross_entropy(tail(mix_feature(h.detach(), h_adv, self.stats, self.stat_mix)), y))
        if saved is not None:
            with torch.no_grad():
                for buf, old in zip(tail.buffers(), saved, strict=True):
                    buf.copy_(old)
        return (1 - self.adv_weight) * clean + self.adv_weight * torch.stack(adv_terms).mean()


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="training",
            name="afan",
            factory=AFAN,
            params={
                "stage": Int(1, 1, 3),
                "steps": Int(5, 1, 5),
                "step_size": Float(0.5 / 255, 0.1 / 255, 2 / 255, log=True),
                "eps": Float(2 / 255, 0.5 / 255, 8 / 255, log=True),
                "clip": Choice(False, (False, True)),
                "rand_init": Choice(False, (False, True)),
                "adv_weight": Float(0.5, 0.0, 0.7),
                "normalize": Choice(True, (True, False)),
                "stat_mix": Float(1.0, 0.0, 1.0),
                "stats": Choice("batch", ("batch", "channel")),
                "bn_stats": Choice("update", ("update", "clean")),
            },
        )
    ]
