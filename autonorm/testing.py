"""Contract checks a plugin author runs on their own component: ``check_component(component)``.

A normalization, activation, pooling or head component is built from its factory with its default
hyperparameters and checked on 1-D ``(N, C, L)`` and 2-D ``(N, C, H, W)`` input (a head on
``(N, F)``). The checks, each named in the report and in the error:

- ``shape_dtype``: the output has the declared shape (a normalization keeps its input's shape, an
  activation scales channels by ``channel_ratio``, pooling gives ``(N, C)``, a head ``(N, classes)``)
  and the input's dtype.
- ``gradients``: gradients reach the input and every trainable parameter, finite and not all zero.
- ``batch_independence``: in eval mode every component gives each sample the same output whatever
  the rest of the batch. In train mode so does a component that declares ``batch_dependent=False``;
  one that declares ``batch_dependent=True`` may use the batch in training.
- ``batch_size_1``: a batch of one works (finite output of the right shape) in train and eval mode,
  or fails in train mode with a ``ValueError``/``RuntimeError`` carrying a message.
- ``eval_deterministic``: the eval output does not change with the random seed (the other checks fix
  it, so noise left on in evaluation would pass them).
- ``state_dict``: a fresh instance loaded with the state dict of a trained, perturbed one gives the
  same eval output.
- ``float64``, ``bfloat16``, ``float16``: each dtype the component declares in ``Component.dtypes``
  (default float32, float64, bfloat16): a copy converted with ``module.to(dtype)`` runs forward and
  backward in train and eval mode with output and input gradient of that dtype, finite, and close to
  the same computation in float32 (relative error within the dtype's precision).

A normalization that brings its own activation (``own_activation``), its own norm-activation pair
(``pair``) or its own convolution (``conv``) has those checked too, as ``own_activation/...``,
``pair/...`` and ``conv/...``.

A downsampling is built as ``factory(layers, C, 2C)`` from plain layers (conv, a batch-independent
norm, ReLU) and given the same checks (of the dtypes, float64 only); its output has ``2C`` channels
and every spatial size halved, rounding up. An initializer is run as ``init(model, sample_batch)``
on a freshly built ResNet-8 (BatchNorm, ReLU) for 1-D and 2-D input, once without a sample batch
and once with one (and its labels, where its signature names ``sample_labels``):

- ``runs``: it completes.
- ``deterministic``: two runs from the same torch seed give identical parameters and buffers.
- ``finite_weights``: every parameter and buffer is finite afterwards.
- ``finite_outputs``: the model's train and eval outputs are finite and of shape ``(N, classes)``.

>>> from autonorm.testing import check_component
>>> report = check_component("groupnorm", kind="normalization")
>>> report.ok
True
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from autonorm.build import Layers
from autonorm.errors import SpecError
from autonorm.registry import Component, Registry, get_registry

__all__ = ["CHECKED_KINDS", "CheckResult", "ContractError", "ContractReport", "check_component"]

#: The kinds :func:`check_component` knows how to check.
CHECKED_KINDS = ("normalization", "activation", "pooling", "head", "downsampling", "initializer")

#: Checks run in float32; each declared dtype other than float32 adds a check named after it.
_CHECKS = ("shape_dtype", "gradients", "batch_independence", "batch_size_1", "eval_deterministic", "state_dict")


@dataclass(frozen=True)
class CheckResult:
    """One named check on one input layout: passed, or failed with the reason."""

    name: str
    passed: bool
    message: str = ""


@dataclass
class ContractReport:
    """Every check run on one component."""

    component: str
    kind: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def raise_if_failed(self) -> None:
        """Raise :class:`ContractError` naming every failed check."""
        if not self.ok:
            raise ContractError(self)

    def __str__(self) -> str:
        lines = [f"{self.kind} {self.component!r}:"]
        lines += [
            f"  {'passed' if r.passed else 'FAILED'}  {r.name}{': ' + r.message if r.message else ''}"
            for r in self.results
        ]
        return "\n".join(lines)


class ContractError(AssertionError):
    """A component broke its contract; :attr:`checks` names the failed checks."""

    def __init__(self, report: ContractReport) -> None:
        self.report = report
        self.checks = [r.name for r in report.failed]
        details = "; ".join(f"{r.name}: {r.message}" for r in report.failed)
        super().__init__(f"{report.kind} {report.component!r} failed {', '.join(self.checks)} ({details})")


class _CheckFailed(Exception):
    pass


def check_component(
    component: Component | str | Callable[..., nn.Module],
    *,
    kind: str | None = None,
    params: Mapping[str, Any] | None = None,
    batch_dependent: bool | None = None,
    channel_ratio: float | None = None,
    dtypes: Sequence[str] | None = None,
    channels: int = 16,
    registry: Registry | None = None,
    raise_on_failure: bool = True,
) -> ContractReport:
    """Run the contract checks on a component and return the report.

    Args:
        component: a :class:`Component`, a registered name (give ``kind``), or a bare factory with the
            signature of its kind (give ``kind``; see :mod:`autonorm.build`).
        kind: the component's kind; required for a name or a bare factory.
        params: hyperparameters for the factory (default: the component's declared defaults).
        batch_dependent: overrides the declaration (a bare factory defaults to False).
        channel_ratio: activations only: overrides the declaration (a bare factory defaults to 1).
        dtypes: overrides the declared ``Component.dtypes`` (a bare factory gets the default).
        channels: channels (features, for a head) of the test input; 16 splits into the usual groups.
        registry: where names are looked up (default: every installed plugin).
        raise_on_failure: raise :class:`ContractError` naming the failed checks (default), or only
            return the report.
    """
    comp = _resolve(component, kind, registry)
    if dtypes is not None:
        comp = replace(comp, dtypes=tuple(dtypes))
    if comp.kind not in CHECKED_KINDS:
        raise SpecError(
            f"{comp.name!r} is a {comp.kind} component, which has no contract to check; "
            f"check-plugin checks the kinds {', '.join(CHECKED_KINDS)}"
        )
    factory = comp.bind(params)
    dependent = comp.batch_dependent if batch_dependent is None else batch_dependent
    ratio = comp.channel_ratio if channel_ratio is None else channel_ratio
    report = ContractReport(comp.name, comp.kind)
    if comp.kind in ("downsampling", "initializer"):
        if comp.kind == "downsampling":
            _check_downsampling(report, factory, dependent, channels, comp.dtypes)
        else:
            _check_initializer(report, factory)
        if raise_on_failure:
            report.raise_if_failed()
        return report
    _check_all(report, "", comp.kind, factory, dependent, ratio, channels, comp.dtypes)
    if comp.kind == "normalization" and comp.own_activation is not None:
        own_activation = comp.bind_own_activation(params)
        _check_all(report, "own_activation/", "activation", own_activation, dependent, 1.0, channels, comp.dtypes)
    if comp.kind == "normalization" and comp.pair is not None:
        _check_all(report, "pair/", "normalization", comp.bind_pair(params), dependent, 1.0, channels, comp.dtypes)
    if comp.kind == "normalization" and comp.conv is not None:
        _check_conv(report, comp.conv, channels)
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _resolve(component: Component | str | Callable[..., nn.Module], kind: str | None, registry: Registry | None):
    if isinstance(component, Component):
        return component
    if kind is None:
        raise SpecError("give the kind of the component to check")
    if isinstance(component, str):
        try:
            return (registry or get_registry()).get(kind, component)
        except KeyError as exc:
            raise SpecError(exc.args[0]) from None
    return Component(kind=kind, name=getattr(component, "__name__", repr(component)), factory=component)


# ---------------------------------------------------------------- inputs and expected outputs


def _layouts(kind: str) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of the test inputs, without batch and channel dims."""
    return {"(N,F)": ()} if kind == "head" else {"(N,C,L)": (12,), "(N,C,H,W)": (6, 5)}


def _make(kind: str, factory: Callable[..., nn.Module], channels: int) -> nn.Module:
    if kind == "pooling":
        return factory()
    if kind == "head":
        return factory(channels, _NUM_CLASSES)
    return factory(channels)


_NUM_CLASSES = 5


def _expected_shape(kind: str, x: torch.Tensor, ratio: float) -> tuple[int, ...]:
    n, c, *spatial = x.shape
    if kind == "activation":
        return (n, round(c * ratio), *spatial)
    if kind == "pooling":
        return (n, c)
    if kind == "head":
        return (n, _NUM_CLASSES)
    if kind == "downsampling":
        return (n, 2 * c, *(math.ceil(s / 2) for s in spatial))
    return tuple(x.shape)


def _input(batch: int, channels: int, spatial: tuple[int, ...], seed: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *spatial, generator=gen) * 2 + 0.5).to(dtype)


