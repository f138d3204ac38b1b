"""The plugin contract: every registered component passes it, and each check catches what it names."""

import re

import pytest
import torch
from torch import nn

from autonorm import Component, check_component, get_registry
from autonorm.cli import main
from autonorm.testing import CHECKED_KINDS, ContractError

ALL = [pytest.param(c, id=f"{c.kind}:{c.name}") for kind in CHECKED_KINDS for c in get_registry().components(kind)]


@pytest.mark.parametrize("component", ALL)
def test_every_registered_component_keeps_the_contract(component):
    report = check_component(component)
    layouts = 1 if component.kind == "head" else 2
    assert len(report.results) >= 6 * layouts
    if component.kind in ("normalization", "activation", "pooling", "head"):
        # a check per declared dtype besides float32 (float64 and bfloat16 unless a docstring says why not)
        ran = [r.name.split("(")[0] for r in report.results]
        assert all(ran.count(d) == layouts for d in component.dtypes if d != "float32"), ran


# ---------------------------------------------------------------- each check can fail


class Scale(nn.Module):
    """A well-behaved per-channel scale; the broken modules below break one rule each."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, *[1] * (x.dim() - 2))


class WrongShape(Scale):
    def forward(self, x):
        return super().forward(x)[:, :-1]


class WrongDtype(Scale):
    def forward(self, x):
        return super().forward(x).half()


class Detached(Scale):
    def forward(self, x):
        return super().forward(x).detach()


class UnusedParameter(Scale):
    def __init__(self, num_channels: int) -> None:
        super().__init__(num_channels)
        self.unused = nn.Parameter(torch.ones(1))


class BatchMean(Scale):
    """Subtracts the batch mean: batch-dependent in train and eval mode alike."""

    def forward(self, x):
        return super().forward(x - x.mean(0, keepdim=True))


class TrainBatchMean(Scale):
    """Subtracts the batch mean in training only: fine when declared batch-dependent."""

    def forward(self, x):
        return super().forward(x - x.mean(0, keepdim=True) if self.training else x)


class UnbiasedBatchVar(Scale):
    """Divides by the unbiased batch std: NaN at batch size 1 instead of a clear error."""

    def forward(self, x):
        return super().forward(x / x.std(0, keepdim=True)) if self.training else super().forward(x)


class StateOutsideStateDict(Scale):
    def __init__(self, num_channels: int) -> None:
        super().__init__(num_channels)
        self.shift = torch.randn(num_channels)  # a plain attribute: not saved

    def forward(self, x):
        return super().forward(x) + self.shift.view(1, -1, *[1] * (x.dim() - 2))


class Float32Only(Scale):
    def forward(self, x):
        return super().forward(x).float()


class ComputesInFloat32(Scale):
    """Upcasts half-precision input to float32 and forgets to cast the result back."""

    def forward(self, x):
        return super().forward(x.to(torch.promote_types(x.dtype, torch.float32)))


class LosesPrecision(Scale):
    """Adds and removes a large offset: harmless in float32, most of the signal is lost in bfloat16."""

    def forward(self, x):
        return super().forward((x + 64) - 64)


class NoisyEval(Scale):
    """Adds noise in eval mode too."""

    def forward(self, x):
        return super().forward(x) + torch.randn_like(x)


def failed(factory, **kwargs):
    with pytest.raises(ContractError) as info:
        check_component(factory, kind="normalization", **kwargs)
    return {name.split("(")[0] for name in info.value.checks}


def test_a_well_behaved_module_passes():
    report = check_component(Scale, kind="normalization")
    assert report.ok and {r.name for r in report.results} >= {"gradients(N,C,L)", "state_dict(N,C,H,W)"}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "module, check",
    [
        (WrongShape, "shape_dtype"),
        (WrongDtype, "shape_dtype"),
        (Detached, "gradients"),
        (UnusedParameter, "gradients"),
        (BatchMean, "batch_independence"),
        (UnbiasedBatchVar, "batch_size_1"),
        (StateOutsideStateDict, "state_dict"),
        (NoisyEval, "eval_deterministic"),
        (Float32Only, "float64"),
        (ComputesInFloat32, "bfloat16"),
        (LosesPrecision, "bfloat16"),
    ],
)
def test_each_check_fails_on_the_module_that_breaks_it(module, check):
    assert check in failed(module)


def test_bfloat16_check_names_the_dtype_it_got_or_the_error():
    with pytest.raises(ContractError, match=r"bfloat16\(N,C,L\): train mode: torch.bfloat16 input gives torch.float32"):
        check_component(ComputesInFloat32, kind="normalization")
    assert failed(ComputesInFloat32) == {"bfloat16"}  # float64 and the float32 checks pass
    with pytest.raises(ContractError, match=r"output in bfloat16 differs from float32 by 0\.\d+ \(relative"):
        check_component(LosesPrecision, kind="normalization")
    assert failed(LosesPrecision) == {"bfloat16"}


def test_only_the_declared_dtypes_are_checked():
    comp = Component(kind="normalization", name="f32", factory=ComputesInFloat32, dtypes=("float32", "float64"))
    report = check_component(comp)
    assert report.ok and "bfloat16" not in str(report) and "passed  float64(N,C,L)" in str(report)
    assert check_component(ComputesInFloat32, kind="normalization", dtypes=["float32"]).ok
    half = check_component(Scale, kind="normalization", dtypes=("float32", "float16"))
    assert half.ok and {r.name for r in half.results} >= {"float16(N,C,L)", "float16(N,C,H,W)"}
    assert "float64(N,C,L)" not in {r.name for r in half.results}
    for bad in (("float64",), ("float32", "int8")):
        with pytest.raises(ValueError, match="must include 'float32'"):
            Component(kind="normalization", name="bad", factory=Scale, dtypes=bad)


def test_batch_dependence_is_judged_by_the_declaration():
    assert failed(TrainBatchMean) == {"batch_independence"}
    assert check_component(TrainBatchMean, kind="normalization", batch_dependent=True).ok
    # eval mode must not depend on the batch, whatever the declaration
    assert "batch_independence" in failed(BatchMean, batch_dependent=True)


def test_batch_size_one_may_fail_with_a_clear_error():
    class NeedsTwo(Scale):
        def forward(self, x):
            if self.training and x.shape[0] < 2:
                raise ValueError("needs at least 2 samples per batch in training")
            return super().forward(x)

    assert check_component(NeedsTwo, kind="normalization").ok


def test_own_activation_and_activation_channel_ratio_are_checked():
    comp = Component(kind="normalization", name="scale_bad_act", factory=Scale, own_activation=WrongShape)
    with pytest.raises(ContractError, match=r"own_activation/shape_dtype\(N,C,L\)"):
        check_component(comp)
    halve = Component(kind="activation", name="halve", factory=lambda c: nn.Flatten(1, 1), channel_ratio=0.5)
    with pytest.raises(ContractError, match="expected"):
        check_component(halve)


def test_report_without_raising_names_the_failed_checks():
    report = check_component(Detached, kind="normalization", raise_on_failure=False)
    assert not report.ok and all(r.name.startswith("gradients") for r in report.failed)
    assert "FAILED  gradients(N,C,L): no gradient reaches the input" in str(report)


# ---------------------------------------------------------------- the command


def test_check_plugin_command(capsys):
    assert main(["check-plugin", "groupnorm"]) == 0
    out = capsys.readouterr().out
    assert "passed  batch_independence(N,C,H,W)" in out and "all checks passed" in out
    assert "passed  bfloat16(N,C,H,W)" in out
    assert main(["check-plugin", "avg", "--kind", "pooling"]) == 0


def test_check_plugin_command_unknown_name_and_failures(capsys, monkeypatch):
    assert main(["check-plugin", "groupnrom"]) == 2
    assert "did you mean 'groupnorm'" in capsys.readouterr().err
    assert main(["check-plugin", "stochastic_depth"]) == 2  # it exists, of a kind without a contract
    err = " ".join(capsys.readouterr().err.split())
    assert "'stochastic_depth' is a training component, which has no contract to check" in err
    registry = get_registry()
    bad = Component(kind="normalization", name="detached", factory=Detached)
    monkeypatch.setitem(registry._components, ("normalization", "detached"), bad)
    assert main(["check-plugin", "detached"]) == 1
    out = capsys.readouterr().out
    assert "FAILED  gradients(N,C,L)" in out and "some checks failed" in out


# ---------------------------------------------------------------- downsampling and initializers


def test_downsampling_and_initializer_checks_are_named(capsys):
    names = {r.name for r in check_component("strided_conv", kind="downsampling").results}
    assert {"shape_dtype(N,C,L)", "gradients(N,C,H,W)", "state_dict(N,C,H,W)", "float64(N,C,L)"} <= names
    names = {r.name for r in check_component("kaiming", kind="initializer").results}
    for check in ("runs", "deterministic", "finite_weights", "finite_outputs"):
        assert {f"{check}(N,C,L; no sample batch)", f"{check}(N,C,H,W; with sample batch)"} <= names
    assert main(["check-plugin", "all_conv", "--kind", "downsampling"]) == 0
    assert main(["check-plugin", "kaiming"]) == 0
    out = capsys.readouterr().out
    assert "downsampling 'all_conv':" in out and "passed  finite_outputs(N,C,H,W; with sample batch)" in out


def no_stride(layers, cin, cout):
    """Keeps the spatial size: not a downsampling."""
    return layers.conv(cin, cout, 3)


def ignores_cout(layers, cin, cout):
    return layers.conv(cin, cin, 3, stride=2)


def test_a_downsampling_that_does_not_downsample_fails():
    with pytest.raises(ContractError, match=r"shape_dtype\(N,C,L\): train output shape \(6, 32, 12\), expected \("):
        check_component(no_stride, kind="downsampling")
    with pytest.raises(ContractError, match=r"output shape \(6, 16, 3, 3\), expected \(6, 32, 3, 3\)"):
        check_component(ignores_cout, kind="downsampling")


def needs_sample(model, sample_batch=None):
    """Scales by the sample's spread: fails without a sample batch."""
    for p in model.parameters():
        p.data.mul_(sample_batch.std())


