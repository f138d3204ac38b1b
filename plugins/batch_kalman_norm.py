"""Batch Kalman Normalization: batch statistics corrected by a prior estimate, for micro-batches.

Wang, Peng, Luo, Wang, Lin 2018, "Batch Kalman Normalization: Towards Training Deep Neural Networks
with Micro-Batches", arXiv:1802.03133; official code wanggrun/Kalman-Normalization (TensorFlow,
``KalmanNorm/kalman_norm.py``).

Per channel, the noisy statistics of the (micro-)batch are combined with a prior estimate, with the
prior weight ``p`` (the official code's ``p_rate``), as the moments of the mixture
``p * N(m_prior, v_prior) + (1 - p) * N(m_batch, v_batch)``:

    mean = p * m_prior + (1 - p) * m_batch
    var  = p * v_prior + (1 - p) * v_batch + p * (1 - p) * (m_batch - m_prior)^2
    out  = gamma * (x - mean) / sqrt(var + eps) + beta

with the official guard: where ``mean_c(v_prior / v_batch) >= 100`` the prior is ignored. Batch
statistics are BN's (biased variance over N and the spatial dims); evaluation uses running averages
of the *combined* statistics, like BN. p = 0 is batch normalization exactly.

Decision (u): the prior. In the paper and the official code each layer's prior is the previous
layer's corrected statistics propagated through the conv between them (a sample drawn from them,
passed through ReLU and the shared conv weights): graph-level wiring that a norm built by
``factory(num_channels)`` cannot see. This per-layer form takes the layer's own running estimate of
the combined statistics as the prior: like the official prior, it is a less noisy estimate made from
more than the current micro-batch, here carried along training steps instead of along layers. Unlike
the official prior, no gradient flows through it. Because the running estimate starts at (0, 1), the
prior weight is scaled by the share of the estimate that comes from data, ``1 - (1 - momentum)^t``
after t steps (t = ``num_batches_tracked``), so early steps rely on batch statistics. The official
micro-batch emulation (normalizing splits of a batch separately) is left out: autonorm searches over
real batch sizes. Defaults: p = 0.9 (official, micro-batches of 2; 0.05 for large batches), eps 1e-5,
momentum 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autonorm_plugins.baseline_norms import BatchNorm
from torch import nn

import autonorm
from autonorm import Component, Float

#: Above this mean ratio of prior to batch variance the prior is not used (official guard).
GUARD_RATIO = 100.0


def kalman_statistics(
    batch_mean: torch.Tensor, batch_var: torch.Tensor, prior_mean: torch.Tensor, prior_var: torch.Tensor, p
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the mixture ``p * N(prior) + (1 - p) * N(batch)``, per channel."""
    mean = p * prior_mean + (1 - p) * batch_mean
    var = p * prior_var + (1 - p) * batch_var + p * (1 - p) * (batch_mean - prior_mean) ** 2
    return mean, var


class BatchKalmanNorm(BatchNorm):
    """BatchNorm whose training statistics are mixed with a prior (its running estimate) with weight ``p``."""

    def __init__(self, num_channels: int, prior_weight: float = 0.9, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_channels, eps=eps, momentum=momentum)
        if not 0.0 <= prior_weight <= 1.0:
            raise ValueError(f"batch_kalman: prior_weight must be in [0, 1], got {prior_weight}")
        self.prior_weight = prior_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        count = x.numel() // x.shape[1]
        if count < 2:
            raise ValueError(f"batch_kalman needs more than one value per channel in training, got {tuple(x.shape)}")
        batch_var, batch_mean = torch.var_mean(x, dim=dims, unbiased=False)
        prior_mean, prior_var = self.running_mean.clone(), self.running_var.clone()
        informed = 1 - (1 - self.momentum) ** self.num_batches_tracked.to(x.dtype)
        guard = (prior_var / batch_var).mean() >= GUARD_RATIO
        p = torch.where(guard, torch.zeros_like(informed), self.prior_weight * informed)
        mean, var = kalman_statistics(batch_mean, batch_var, prior_mean, prior_var, p)
        with torch.no_grad():
            # running averages of the combined statistics; batch variance unbiased in them, as in BN
            _, running_var = kalman_statistics(batch_mean, batch_var * count / (count - 1), prior_mean, prior_var, p)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(running_var, self.momentum)
            self.num_batches_tracked.add_(1)
        # gamma * (x - mean) / sqrt(var + eps) + beta as one scale and shift: only x is saved for backward
        scale = self.weight * torch.rsqrt(var + self.eps)
        shape = (1, -1, *[1] * (x.dim() - 2))
        return torch.addcmul((self.bias - mean * scale).view(shape), x, scale.view(shape))


def batch_kalman(num_channels: int, prior_weight: float = 0.9, momentum: float = 0.1) -> nn.Module:
    """Batch Kalman Normalization (Wang et al. 2018): batch statistics mixed with a prior estimate, weight p."""
    return BatchKalmanNorm(num_channels, prior_weight=prior_weight, momentum=momentum)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="batch_kalman",
            factory=batch_kalman,
            params={"prior_weight": Float(0.9, 0.0, 0.95), "momentum": Float(0.1, 0.01, 0.5, log=True)},
            batch_dependent=True,
        )
    ]
