"""IterNorm: group whitening by Newton iterations instead of an eigendecomposition.

Huang, Zhou, Zhu, Liu, Shao 2019, "Iterative Normalization: Beyond Standardization towards Efficient
Whitening", CVPR 2019, arXiv:1904.03441; official code huangleiBuaa/IterNorm-pytorch (``IterNorm``).

Channels are split into groups of ``group_size`` (D) consecutive channels. Per group, over the
m = N * prod(spatial) positions of the batch:

    mu = mean(x);  xc = x - mu;  Sigma = eps * I + xc xc^T / m          (biased, eps on the diagonal)
    Sigma_N = Sigma / tr(Sigma);  P_0 = I;  P_{k+1} = 1.5 P_k - 0.5 P_k^3 Sigma_N   (k < T)
    out = P_T / sqrt(tr(Sigma)) @ xc                                     (P_T / sqrt(tr) ~ Sigma^-1/2)

then a per-channel affine. Gradients flow through mu, Sigma, the trace and every P_k (autograd here;
the official code writes the backward by hand). For evaluation it keeps exponential moving averages
(momentum 0.1) of the mean and of the whitening matrix itself (not of Sigma). Paper defaults: T = 5,
eps 1e-5, momentum 0.1. T = 5 whitens only partially by design (the paper's trade-off against the
noise of estimating Sigma on a small batch); larger T approaches ZCA whitening.

Group size: ``D = group_size``, halved until it divides C, as the official constructor does (so 24
channels with ``group_size`` 32 whiten in groups of 8, and 16 channels in one group of 16).
The default D = 16 suits narrow search backbones (official: 64 for ImageNet ResNets, the whole
layer up to 512 for CIFAR VGGs). Statistics are computed in float32 at least, also under autocast.
"""

from __future__ import annotations

import torch
from torch import nn

import autonorm
from autonorm import Component, Float, Int


class IterNorm(nn.Module):
    """Iterative group whitening of ``(N, C, *spatial)`` features with running statistics for eval."""

    def __init__(
        self,
        num_channels: int,
        group_size: int = 16,
        iterations: int = 5,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
    ) -> None:
        super().__init__()
        size = max(1, group_size)
        while num_channels % size:
            size //= 2
        self.num_channels, self.group_size, self.groups = num_channels, size, num_channels // size
        self.iterations, self.eps, self.momentum = iterations, eps, momentum
        self.register_buffer("running_mean", torch.zeros(self.groups, size, 1))
        self.register_buffer("running_wm", torch.eye(size).expand(self.groups, size, size).clone())
        # batches averaged so far when ``momentum`` is None (a cumulative average, as BatchNorm's): not saved
        self.register_buffer("num_batches_tracked", torch.tensor(0), persistent=False)
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def reset_running_stats(self) -> None:
        """Back to the statistics of a new layer (as ``BatchNorm.reset_running_stats``; a recomputation of
        the statistics, such as periodic averaging's after a load-back, starts here)."""
        self.running_mean.zero_()
        self.running_wm.copy_(torch.eye(self.group_size).expand_as(self.running_wm))
        self.num_batches_tracked.zero_()

    def whitening_matrix(self, xc: torch.Tensor) -> torch.Tensor:
        """``P_T / sqrt(tr(Sigma))`` for centred groups ``xc`` of shape (G, D, m)."""
        eye = torch.eye(self.group_size, dtype=xc.dtype, device=xc.device).expand(self.groups, -1, -1)
        sigma = torch.baddbmm(eye, xc, xc.transpose(1, 2), beta=self.eps, alpha=1 / xc.shape[-1])
        trace = sigma.diagonal(dim1=1, dim2=2).sum(-1).view(-1, 1, 1)
        sigma_n = sigma / trace
        p = eye
        for _ in range(self.iterations):
            p = torch.baddbmm(p, torch.linalg.matrix_power(p, 3), sigma_n, beta=1.5, alpha=-0.5)
        return p / trace.sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"IterNorm({self.num_channels}) expects (N, C, *spatial), got {tuple(x.shape)}")
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            # (N, C, *s) -> (G, D, N * prod(s)): groups of consecutive channels, every position a sample
            xg = x.to(dtype).transpose(0, 1).reshape(self.groups, self.group_size, -1)
            if self.training:
                mean = xg.mean(-1, keepdim=True)
                wm = self.whitening_matrix(xg - mean)
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    rate = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                    self.running_mean.lerp_(mean.to(self.running_mean.dtype), rate)
                    self.running_wm.lerp_(wm.to(self.running_wm.dtype), rate)
            else:
                mean, wm = self.running_mean.to(dtype), self.running_wm.to(dtype)
            out = torch.bmm(wm, xg - mean)
        out = out.reshape(self.num_channels, x.shape[0], *x.shape[2:]).transpose(0, 1).to(x.dtype)
        if self.weight is not None:
            shape = (1, -1, *[1] * (x.dim() - 2))
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_channels}, group_size={self.group_size}, iterations={self.iterations}, eps={self.eps}"


def iternorm(num_channels: int, group_size: int = 16, iterations: int = 5, momentum: float = 0.1) -> nn.Module:
    """IterNorm (Huang et al. 2019): whitening of channel groups by T Newton iterations, EMA whitening matrix."""
    return IterNorm(num_channels, group_size=group_size, iterations=iterations, momentum=momentum)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="normalization",
            name="iternorm",
            factory=iternorm,
            params={
                "group_size": Int(16, 1, 64, log=True),
                "iterations": Int(5, 1, 7),
                "momentum": Float(0.1, 0.01, 0.5, log=True, minimum=0, maximum=1),
            },
            batch_dependent=True,
        )
    ]
