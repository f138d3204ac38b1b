"""Equi-normalization: Stock, Graham, Gribonval & Jégou, "Equi-normalization of Neural Networks", ICLR 2019,
arXiv:1902.10416 (official code: ``facebookresearch/enorm``, class ``ENorm``).

Not a layer: a step after every SGD step that uses the rescaling symmetry of ReLU networks. Scaling
hidden unit k's incoming weights by d_k > 0 and its outgoing weights by 1 / d_k leaves the function
unchanged; ENorm chooses the d_k to lower the weights' L2 norm. For each balanced hidden layer
between a layer P (incoming) and a layer Q (outgoing), with ``in_k`` the norm of P's output filter k
and ``out_k`` the norm of Q's weights reading channel k,

    d_k = sqrt(out_k / (c * in_k)),   P[k] *= d_k,   Q[:, k] /= d_k,

which makes ``out_k = c * in_k`` for that layer on its own; as a layer's rescaling changes its
neighbours' norms, repeated cycles converge to it for every layer together (with ``c`` = 1, to the
unique minimum-norm parameterization of the function). c > 1 penalizes deep layers (the paper uses
1.1 for its fully convolutional net and 1.2 for its fully connected one; 1.1 here, for conv
backbones). One cycle after each step, every d_k computed from the weights as they were before it
(as the official sweep does); a dead unit (a zero norm) keeps d_k = 1. SGD's momentum buffers are
rescaled inversely, since a gradient scales by 1 / d where its weight scales by d; the official code
supports SGD only, and so does this one.

Which hidden layers are balanced, decided here (the official code takes the list of weights of a plain
feed-forward net and balances every hidden layer but the one feeding the classifier): the model's
containers are traced with ``torch.fx`` (a module without children is one node); a hidden layer
qualifies when all of a conv or linear layer P's output flows, through modules and operations that
hold no parameters or buffers, into exactly one conv or linear layer Q (groups of 1, no bias on P)
that is not the classifier (Q's output does not reach the model's output that way). Each such pair
is then checked on a batch of training data, in eval mode and float64 on a copy of the model: the
output must not change when P's channels and Q's inputs are rescaled, which holds when everything
between them is positively homogeneous and channel-wise (ReLU, max or average pooling, flatten) and
fails across an ELU or a residual sum. So in a ResNet the two convs inside each block are balanced
and the residual stream is not (the paper's extension to ResNets is not implemented). A normalization
between two layers ends a hidden layer's path, so the component requires ``normalization: none``; a
model with nothing to balance (ELU everywhere) makes the trial incompatible.
"""

from __future__ import annotations

from copy import deepcopy

import torch
import torch.fx as fx
from torch import nn

import autonorm
from autonorm import Component, Float, TrainingMethod

_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, _WEIGHT_LAYERS) and getattr(module, "groups", 1) == 1


class _LeafTracer(fx.Tracer):
    """Traces containers only: a module without children is one node, whatever Python its forward runs."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return next(module.children(), None) is None or super().is_leaf_module(module, qualified_name)


def _has_state(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


def candidate_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(P, Q): all of P's output reaches exactly one weight layer Q through modules and operations that
    hold no parameters or buffers, and Q is not a classifier (its output does not reach the model's
    output that way)."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # tracing runs the containers' Python: any failure means "cannot tell"
        raise ValueError(f"enorm: torch.fx cannot trace the model ({type(exc).__name__}: {exc})") from None
    modules = dict(model.named_modules())

    def weight(node: fx.Node) -> nn.Module | None:
        if node.op == "call_module" and _is_weight_layer(modules[node.target]):
            return modules[node.target]
        return None

    def reached(node: fx.Node) -> tuple[set[fx.Node], set[str]]:
        """The weight layers the node's output reaches first; and "output" if it reaches the model's
        output, "other" if it reaches another module with state (a normalization, a fixed head)."""
        layers, ends, seen, todo = set(), set(), set(), list(node.users)
        while todo:
            user = todo.pop()
            if user in seen:
                continue
            seen.add(user)
            if weight(user) is not None:
                layers.add(user)
            elif user.op == "output":
                ends.add("output")
            elif user.op == "call_module" and _has_state(modules[user.target]):
                ends.add("other")
            else:
                todo.extend(user.users)
        return layers, ends

    pairs = []
    for node in graph.nodes:
        p = weight(node)
        if p is None or p.bias is not None:
            continue
        layers, ends = reached(node)
        if len(layers) != 1 or ends:
            continue
        (q_node,) = layers
        q = weight(q_node)
        if "output" in reached(q_node)[1]:  # the classifier's inputs stay unbalanced, as in the official code
            continue
        channels, inputs = p.weight.shape[0], q.weight.shape[1]
        if inputs == channels or (isinstance(q, nn.Linear) and inputs % channels == 0):
            pairs.append((p, q))
    return pairs


def _by_channel(tensor: torch.Tensor, channels: int) -> torch.Tensor:
    """Q's weights (or their momentum) with the inputs from each channel along dim 1: a conv's or a linear
    layer's as they are; a linear layer after a flatten reads each channel's positions as consecutive
    inputs, (outputs, channels, positions)."""
    if tensor.shape[1] == channels:
        return tensor
    return tensor.view(tensor.shape[0], channels, -1)


def _along(dim: int, d: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``d`` shaped to broadcast along dimension ``dim`` of ``like``."""
    return d.view([-1 if i == dim else 1 for i in range(like.ndim)])


