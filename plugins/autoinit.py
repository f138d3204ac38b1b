"""AutoInit: Bingham & Miikkulainen 2022/2023, "AutoInit: Analytic Signal-Preserving Weight Initialization for
Neural Networks", AAAI 2023, arXiv:2109.08958 (official code, for Keras: cognizant-ai-labs/autoinit).

The mean and variance of the signal are tracked analytically through the network's graph, layer by layer,
and every conv or linear layer is initialized so that its output has mean 0 and variance ``signal_variance``
whatever came in: ``Var(W) = signal_variance / (fan_in * E[x^2])`` with ``E[x^2] = var_in + mean_in^2``
(zero biases). The estimators, as in the official code:

- conv, linear: output ``(0, signal_variance)``, after setting the weights as above;
- normalization layers (batch, group, layer, instance; scales reset to 1, shifts to 0): ``(0, 1)``;
- elementwise activations: the moments of ``f(X)`` for ``X ~ N(mean, var)``, by numerical integration;
- residual addition: means and variances add (the terms are taken as independent);
- average pooling over ``k`` values, global and adaptive average pooling included: ``(mean, var / k)``
  (the values taken as independent); max pooling: Monte Carlo over ``k`` Gaussians;
- dropout: ``var / (1 - p)``; identity, flatten and reshapes pass the signal through.

A module or operation without an estimator passes mean and variance through unchanged, with a warning that
names it (the official code does the same). A model that :mod:`torch.fx` cannot trace gets He init, with a
warning. The graph is traced with every module that has no submodules as a leaf.

Choices made here (u):

- weights are drawn from an untruncated normal (the official default is a truncated one of the same
  variance);
- the input is taken as mean 0, variance 1 (autonorm standardizes the data per channel) unless a sample
  batch is given, whose mean and variance are then used, as are its shapes: for the window of global and
  adaptive pooling (one value without a sample), and for a conv's zero padding, which scales the second
  moment of its output by the mean fraction of kernel taps inside the input, as the official estimator for
  zero-padding layers does (on 8x8 digits this fraction is far from 1).
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from autonorm_plugins.baseline_pooling import GlobalAvgPool, GlobalMaxPool
from autonorm_plugins.kaiming import kaiming
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

import autonorm
from autonorm import Component, Float

#: A signal's (mean, variance).
Moments = tuple[float, float]

_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardswish, nn.Hardtanh, nn.Hardsigmoid,
)  # fmt: skip
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_ELEMENTWISE_FUNCTIONS = (torch.relu, F.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid)
_PASS_FUNCTIONS = (torch.flatten, torch.reshape, operator.getitem, getattr)
_PASS_METHODS = ("flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze", "permute", "transpose")

_GRID = torch.linspace(-12.0, 12.0, 48_001, dtype=torch.float64)
_GRID_WEIGHTS = torch.exp(-0.5 * _GRID**2) / math.sqrt(2 * math.pi) * (_GRID[1] - _GRID[0])


def mapped_moments(f: Callable[[torch.Tensor], torch.Tensor], mean: float, var: float) -> Moments:
    """Mean and variance of ``f(X)`` for ``X ~ N(mean, var)`` (a fine grid over +-12 standard deviations,
    accurate for functions with kinks such as ReLU)."""
    with torch.no_grad():
        y = f((mean + math.sqrt(var) * _GRID).view(1, 1, -1)).view(-1).double()
    m1, m2 = float((_GRID_WEIGHTS * y).sum()), float((_GRID_WEIGHTS * y * y).sum())
    return m1, max(m2 - m1 * m1, 0.0)


def _max_moments(mean: float, var: float, k: int) -> Moments:
    gen = torch.Generator().manual_seed(0)
    samples = mean + math.sqrt(var) * torch.randn(100_000, k, generator=gen, dtype=torch.float64)
    top = samples.amax(1)
    return float(top.mean()), float(top.var())


class _LeafTracer(fx.Tracer):
    """Every module without submodules is a leaf, so estimators see modules, not their internals."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return next(m.children(), None) is None or super().is_leaf_module(m, qualname)


