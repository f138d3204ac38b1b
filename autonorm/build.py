"""From a :class:`TrialConfig` to a ``torch.nn.Module``.

Backbones never ask which method was chosen: they receive a :class:`Layers` of factories, the way
torchvision and timm models take ``norm_layer=`` and ``act_layer=``. The factory signatures, per kind:

============= ===========================================================================================
kind          factory call (the component's hyperparameters come as keywords)
============= ===========================================================================================
dataset       ``factory() -> autonorm.Arrays`` (NumPy arrays or torch tensors; see :mod:`autonorm.data`)
model         ``factory(input_shape, num_classes, layers) -> nn.Module``
normalization ``factory(num_channels) -> nn.Module``, shape-preserving on ``(N, C)``, ``(N, C, L)`` and
              ``(N, C, H, W)``: it learns the dimensionality from its input in ``forward``
activation    ``factory(num_channels) -> nn.Module``; may change channels by ``channel_ratio``
pooling       ``factory() -> nn.Module``: global pooling ``(N, C, *spatial) -> (N, C)``
downsampling  ``factory(layers, cin, cout) -> nn.Module``: halves every spatial size (rounding up)
head          ``factory(in_features, num_classes) -> nn.Module``: ``(N, in_features) -> (N, num_classes)``
initializer   ``factory(model, sample_batch) -> None``; ``sample_batch`` may be None
augmentation  ``factory() -> TrainingMethod`` that changes training batches (``transform_batch``)
training      ``factory() -> TrainingMethod`` that hooks into the step, the loss or evaluation
============= ===========================================================================================

A module that breaks its kind's promise on its first input (a normalization that changes the shape) is
an error naming its plugin, as is a factory that returns no ``nn.Module``. A ``ValueError`` raised while
the model is built (by a factory or an initializer) makes the trial incompatible: the combination cannot
be built, and the search steers away from it; any other exception fails the trial with its reason.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autonorm.config import TrialConfig
from autonorm.errors import SpecError
from autonorm.registry import Component, Registry, get_registry
from autonorm.routing import mark_batch_dependent
from autonorm.training_method import TrainingMethod


@dataclass(frozen=True)
class Layers:
    """The factories a backbone builds itself from."""

    dims: int
    norm: Callable[[int], nn.Module]
    act: Callable[[int], nn.Module]
    pool: Callable[[], nn.Module]
    head: Callable[[int, int], nn.Module]
    #: output channels of ``act`` per input channel.
    act_ratio: float = 1.0
    #: the chosen downsampling's factory ``f(layers, cin, cout)``; None: :meth:`downsample` is a stride-2 conv.
    downsampling: Callable[..., nn.Module] | None = None
    #: the normalization's conv factory (see ``Component.conv``), used by :meth:`conv` instead of ``nn.ConvNd``.
    conv_layer: Callable[..., nn.Module] | None = None
    #: the normalization's residual-branch scale factory (see ``Component.residual_scale``).
    residual_scale_layer: Callable[..., nn.Module] | None = None
    #: the normalization's module for a norm followed by an activation (see ``Component.pair``).
    pair_layer: Callable[[int], nn.Module] | None = None

    def conv(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, bias: bool = False) -> nn.Module:
        """A conv followed by a normalization (a normalization may replace it: weight standardization)."""
        if self.conv_layer is not None:
            padding = kernel_size // 2
            return self.conv_layer(self.dims, cin, cout, kernel_size, stride=stride, padding=padding, bias=bias)
        conv = nn.Conv1d if self.dims == 1 else nn.Conv2d
        return conv(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)

    def residual_scale(self, index: int, convs: int = 2) -> nn.Module | None:
        """The module scaling the branch of residual block ``index`` (counted from 1 over the whole model)
        whose branch has ``convs`` convs; None when the normalization declares no scale (the branch is
        added as it is)."""
        return None if self.residual_scale_layer is None else self.residual_scale_layer(index, convs)

    def downsample(self, cin: int, cout: int) -> nn.Module:
        """A layer that halves every spatial size (rounding up) and maps ``cin`` to ``cout`` channels."""
        if self.downsampling is None:
            return self.conv(cin, cout, 3, stride=2)
        return self.downsampling(self, cin, cout)

    def pre_act(self, channels: int) -> int:
        """Channels a layer must produce so that ``channels`` come out of the activation."""
        return round(channels / self.act_ratio)

    def norm_act(self, channels: int) -> nn.Module:
        """Normalization then activation over ``channels`` inputs; ``channels * act_ratio`` come out."""
        if self.pair_layer is not None:
            return self.pair_layer(channels)
        return nn.Sequential(self.norm(channels), self.act(channels))


def conv_factory(conv1d: type[nn.Conv1d], conv2d: type[nn.Conv2d]) -> Callable[..., nn.Module]:
    """A ``Component.conv`` factory ``f(dims, cin, cout, kernel_size, *, stride, padding, bias)`` building
    ``conv1d`` or ``conv2d`` (subclasses of ``nn.Conv1d``/``nn.Conv2d``) by the input's dims."""

    def conv(
        dims: int, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
        bias: bool = False,
    ) -> nn.Module:
        cls = {1: conv1d, 2: conv2d}[dims]
        return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    return conv