# ---------------------------------------------------------------- the checks


def _check_all(report, prefix, kind, factory, dependent, ratio, channels, dtypes=("float32", "float64")) -> None:
    checks = [*_CHECKS, *(d for d in dtypes if d != "float32")]
    for layout, spatial in _layouts(kind).items():
        _check_layout(report, prefix, kind, factory, layout, spatial, checks, dependent, ratio, channels)


def _check_layout(report, prefix, kind, factory, layout, spatial, checks, dependent, ratio, channels) -> None:
    """Each of ``checks`` on a fresh module from ``factory``, for one input layout."""
    for check in checks:

        def run(check: str = check) -> None:
            torch.manual_seed(0)
            module = _make(kind, factory, channels)
            _RUN[check](module, kind, factory, spatial, channels, dependent, ratio)

        _record(report, f"{prefix}{check}{layout}", run)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _CheckFailed(message)


def _forward(module: nn.Module, x: torch.Tensor, train: bool, seed: int = 0) -> torch.Tensor:
    """The output of a copy of ``module`` (state updates stay in the copy), with a fixed RNG."""
    module = copy.deepcopy(module).train(train)
    torch.manual_seed(seed)
    return module(x)


def _check_shape_dtype(module, kind, factory, spatial, channels, dependent, ratio) -> None:
    x = _input(6, channels, spatial, 1)
    for train in (True, False):
        out = _forward(module, x, train)
        mode = "train" if train else "eval"
        _require(isinstance(out, torch.Tensor), f"{mode} output is a {type(out).__name__}, not a tensor")
        expected = _expected_shape(kind, x, ratio)
        _require(tuple(out.shape) == expected, f"{mode} output shape {tuple(out.shape)}, expected {expected}")
        _require(out.dtype == x.dtype, f"{mode} output dtype {out.dtype}, expected {x.dtype}")
        _require(bool(torch.isfinite(out).all()), f"{mode} output is not finite")


