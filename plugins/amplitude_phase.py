"""Amplitude-Phase Recombination (APR-P, APR-S, APR-SP): Chen, Peng, Ma, Li, Du, Tian, "Amplitude-Phase
Recombination: Rethinking Robustness of Convolutional Neural Networks in Frequency Domain", ICCV 2021,
arXiv:2108.08487 (official code ``iCGY96/APR``).

With F the discrete Fourier transform of one sample, the recombination R(a, b) = Re F^-1(|F(b)| e^{i angle F(a)})
keeps the phase (structure) of ``a`` and takes the amplitude of ``b``. Labels always follow the phase source;
no label mixing. Evaluation is unchanged.

- APR-P (``variant="p"``, the default): for each training batch, with probability ``prob`` (one coin per batch,
  not per sample) a random permutation pi of the batch is drawn and the batch becomes [x; R(x, x_pi)] with
  labels [y; y]; both halves go through the model in one forward, so batch statistics see both.
- APR-S (``"s"``): each image gets one random op of the AugMix list (autocontrast, equalize, posterize, rotate,
  solarize, shear x/y, translate x/y) at severity 3; with probability 1/2 that is all, otherwise a second
  random op makes x' from it and the image becomes R(x, x') or R(x', x), with equal probability.
- APR-SP (``"sp"``): APR-S on every image, then APR-P on the batch (the paper's best setting).

Defaults and choices:

- ``prob = 0.6`` (the paper's CIFAR setting; its ImageNet script uses 0.5);
- ``fft = "all"`` transforms every axis of a sample, the channel axis included (the official code); ``"spatial"``
  transforms each channel on its own (the per-channel reading of the paper), so colours do not mix;
- the recombination acts on the model's inputs, i.e. after autonorm's per-channel standardization (as in the
  official ImageNet script; its CIFAR script recombines before normalizing) (u). One consequence: the DC
  (zero-frequency) term's phase is the sign of the mean, so the mixed image's mean is |partner's mean| with
  the phase source's sign (per channel with ``fft="spatial"``): a dark image given a bright partner's amplitude
  stays dark (standardized means -1.23 and +0.80 give -0.80), while in the CIFAR script's [0, 1] space every
  mean is positive and the mixed image takes the partner's brightness;
- when the coin says no, the batch is left as it is (the official code appends a duplicate of the clean batch,
  which gives the same gradient of the mean loss), so ``prob = 0`` is exactly plain training (u);
- the loss is the trainer's mean cross-entropy over the doubled batch, i.e. (CE(x) + CE(x~)) / 2: half the
  official sum, which only rescales the gradient (u);
- APR-S runs on the batch tensors (the official code: on PIL images in the data pipeline, before crop and flip,
  which autonorm does not have). The AugMix ops are re-implemented on tensors: each image is mapped to [0, 1]
  by its own minimum and maximum, the ops act there with PIL's conventions (256 grey levels for equalize,
  posterize and solarize; bilinear sampling and zero fill for the geometric ops), and the result, clipped to
  [0, 1] (the official code wraps around instead), is mapped back (u). APR-S needs images (N, C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

import autonorm
from autonorm import Choice, Component, Float, TrainingMethod

SEVERITY = 3


def recombine(phase: torch.Tensor, amplitude: torch.Tensor, fft: str = "all") -> torch.Tensor:
    """Per sample, the real signal with the Fourier phase of ``phase`` and the Fourier amplitude of ``amplitude``.

    ``fft``: ``"all"`` transforms every non-batch axis, ``"spatial"`` every axis after the channel axis.
    """
    dims = tuple(range(1 if fft == "all" else 2, phase.ndim))
    spectrum = torch.polar(torch.fft.fftn(amplitude, dim=dims).abs(), torch.fft.fftn(phase, dim=dims).angle())
    return torch.fft.ifftn(spectrum, dim=dims).real.to(phase.dtype)


# ---------------------------------------------------------------- AugMix ops on images in [0, 1], (n, C, H, W)


def _level(u: torch.Tensor, maxval: float, integer: bool) -> torch.Tensor:
    """Per image, AugMix's operation strength: U(0.1, severity) * maxval / 10, truncated for integer ones."""
    level = torch.empty(len(u), device=u.device).uniform_(0.1, SEVERITY) * maxval / 10
    return level.trunc() if integer else level


def _signed(level: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.rand_like(level) < 0.5, -level, level)


def autocontrast(u: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to the full range (PIL ``autocontrast``, no cutoff)."""
    lo, hi = u.amin((2, 3), keepdim=True), u.amax((2, 3), keepdim=True)
    return torch.where(hi > lo, (u - lo) / (hi - lo).clamp_min(1e-12), u)


def equalize(u: torch.Tensor) -> torch.Tensor:
    """Histogram equalization per channel over 256 levels, PIL's lookup table."""
    levels = (u * 255).round().long().flatten(2)
    hist = torch.zeros(*levels.shape[:2], 256, device=u.device).scatter_add_(2, levels, torch.ones_like(u).flatten(2))
    last = hist.gather(2, levels.amax(2, keepdim=True))  # count of the highest level present
    step = torch.div(levels.shape[2] - last, 255, rounding_mode="floor")
    below = hist.cumsum(2) - hist
    lut = torch.div(below + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1), rounding_mode="floor")
    out = (lut.clamp_max(255).gather(2, levels) / 255).view_as(u)
    return torch.where((step > 0).unsqueeze(-1), out, u)