class _Propagation:
    """Walks a traced graph in order, initializing weighted layers and tracking each node's moments."""

    def __init__(self, model: nn.Module, signal_variance: float) -> None:
        self.model = model
        self.signal_variance = signal_variance
        self.modules = dict(model.named_modules())
        self.warned: set[str] = set()

    def warn(self, what: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            warnings.warn(f"autoinit: no estimator for {what}; mean and variance pass through unchanged", stacklevel=4)

    def run(self, graph: fx.Graph, input_moments: Moments) -> dict[fx.Node, Moments]:
        moments: dict[fx.Node, Moments] = {}
        for node in graph.nodes:
            inputs = [moments[a] for a in node.all_input_nodes if a in moments]
            if node.op == "placeholder":
                moments[node] = input_moments
            elif node.op == "call_module":
                moments[node] = self.module(node, self.modules[node.target], inputs[0])
            elif node.op == "call_function":
                result = self.function(node, inputs)
                if result is not None:
                    moments[node] = result
            elif node.op == "call_method":
                moments[node] = self.method(node, inputs[0])
        return moments

    def module(self, node: fx.Node, m: nn.Module, x: Moments) -> Moments:
        mean, var = x
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            fan_in = m.weight[0].numel() * _in_bounds_fraction(m, node)
            std = math.sqrt(self.signal_variance / (fan_in * (var + mean * mean)))
            with torch.no_grad():
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
            return 0.0, self.signal_variance
        if isinstance(m, _NORMS):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            return 0.0, 1.0
        if isinstance(m, _ELEMENTWISE):
            return mapped_moments(m, mean, var)
        if isinstance(m, (nn.Identity, nn.Flatten)):
            return x
        if isinstance(m, nn.Dropout):
            return mean, var / (1.0 - m.p)
        if isinstance(m, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd)):
            k = _window(m)
            return (mean, var / k) if isinstance(m, nn.modules.pooling._AvgPoolNd) else _max_moments(mean, var, k)
        if isinstance(m, (GlobalAvgPool, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            return mean, var / _pooled_count(node)
        if isinstance(m, GlobalMaxPool):
            return _max_moments(mean, var, _spatial_size(node))
        self.warn(f"module {type(m).__name__} ({node.target})")
        return x

    def function(self, node: fx.Node, inputs: list[Moments]) -> Moments | None:
        fn = node.target
        if fn in (operator.add, torch.add) and len(inputs) == 2:
            return inputs[0][0] + inputs[1][0], inputs[0][1] + inputs[1][1]
        if fn in (operator.mul, torch.mul) and len(inputs) == 1:
            const = next(a for a in node.args if not isinstance(a, fx.Node))
            return inputs[0][0] * const, inputs[0][1] * const * const
        if fn in _ELEMENTWISE_FUNCTIONS and len(inputs) == 1:
            return mapped_moments(fn, *inputs[0])
        if not inputs:
            return None
        if fn not in _PASS_FUNCTIONS:
            self.warn(f"function {getattr(fn, '__name__', fn)}")
        return inputs[0]

    def method(self, node: fx.Node, x: Moments) -> Moments:
        if node.target not in _PASS_METHODS:
            self.warn(f"method .{node.target}()")
        return x


#: Spatial dimensions of the pooling layers, whose ``kernel_size`` may be one int for all of them.
_POOL_DIMS = {
    nn.AvgPool1d: 1, nn.MaxPool1d: 1, nn.AvgPool2d: 2, nn.MaxPool2d: 2, nn.AvgPool3d: 3, nn.MaxPool3d: 3,
}  # fmt: skip


def _window(m: nn.Module) -> int:
    """The number of values a pooling window covers (``AvgPool2d(2)``: 4), known from its type without a
    sample batch."""
    size = m.kernel_size
    if isinstance(size, tuple):
        return math.prod(size)
    dims = next((d for cls, d in _POOL_DIMS.items() if isinstance(m, cls)), 1)
    return size**dims


def _in_bounds_fraction(m: nn.Module, node: fx.Node) -> float:
    """The mean fraction of a conv's kernel taps that fall inside its zero-padded input (1 when shapes are
    unknown); zero padding scales the second moment of the output by it, as AutoInit's ZeroPadding estimator."""
    meta = node.args[0].meta.get("tensor_meta")
    if not isinstance(m, nn.modules.conv._ConvNd) or meta is None or m.padding == (0,) * len(m.kernel_size):
        return 1.0
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(m.kernel_size) - 1]
    ones = torch.ones(1, 1, *meta.shape[2:], dtype=torch.float64)
    taps = conv(ones, torch.ones(1, 1, *m.kernel_size, dtype=torch.float64), None, m.stride, m.padding, m.dilation)
    return float(taps.mean()) / math.prod(m.kernel_size)


def _spatial_size(node: fx.Node) -> int:
    """Values per channel that a global pooling node reduces (1 when shapes are unknown)."""
    meta = node.args[0].meta.get("tensor_meta")
    return math.prod(meta.shape[2:]) if meta is not None else 1


def _pooled_count(node: fx.Node) -> int:
    """Values that a global or adaptive average pooling node averages into each output value (1 when shapes
    are unknown): input positions over output positions."""
    meta = node.meta.get("tensor_meta")
    return _spatial_size(node) // math.prod(meta.shape[2:]) if meta is not None else 1


def autoinit(model: nn.Module, sample_batch: torch.Tensor | None = None, signal_variance: float = 1.0) -> None:
    """Set each conv and linear layer's weight variance so its output has mean 0 and variance
    ``signal_variance``, from the analytically tracked moments of its input (Bingham & Miikkulainen).

    Data-free; a ``sample_batch`` only supplies the input's mean, variance and shapes.
    """
    kaiming(model)  # layers the graph never reaches keep He init
    try:
        graph_module = fx.GraphModule(model, _LeafTracer().trace(model))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: fall back, and say so
        warnings.warn(
            f"autoinit: the model cannot be traced ({type(exc).__name__}: {exc}); using He init", stacklevel=2
        )
        return
    input_moments = (0.0, 1.0)
    if sample_batch is not None:
        was_training = model.training
        with torch.no_grad():
            ShapeProp(graph_module.eval()).propagate(sample_batch[:2])  # eval: no running statistics change
        model.train(was_training)
        input_moments = (float(sample_batch.mean()), float(sample_batch.var()))
    _Propagation(model, signal_variance).run(graph_module.graph, input_moments)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="initializer",
            name="autoinit",
            factory=autoinit,
            params={"signal_variance": Float(1.0, 0.25, 4.0, log=True)},
        )
    ]