def _check_gradients(module, kind, factory, spatial, channels, dependent, ratio) -> None:
    module.train()
    x = _input(6, channels, spatial, 2).requires_grad_()
    out = module(x)
    _require(out.requires_grad, "no gradient reaches the input (the output is detached from the graph)")
    # a random weighting: the plain sum of a normalized output has zero gradient by construction
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * weights).sum().backward()
    _require(x.grad is not None, "no gradient reaches the input")
    _require(bool(torch.isfinite(x.grad).all()), "the input gradient is not finite")
    _require(bool(x.grad.abs().sum() > 0), "the input gradient is zero everywhere")
    for pname, p in module.named_parameters():
        if not p.requires_grad:
            continue
        _require(p.grad is not None, f"no gradient reaches parameter {pname!r}")
        _require(bool(torch.isfinite(p.grad).all()), f"the gradient of parameter {pname!r} is not finite")
        _require(bool(p.grad.abs().sum() > 0), f"the gradient of parameter {pname!r} is zero everywhere")


def _check_batch_independence(module, kind, factory, spatial, channels, dependent, ratio) -> None:
    x = _input(6, channels, spatial, 4)
    other = torch.cat([x[:2], _input(4, channels, spatial, 5) * 3 - 1])
    trained = copy.deepcopy(module).train()
    trained(_input(6, channels, spatial, 6))  # eval-mode statistics that are not the initial ones
    modes = [False] if dependent else [True, False]
    for train in modes:
        mode = "train" if train else "eval"
        full = _forward(trained, x, train)[:2]
        for variant, batch in (("a batch with other samples", other), ("a batch of 2", x[:2])):
            out = _forward(trained, batch, train)[:2]
            diff = (out - full).abs().max().item()
            _require(
                torch.allclose(out, full, rtol=1e-5, atol=1e-5),
                f"in {mode} mode a sample's output changes by {diff:.3g} when it is in {variant}"
                + ("" if dependent else " (the component declares batch_dependent=False)"),
            )