def unseeded(model, sample_batch=None):
    """Draws from a generator seeded from the clock: not reproducible from the torch seed."""
    gen = torch.Generator()
    gen.seed()
    for p in model.parameters():
        p.data.normal_(generator=gen)


def nan_bias(model, sample_batch=None):
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.bias.data.fill_(float("nan"))


def huge_head(model, sample_batch=None):
    """Finite weights whose logits overflow float32."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.data.fill_(3e38)
            m.bias.data.fill_(3e38)


def init_failures(init):
    report = check_component(init, kind="initializer", raise_on_failure=False)
    assert not report.ok
    with pytest.raises(ContractError, match=re.escape(report.failed[0].name)):
        report.raise_if_failed()
    return {r.name: r.message for r in report.failed}


def test_each_initializer_check_fails_on_the_initializer_that_breaks_it():
    failed = init_failures(needs_sample)
    assert set(failed) == {
        f"{check}({layout}; no sample batch)"
        for check in ("runs", "deterministic", "finite_weights", "finite_outputs")
        for layout in ("N,C,L", "N,C,H,W")
    }
    assert "raised AttributeError" in failed["runs(N,C,H,W; no sample batch)"]
    assert failed["finite_weights(N,C,L; no sample batch)"] == "not run: the initializer failed"

    failed = init_failures(unseeded)
    assert {n.split("(")[0] for n in failed} == {"deterministic"}
    assert "two runs from the same torch seed give different" in failed["deterministic(N,C,L; no sample batch)"]

    failed = init_failures(nan_bias)
    assert {n.split("(")[0] for n in failed} == {"finite_weights", "finite_outputs"}
    assert failed["finite_weights(N,C,H,W; with sample batch)"] == "'head.bias' is not finite after initialization"

    failed = init_failures(huge_head)
    assert {n.split("(")[0] for n in failed} == {"finite_outputs"}
    assert "train output is not finite" in failed["finite_outputs(N,C,L; with sample batch)"]