#: The output shape a module of each kind promises for an input of ``shape``, given its component and
#: the arguments its factory was called with (the table above).
_PROMISES: dict[str, Callable[[tuple[int, ...], Component, tuple], tuple[int, ...]]] = {
    "normalization": lambda shape, comp, args: shape,
    "activation": lambda shape, comp, args: (shape[0], round(shape[1] * comp.channel_ratio), *shape[2:]),
    "pooling": lambda shape, comp, args: shape[:2],
    "downsampling": lambda shape, comp, args: (shape[0], args[2], *((n + 1) // 2 for n in shape[2:])),
    "head": lambda shape, comp, args: (shape[0], args[1]),
}


def _checked(comp: Component, factory: Callable[..., Any]) -> Callable[..., nn.Module]:
    """``factory``, whose modules must be ``nn.Module``s that keep their kind's promise on their first
    input: a plugin's mistake (a normalization that changes the shape) is an error naming it, rather than a
    model that trains to nothing or a shape error deep inside the next layer."""
    who = f"{comp.kind} {comp.name} (plugin {comp.plugin!r})"

    def build(*args: Any, **kwargs: Any) -> nn.Module:
        module = factory(*args, **kwargs)
        if not isinstance(module, nn.Module):
            raise TypeError(f"{who}: its factory returned {type(module).__name__}, not a torch.nn.Module")
        if comp.kind not in _PROMISES:
            return module
        checked: list[bool] = []  # shared with copies made before the first forward (an EMA teacher)

        def check(_: nn.Module, inputs: tuple, output: Any) -> None:
            if checked or not inputs or not isinstance(inputs[0], torch.Tensor):  # torch.fx traces with proxies
                return
            checked.append(True)
            handle.remove()
            shape = tuple(inputs[0].shape)
            expected = _PROMISES[comp.kind](shape, comp, args)
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            if got != expected:
                raise TypeError(f"{who}: its module returned {got} for an input of shape {shape}; expected {expected}")

        handle = module.register_forward_hook(check)
        return module

    return build


def build_layers(config: TrialConfig, registry: Registry | None = None) -> Layers:
    registry = registry or get_registry()
    parts = {}
    for kind, choice in config.components.items():
        comp = registry.get(kind, choice.name)
        parts[kind] = _checked(comp, comp.bind(choice.params)) if kind in _PROMISES else comp.bind(choice.params)
    norm_comp = registry.get("normalization", config.components["normalization"].name)
    if norm_comp.own_activation is not None:
        act, ratio = norm_comp.bind_own_activation(config.components["normalization"].params), 1.0
    else:
        choice = config.components["activation"]
        act, ratio = parts["activation"], registry.get("activation", choice.name).channel_ratio
    head = parts["head"]
    if norm_comp.head_wrapper is not None:
        wrap = functools.partial(
            norm_comp.head_wrapper, **{**norm_comp.defaults(), **config.components["normalization"].params}
        )
        head = _wrapped_head(head, wrap)
    norm, pair = parts["normalization"], norm_comp.bind_pair(config.components["normalization"].params)
    if norm_comp.batch_dependent:  # so that batch statistics can be routed (autonorm.routing)
        norm, pair = _marked(norm), pair and _marked(pair)
    return Layers(
        dims=len(config.input_shape) - 1,
        norm=norm,
        act=act,
        pool=parts["pooling"],
        head=head,
        act_ratio=ratio,
        downsampling=parts.get("downsampling"),
        conv_layer=norm_comp.conv,
        residual_scale_layer=norm_comp.residual_scale,
        pair_layer=pair,
    )


def _wrapped_head(head: Callable[[int, int], nn.Module], wrap: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The head factory whose modules ``wrap(head_module, num_classes)`` encloses."""

    def build(in_features: int, num_classes: int) -> nn.Module:
        return wrap(head(in_features, num_classes), num_classes)

    return build


def _marked(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The factory whose modules are marked batch-dependent."""

    def build(*args: Any, **kwargs: Any) -> nn.Module:
        return mark_batch_dependent(factory(*args, **kwargs))

    return build


def build_training_methods(config: TrialConfig, registry: Registry | None = None) -> list[TrainingMethod]:
    """The training methods the chosen components bring, in the order of the configuration's kinds."""
    registry = registry or get_registry()
    methods = []
    for kind, choice in config.components.items():
        comp = registry.get(kind, choice.name)
        if comp.training_method is not None:
            method = comp.training_method(**comp.values(choice.params))
            if not isinstance(method, TrainingMethod):  # the plugin's mistake, not a failure deep in the trainer
                raise TypeError(
                    f"{kind} {comp.name} (plugin {comp.plugin!r}): its factory returned {type(method).__name__}, "
                    "not an autonorm.TrainingMethod"
                )
            methods.append(method)
    return methods


def build_model(
    config: TrialConfig | Mapping[str, Any] | str | os.PathLike,
    sample_batch: torch.Tensor | None = None,
    registry: Registry | None = None,
    sample_labels: torch.Tensor | None = None,
) -> nn.Module:
    """Build (and initialize) the model of a configuration.

    ``config`` is a :class:`TrialConfig`, its dict, or a YAML file written by ``autonorm best``.
    Data-dependent initializers use ``sample_batch`` when given; one whose factory has a
    ``sample_labels`` parameter (GradInit) also receives the batch's labels.

    >>> import autonorm
    >>> model = autonorm.build_model(autonorm.load_study("quickstart").best.config)  # doctest: +SKIP
    """
    if not isinstance(config, TrialConfig):
        config = TrialConfig.load(dict(config) if isinstance(config, Mapping) else config)
    registry = registry or get_registry()
    try:
        layers = build_layers(config, registry)
        model_comp = registry.get("model", config.model.name)
        backbone = _checked(model_comp, model_comp.bind(config.model.params))
    except KeyError as exc:
        raise SpecError(exc.args[0], path="config") from None
    model = backbone(tuple(config.input_shape), config.num_classes, layers)
    init = config.components.get("initializer")
    if init is not None:
        initialize = registry.get("initializer", init.name).bind(init.params)
        takes_labels = "sample_labels" in inspect.signature(initialize).parameters
        initialize(model, sample_batch, **({"sample_labels": sample_labels} if takes_labels else {}))
    return model
