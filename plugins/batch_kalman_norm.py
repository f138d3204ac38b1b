"""Batch Kalman Normalization: batch statistics corrected by a prior predicted from the layer below.

Wang, Peng, Luo, Wang, Lin 2018, "Batch Kalman Normalization: Towards Training Deep Neural Networks
with Micro-Batches", arXiv:1802.03133; official code wanggrun/Kalman-Normalization (TensorFlow,
``KalmanNorm/kalman_norm.py``, wiring in ``KalmanNorm/cifar-kn-microbatch.py``).

Per channel, the noisy statistics of the batch are combined with a prior estimate with the prior
weight ``p`` (the official ``p_rate``), as the moments of the mixture
``p * N(m_prior, v_prior) + (1 - p) * N(m_batch, v_batch)``:

    mean = p * m_prior + (1 - p) * m_batch
    var  = p * v_prior + (1 - p) * v_batch + p * (1 - p) * (m_batch - m_prior)^2
    out  = gamma * (x - mean) / sqrt(var + eps) + beta

with the official guard: where ``mean_c(v_prior / v_batch) >= 100`` the prior is ignored.

The prior (official code): layer k's prior is predicted from layer k-1's corrected statistics
``(mean, var)`` (of its input, before normalization and affine) through the conv between them: one
sample ``s ~ N(mean, var)`` per channel over the conv input's spatial grid, drawn afresh every step,
then ``conv(ReLU(s))`` with the conv's own weights, stride and padding; its per-channel spatial mean
and biased variance are ``(m_prior, v_prior)``. Gradients flow through the prior into the conv weights
and the lower layers' statistics. Where two paths are added (residual blocks) the statistics of the
sum are the sums of the paths' statistics. The first layer (input from the data) has no prior: BN.

Wiring: the component's ``conv`` factory builds :class:`KalmanConv`. In training it finds the
corrected statistics of its input by walking the input's autograd graph: the input must come out of a
ReLU, from a :class:`BatchKalmanNorm` output or a sum of such (through ReLUs along identity
shortcuts); the prediction is attached to the conv output's autograd node, where the norm that
follows reads it. Where no statistics are found (another activation, pooling, a scaled residual,
``torch.no_grad``) the next layer is plain BN: with ``stochastic_depth``, the first layer of every block
after a gated one (a kept branch is divided by its survival probability, a dropped one is absent).
Under batch-statistics routing (pure-noise images, :mod:`autonorm.routing`) the natural rows'
statistics and the priors pass through the routed layers, so the natural rows are normalized as they
would be alone.

Open choices (u): a post-activation identity shortcut carries ``ReLU(sum)``; its statistics are taken
as those of the sum before the ReLU (the official pre-activation ResNet adds the stream unchanged).
Batch statistics and running statistics are BN's (biased variance over N and the spatial dims;
running averages of the *combined* statistics, with the unbiased batch variance, momentum 0.1);
evaluation is BN with the running statistics. p = 0 is BN exactly. The official micro-batch emulation
(normalizing splits of a batch separately, one prior per split) is left out: autonorm trains at real
batch sizes, which is the official large-batch setting (``split_num=1``), so the default is its
p = 0.05. The official micro-batch runs (splits of 2 samples) use p = 0.9: set it, or search it, for
batches of a few samples (on a batch of 64 digits, the 15 layers of a fresh depth-14 resnet give
channel means up to 2.4 from zero and variances from 0.14 to 9.6 at p = 0.9; at 0.05, up to 0.09
and from 0.68 to 1.05). eps 1e-5.
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
#: autograd-node metadata keys: corrected statistics of a BKN output / predicted prior of a conv output.
STATISTICS = "batch_kalman.statistics"
PRIOR = "batch_kalman.prior"

Statistics = tuple[torch.Tensor, torch.Tensor]


def kalman_statistics(
    batch_mean: torch.Tensor, batch_var: torch.Tensor, prior_mean: torch.Tensor, prior_var: torch.Tensor, p
) -> Statistics:
    """Mean and variance of the mixture ``p * N(prior) + (1 - p) * N(batch)``, per channel."""
    mean = p * prior_mean + (1 - p) * batch_mean
    var = p * prior_var + (1 - p) * batch_var + p * (1 - p) * (batch_mean - prior_mean) ** 2
    return mean, var


def _statistics(node) -> Statistics | None:
    """Corrected statistics at an autograd node: a BKN output, a sum of such, through ReLUs."""
    if node is None:
        return None
    found = node.metadata.get(STATISTICS)
    if found is not None:
        return found
    name = node.name()
    if name == "ReluBackward0":
        found = _statistics(node.next_functions[0][0])
    elif name == "AddBackward0":
        parts = [_statistics(child) for child, _ in node.next_functions]
        if all(p is not None and p[0].shape == parts[0][0].shape for p in parts):
            found = (sum(p[0] for p in parts), sum(p[1] for p in parts))
    if found is not None:
        node.metadata[STATISTICS] = found  # each sum is formed once per forward
    return found


def input_statistics(x: torch.Tensor) -> Statistics | None:
    """Corrected statistics of the tensor that went through the ReLU producing ``x``, or None."""
    if x.grad_fn is None or x.grad_fn.name() != "ReluBackward0":
        return None
    return _statistics(x.grad_fn.next_functions[0][0])


class _KalmanConv:
    """Mixin: in training, predict the next layer's statistics by the transition conv(ReLU(sample))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.weight, self.bias)
        if self.training and out.grad_fn is not None:
            stats = input_statistics(x)
            if stats is not None and stats[0].shape == (x.shape[1],):
                out.grad_fn.metadata[PRIOR] = self.predict(x, *stats)
        return out

    def predict(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> Statistics:
        """Per-channel mean and biased variance of ``conv(ReLU(s))``, ``s ~ N(mean, var)`` shaped like one input."""
        shape = (1, -1, *[1] * (x.dim() - 2))
        noise = torch.randn((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
        sample = torch.relu(mean.view(shape) + var.sqrt().view(shape) * noise)
        y = self._conv_forward(sample, self.weight, self.bias)
        var_y, mean_y = torch.var_mean(y, dim=[0, *range(2, y.dim())], correction=0)
        return mean_y, var_y


class KalmanConv1d(_KalmanConv, nn.Conv1d):
    """``nn.Conv1d`` that hands the next BKN layer its predicted statistics."""


class KalmanConv2d(_KalmanConv, nn.Conv2d):
    """``nn.Conv2d`` that hands the next BKN layer its predicted statistics."""


#: The transition conv for 1-D or 2-D input (the ``Component.conv`` factory signature).
kalman_conv = autonorm.conv_factory(KalmanConv1d, KalmanConv2d)


class BatchKalmanNorm(BatchNorm):
    """BatchNorm whose training statistics are mixed with weight ``p`` with the prior of the conv before it."""

    def __init__(self, num_channels: int, prior_weight: float = 0.05, eps: float = 1e-5, momentum: float = 0.1) -> None:
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
        batch_var, batch_mean = torch.var_mean(x, dim=dims, correction=0)
        prior = x.grad_fn.metadata.get(PRIOR) if x.grad_fn is not None else None
        if prior is None or prior[0].shape != batch_mean.shape:
            prior, p = (batch_mean, batch_var), 0.0  # first layer, or no prior found: BN
        else:
            p = torch.where((prior[1] / batch_var).mean() >= GUARD_RATIO, 0.0, self.prior_weight)
        mean, var = kalman_statistics(batch_mean, batch_var, *prior, p)
        with torch.no_grad():
            # running averages of the combined statistics; batch variance unbiased in them, as in BN
            _, running_var = kalman_statistics(batch_mean, batch_var * count / (count - 1), *prior, p)
            self.num_batches_tracked.add_(1)
            # momentum None: the cumulative average, as in BatchNorm (torch's update_bn sets it so)
            rate = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean, rate)
            self.running_var.lerp_(running_var, rate)
        # gamma * (x - mean) / sqrt(var + eps) + beta as one scale and shift: only x is saved for backward
        scale = self.weight * torch.rsqrt(var + self.eps)
        shape = (1, -1, *[1] * (x.dim() - 2))
        out = torch.addcmul((self.bias - mean * scale).view(shape), x, scale.view(shape))
        if out.grad_fn is not None:
            out.grad_fn.metadata[STATISTICS] = (mean, var)  # for the transition to the next layer
        return out


def batch_kalman(num_channels: int, prior_weight: float = 0.05, momentum: float = 0.1) -> nn.Module:
    """Batch Kalman Normalization (Wang et al. 2018): batch statistics mixed with a predicted prior, weight p."""
    return BatchKalmanNorm(num_channels, prior_weight=prior_weight, momentum=momentum)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="batch_kalman",
            factory=batch_kalman,
            conv=kalman_conv,
            params={
                "prior_weight": Float(0.05, 0.0, 0.95, minimum=0, maximum=1),
                "momentum": Float(0.1, 0.01, 0.5, log=True, minimum=0, maximum=1),
            },
            batch_dependent=True,
        )
    ]