def posterize(u: torch.Tensor) -> torch.Tensor:
    """Keep the top 4 - level bits of each 8-bit value."""
    quantum = 2 ** (4 + _level(u, 4, integer=True)).view(-1, 1, 1, 1)
    return torch.div((u * 255).floor(), quantum, rounding_mode="floor") * quantum / 255


def solarize(u: torch.Tensor) -> torch.Tensor:
    """Invert the 8-bit values at or above 256 - level."""
    threshold = (256 - _level(u, 256, integer=True)).view(-1, 1, 1, 1)
    return torch.where(u * 255 >= threshold, 1 - u, u)


def affine(u: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE)``: output pixel (x, y) samples the input at ``matrix @ (x, y, 1)`` (pixel
    coordinates at pixel centres), bilinearly, with zeros outside. ``matrix``: (n, 2, 3)."""
    h, w = u.shape[2:]
    ys, xs = torch.meshgrid(
        torch.arange(h, device=u.device) + 0.5, torch.arange(w, device=u.device) + 0.5, indexing="ij"
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1)
    source = torch.einsum("nij,hwj->nhwi", matrix.to(u.dtype), points)
    grid = source * torch.tensor([2 / w, 2 / h], device=u.device, dtype=u.dtype) - 1
    return F.grid_sample(u, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


Coefficient = float | torch.Tensor


def _matrix(
    u: torch.Tensor,
    a: Coefficient = 1.0,
    b: Coefficient = 0.0,
    c: Coefficient = 0.0,
    d: Coefficient = 0.0,
    e: Coefficient = 1.0,
    f: Coefficient = 0.0,
) -> torch.Tensor:
    """PIL's affine data (a, b, c, d, e, f), scalars or one value per image, as (n, 2, 3) matrices."""
    rows = [torch.as_tensor(v, dtype=u.dtype, device=u.device).expand(len(u)) for v in (a, b, c, d, e, f)]
    return torch.stack(rows, 1).view(-1, 2, 3)


def rotate(u: torch.Tensor) -> torch.Tensor:
    """Rotate about the centre by up to 30 * severity / 10 whole degrees, either way."""
    theta = _signed(_level(u, 30, integer=True)) * math.pi / 180
    cos, sin = theta.cos(), theta.sin()
    cx, cy = u.shape[3] / 2, u.shape[2] / 2
    return affine(u, _matrix(u, cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy))


def shear_x(u: torch.Tensor) -> torch.Tensor:
    return affine(u, _matrix(u, b=_signed(_level(u, 0.3, integer=False))))


def shear_y(u: torch.Tensor) -> torch.Tensor:
    return affine(u, _matrix(u, d=_signed(_level(u, 0.3, integer=False))))


def translate_x(u: torch.Tensor) -> torch.Tensor:
    return affine(u, _matrix(u, c=_signed(_level(u, u.shape[3] / 3, integer=True))))


def translate_y(u: torch.Tensor) -> torch.Tensor:
    return affine(u, _matrix(u, f=_signed(_level(u, u.shape[2] / 3, integer=True))))


OPS: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = (
    autocontrast,
    equalize,
    posterize,
    rotate,
    solarize,
    shear_x,
    shear_y,
    translate_x,
    translate_y,
)


def random_op(u: torch.Tensor) -> torch.Tensor:
    """One uniformly chosen op of :data:`OPS` per image."""
    choice = torch.randint(len(OPS), (len(u),), device=u.device)
    out = u.clone()
    for k, op in enumerate(OPS):
        rows = (choice == k).nonzero().squeeze(1)
        if len(rows):
            out[rows] = op(u[rows])
    return out


class AmplitudePhaseRecombination(TrainingMethod):
    """APR: recombine the Fourier phase of each image with the amplitude of another image (P) or of an
    augmented copy of itself (S)."""

    def __init__(self, prob: float = 0.6, fft: str = "all", variant: str = "p") -> None:
        self.prob, self.fft, self.variant = prob, fft, variant

    def setup_data(self, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        if "s" in self.variant and x.ndim != 4:
            raise ValueError(f"apr: variant {self.variant!r} needs images (N, C, H, W), got shape {tuple(x.shape)}")

    def single(self, x: torch.Tensor) -> torch.Tensor:
        """APR-S on every image of the batch."""
        lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
        scale = (hi - lo).clamp_min(1e-12)
        u = random_op((x - lo) / scale)
        augmented = random_op(u)
        first = (torch.rand(len(x), device=x.device) < 0.5).view(-1, 1, 1, 1)
        mixed = recombine(torch.where(first, u, augmented), torch.where(first, augmented, u), self.fft).clamp(0, 1)
        stop = (torch.rand(len(x), device=x.device) < 0.5).view(-1, 1, 1, 1)
        return torch.where(stop, u, mixed) * scale + lo

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if "s" in self.variant:
            x = self.single(x)
        if "p" not in self.variant or not torch.rand(()) < self.prob:
            return x, y
        partner = x[torch.randperm(len(x), device=x.device)]
        return torch.cat([x, recombine(x, partner, self.fft)]), torch.cat([y, y])


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="augmentation",
            name="apr",
            factory=AmplitudePhaseRecombination,
            params={
                "prob": Float(0.6, 0.0, 1.0, minimum=0, maximum=1),
                "fft": Choice("all", ("all", "spatial")),
                "variant": Choice("p", ("p", "s", "sp")),
            },
        )
    ]