def _check_batch_size_1(module, kind, factory, spatial, channels, dependent, ratio) -> None:
    x = _input(1, channels, spatial, 7)
    expected = _expected_shape(kind, x, ratio)
    try:
        out = _forward(module, x, train=True)
    except (ValueError, RuntimeError) as exc:
        _require(bool(str(exc).strip()), f"batch size 1 in train mode raises {type(exc).__name__} with no message")
    else:
        _require(tuple(out.shape) == expected, f"train output shape {tuple(out.shape)} at batch 1, expected {expected}")
        _require(bool(torch.isfinite(out).all()), "train output at batch size 1 is not finite (raise a clear error)")
    trained = copy.deepcopy(module).train()
    trained(_input(6, channels, spatial, 6))
    out = _forward(trained, x, train=False)
    _require(tuple(out.shape) == expected, f"eval output shape {tuple(out.shape)} at batch 1, expected {expected}")
    _require(bool(torch.isfinite(out).all()), "eval output at batch size 1 is not finite")


def _check_eval_deterministic(module, kind, factory, spatial, channels, dependent, ratio) -> None:
    """Evaluation draws nothing at random: the other checks fix the random generator, so they cannot see it."""
    x = _input(6, channels, spatial, 10)
    first, second = _forward(module, x, False, seed=0), _forward(module, x, False, seed=1)
    diff = (first - second).abs().max().item()
    _require(torch.equal(first, second), f"the eval output changes by {diff:.3g} with the random seed")


def _check_state_dict(module, kind, factory, spatial, channels, dependent, ratio) -> None:
    module.train()
    module(_input(6, channels, spatial, 8))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.rand(p.shape, generator=torch.Generator().manual_seed(9)).to(p.dtype) * 0.5)
    torch.manual_seed(1)
    fresh = _make(kind, factory, channels)
    fresh.load_state_dict(module.state_dict())
    x = _input(6, channels, spatial, 10)
    a, b = _forward(module, x, train=False), _forward(fresh, x, train=False)
    diff = (a - b).abs().max().item()
    _require(
        torch.allclose(a, b, rtol=1e-6, atol=1e-6),
        f"a fresh instance loaded with the state dict differs by {diff:.3g} in eval mode "
        "(is some state kept outside parameters and buffers?)",
    )


#: Largest relative error ``||y - y_32|| / ||y_32||`` of the output and input gradient computed in a dtype
#: against those computed in float32: bfloat16 keeps 8 significant bits (unit roundoff 2^-8, about 0.004),
#: float16 11; for float64 the float32 reference's own rounding dominates.
_DTYPE_TOLERANCE = {"float64": 1e-4, "bfloat16": 0.05, "float16": 0.01}


def _forward_backward(module: nn.Module, x: torch.Tensor, train: bool) -> tuple[nn.Module, torch.Tensor, Any]:
    """A copy of ``module``, its output on ``x`` and the input gradient of a fixed random weighting of it
    (None when the output has no gradient)."""
    module = copy.deepcopy(module).train(train)
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(0)
    out = module(x)
    _require(out.dtype == x.dtype, f"{x.dtype} input gives {out.dtype} output (cast the result back)")
    if not out.requires_grad:  # the gradients check reports it
        return module, out, None
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.dtype)
    (out * weights).sum().backward()
    return module, out.detach(), x.grad


def _check_dtype(module, kind, factory, spatial, channels, dependent, ratio, dtype_name="float64") -> None:
    """Forward and backward of ``module.to(dtype)`` against the same computation in float32."""
    dtype, tolerance = getattr(torch, dtype_name), _DTYPE_TOLERANCE[dtype_name]
    trained = copy.deepcopy(module).train()
    trained(_input(6, channels, spatial, 11))
    converted = copy.deepcopy(trained).to(dtype)
    # the reference computes in float32 from the same (rounded) parameters, buffers and input, so that
    # only the precision of the computation is compared, not that of the values (max pooling's ties)
    reference = copy.deepcopy(converted).float()
    x = _input(6, channels, spatial, 12).to(dtype)
    for train in (True, False):
        mode = "train" if train else "eval"
        _, ref, ref_grad = _forward_backward(reference, x.float(), train)
        try:
            copied, out, grad = _forward_backward(converted, x, train)
        except _CheckFailed as exc:
            raise _CheckFailed(f"{mode} mode: {exc}") from None
        _require(bool(torch.isfinite(out).all()), f"{mode} output in {dtype_name} is not finite")
        if ref_grad is None:
            _check_close(out, ref, f"{mode} output in {dtype_name}", tolerance)
            continue
        _require(grad is not None, f"{mode} mode: no gradient reaches the input in {dtype_name}")
        _require(grad.dtype == dtype, f"{mode} mode: the input gradient is {grad.dtype}, expected {dtype}")
        _require(bool(torch.isfinite(grad).all()), f"{mode} mode: the input gradient in {dtype_name} is not finite")
        for pname, p in copied.named_parameters():
            if p.grad is not None:
                _require(bool(torch.isfinite(p.grad).all()), f"{mode} mode: the gradient of {pname!r} is not finite")
        _check_close(out, ref, f"{mode} output in {dtype_name}", tolerance)
        _check_close(grad, ref_grad, f"{mode} input gradient in {dtype_name}", tolerance)