class ENorm(TrainingMethod):
    """One equi-normalization cycle after every SGD step (``c``: target ratio of outgoing to incoming norm)."""

    def __init__(self, c: float = 1.1) -> None:
        self.c = c
        self.pairs: list[tuple[nn.Module, nn.Module]] = []

    def setup_data(self, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
        self.sample = x[:64]

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(f"enorm: needs SGD (its momentum buffers are rescaled), not {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.pairs = function_preserving(model, candidate_pairs(model), self.sample)
        del self.sample
        if not self.pairs:
            raise ValueError(
                "enorm: no hidden layer to balance (one needs a conv or linear layer without bias whose output "
                "reaches the next one through ReLU and pooling only: no normalization, residual sum or ELU between)"
            )

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        balancers = [self.balancer(p, q) for p, q in self.pairs]  # all from the weights before the cycle
        for (p, q), d in zip(self.pairs, balancers, strict=True):
            rescale(p, q, d, self.optimizer.state)

    def balancer(self, p: nn.Module, q: nn.Module) -> torch.Tensor:
        """d_k = sqrt(out_k / (c in_k)); 1 for a dead unit (a zero norm)."""
        incoming = torch.linalg.vector_norm(p.weight, dim=list(range(1, p.weight.ndim)))
        columns = _by_channel(q.weight, len(incoming))
        outgoing = torch.linalg.vector_norm(columns, dim=[i for i in range(columns.ndim) if i != 1])
        d = (outgoing / (self.c * incoming)).sqrt()
        return torch.where(torch.isfinite(d) & (d > 0), d, torch.ones_like(d))


def rescale(p: nn.Module, q: nn.Module, d: torch.Tensor, state: dict | None = None) -> None:
    """P's output channel k times d_k and Q's inputs from channel k divided by d_k; their SGD momentum
    buffers (in ``state``) inversely, as their gradients scale."""
    columns = _by_channel(q.weight, len(d))
    p.weight.mul_(_along(0, d, p.weight))
    columns.div_(_along(1, d, columns))
    buffers = state or {}
    if (buffer := buffers.get(p.weight, {}).get("momentum_buffer")) is not None:
        buffer.div_(_along(0, d, buffer))
    if (buffer := buffers.get(q.weight, {}).get("momentum_buffer")) is not None:
        columns = _by_channel(buffer, len(d))
        columns.mul_(_along(1, d, columns))


@torch.no_grad()
def function_preserving(model: nn.Module, pairs: list[tuple[nn.Module, nn.Module]], x: torch.Tensor) -> list:
    """The pairs whose hidden layer can be rescaled (factors in [1/2, 2]) without changing the model's
    output on ``x``, in eval mode and in float64 on one copy of the model: in float32 (TF32 on a GPU)
    the rounding alone can exceed a tight tolerance, and a non-homogeneous operation changes far more."""
    names = {module: name for name, module in model.named_modules()}
    copy = deepcopy(model).to(torch.float64).eval()
    x = x.to(torch.float64)
    before = copy(x)
    tolerance = {"rtol": 1e-9, "atol": 1e-9 * float(before.abs().max())}
    kept = []
    for p, q in pairs:
        p64, q64 = copy.get_submodule(names[p]), copy.get_submodule(names[q])
        saved = p64.weight.clone(), q64.weight.clone()
        d = 2 ** (torch.rand(len(saved[0]), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1)
        rescale(p64, q64, d.to(x.device))
        if torch.allclose(copy(x), before, **tolerance):
            kept.append((p, q))
        p64.weight.copy_(saved[0])
        q64.weight.copy_(saved[1])
    return kept


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="training",
            name="enorm",
            factory=ENorm,
            params={"c": Float(1.1, 1.0, 1.5, minimum=1.0)},  # the official README: c equal to or slightly above 1
            requires=("normalization:none", "train.optimizer:sgd"),
        )
    ]