def _check_close(y: torch.Tensor, ref: torch.Tensor, what: str, tolerance: float) -> None:
    error = ((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-12)).item()
    _require(error <= tolerance, f"{what} differs from float32 by {error:.3g} (relative; tolerance {tolerance})")


_RUN = {
    "shape_dtype": _check_shape_dtype,
    "gradients": _check_gradients,
    "batch_independence": _check_batch_independence,
    "batch_size_1": _check_batch_size_1,
    "eval_deterministic": _check_eval_deterministic,
    "state_dict": _check_state_dict,
    **{name: functools.partial(_check_dtype, dtype_name=name) for name in _DTYPE_TOLERANCE},
}


def _check_conv(report: ContractReport, conv: Callable[..., nn.Module], channels: int) -> None:
    """A normalization's conv factory: the shape of ``nn.ConvNd``, and gradients to input and weight."""
    for dims, spatial in ((1, (12,)), (2, (6, 5))):
        layout = "(N,C,L)" if dims == 1 else "(N,C,H,W)"

        def run(dims: int = dims, spatial: tuple[int, ...] = spatial) -> None:
            torch.manual_seed(0)
            module = conv(dims, channels, 2 * channels, 3, stride=2, padding=1, bias=False)
            ref = (nn.Conv1d if dims == 1 else nn.Conv2d)(channels, 2 * channels, 3, stride=2, padding=1)
            x = _input(2, channels, spatial, 13).requires_grad_()
            out, expected = module(x), ref(x)
            _require(out.shape == expected.shape, f"output shape {tuple(out.shape)}, expected {tuple(expected.shape)}")
            out.pow(2).sum().backward()
            _require(x.grad is not None and bool(x.grad.abs().sum() > 0), "no gradient reaches the input")
            for pname, p in module.named_parameters():
                _require(p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient reaches {pname!r}")

        _record(report, f"conv/shape_gradients{layout}", run)


def _record(report: ContractReport, name: str, run: Callable[[], None]) -> None:
    """Run one check and add its result to ``report``: any error inside it fails that check."""
    try:
        run()
    except _CheckFailed as exc:
        report.results.append(CheckResult(name, False, str(exc)))
    except Exception as exc:  # noqa: BLE001
        report.results.append(CheckResult(name, False, f"raised {type(exc).__name__}: {exc}"))
    else:
        report.results.append(CheckResult(name, True))


# ---------------------------------------------------------------- downsampling


def _downsampling_layers(dims: int) -> Layers:
    """Plain layers for a downsampling to build itself from: conv, a batch-independent norm, ReLU."""
    pool = nn.AdaptiveAvgPool1d if dims == 1 else nn.AdaptiveAvgPool2d
    return Layers(
        dims=dims,
        norm=lambda c: nn.GroupNorm(1, c),
        act=lambda c: nn.ReLU(),
        pool=lambda: nn.Sequential(pool(1), nn.Flatten(1)),
        head=nn.Linear,
    )


def _check_downsampling(report, factory, dependent, channels, dtypes) -> None:
    """The module checks (:func:`_check_all`'s) on ``factory(layers, channels, 2 * channels)``, per input
    layout: the output has twice the channels and every spatial size halved (rounding up). Of the declared
    dtypes only float64 is checked: in bfloat16, max pooling after a conv routes gradients differently from
    float32 wherever rounding reorders near-equal values of a window."""
    checks = [*_CHECKS, *(d for d in dtypes if d == "float64")]
    for layout, spatial in _layouts("downsampling").items():
        layers = _downsampling_layers(len(spatial))

        def block(cin: int, layers: Layers = layers) -> nn.Module:
            return factory(layers, cin, 2 * cin)

        _check_layout(report, "", "downsampling", block, layout, spatial, checks, dependent, 1.0, channels)


# ---------------------------------------------------------------- initializers


def _init_model(shape: tuple[int, ...]) -> nn.Module:
    """A freshly built ResNet-8 (BatchNorm, ReLU, average pooling, linear head) on ``shape`` inputs."""
    registry = get_registry()
    layers = Layers(
        dims=len(shape) - 1,
        norm=registry.get("normalization", "batchnorm").bind(),
        act=registry.get("activation", "relu").bind(),
        pool=registry.get("pooling", "avg").bind(),
        head=registry.get("head", "linear").bind(),
    )
    return registry.get("model", "resnet").bind({"depth": 8, "width": 4})(shape, _NUM_CLASSES, layers)


def _initialized(init: Callable[..., None], shape: tuple[int, ...], with_sample: bool) -> nn.Module:
    """A model built with torch seed 0 and initialized with torch seed 1, as :func:`autonorm.build_model` calls
    the initializer: ``init(model, sample_batch)``, plus ``sample_labels=`` where its signature names them."""
    torch.manual_seed(0)
    model = _init_model(shape)
    batch = _input(12, shape[0], shape[1:], 14) if with_sample else None
    labels = torch.arange(12) % _NUM_CLASSES if with_sample else None
    takes_labels = "sample_labels" in inspect.signature(init).parameters
    torch.manual_seed(1)
    init(model, batch, **({"sample_labels": labels} if takes_labels else {}))
    return model


def _check_initializer(report: ContractReport, init: Callable[..., None]) -> None:
    """Each initializer check on a ResNet-8 for 1-D and 2-D inputs, without and with a sample batch."""
    for layout, spatial in _layouts("initializer").items():
        shape = (3, *spatial)
        for with_sample in (False, True):
            suffix = f"{layout[:-1]}; {'with' if with_sample else 'no'} sample batch)"
            models: list[nn.Module] = []  # two runs from the same seeds

            def run(shape=shape, with_sample=with_sample, models=models) -> None:
                models.extend(_initialized(init, shape, with_sample) for _ in range(2))

            _record(report, f"runs{suffix}", run)
            for check, fn in _INIT_RUN.items():
                if len(models) == 2:
                    _record(report, f"{check}{suffix}", functools.partial(fn, *models, shape))
                else:
                    report.results.append(CheckResult(f"{check}{suffix}", False, "not run: the initializer failed"))


def _check_init_deterministic(model: nn.Module, again: nn.Module, shape: tuple[int, ...]) -> None:
    first, second = model.state_dict(), again.state_dict()
    _require(first.keys() == second.keys(), "two runs from the same torch seed give different state dict keys")
    for name, value in first.items():
        other = second[name]
        if torch.equal(value, other) or (
            value.is_floating_point() and torch.allclose(value, other, rtol=0, atol=0, equal_nan=True)
        ):
            continue
        diff = (value.double() - other.double()).abs().max().item() if value.numel() else 0.0
        raise _CheckFailed(
            f"two runs from the same torch seed give different {name!r} (by {diff:.3g}); "
            "draw random numbers from torch's global generator or a seeded one"
        )


def _check_init_finite_weights(model: nn.Module, again: nn.Module, shape: tuple[int, ...]) -> None:
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            _require(bool(torch.isfinite(value).all()), f"{name!r} is not finite after initialization")


def _check_init_finite_outputs(model: nn.Module, again: nn.Module, shape: tuple[int, ...]) -> None:
    x = _input(6, shape[0], shape[1:], 15)
    for train in (True, False):
        with torch.no_grad():
            out = _forward(model, x, train)
        mode = "train" if train else "eval"
        expected = (6, _NUM_CLASSES)
        _require(tuple(out.shape) == expected, f"{mode} output shape {tuple(out.shape)}, expected {expected}")
        _require(bool(torch.isfinite(out).all()), f"the initialized model's {mode} output is not finite")


_INIT_RUN = {
    "deterministic": _check_init_deterministic,
    "finite_weights": _check_init_finite_weights,
    "finite_outputs": _check_init_finite_outputs,
}
