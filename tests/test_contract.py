"""The plugin contract: every registered component passes it, and each check catches what it names."""

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
        (Float32Only, "float64"),
    ],
)
def test_each_check_fails_on_the_module_that_breaks_it(module, check):
    assert check in failed(module)


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
    assert main(["check-plugin", "avg", "--kind", "pooling"]) == 0


def test_check_plugin_command_unknown_name_and_failures(capsys, monkeypatch):
    assert main(["check-plugin", "groupnrom"]) == 2
    assert "did you mean 'groupnorm'" in capsys.readouterr().err
    registry = get_registry()
    bad = Component(kind="normalization", name="detached", factory=Detached)
    monkeypatch.setitem(registry._components, ("normalization", "detached"), bad)
    assert main(["check-plugin", "detached"]) == 1
    out = capsys.readouterr().out
    assert "FAILED  gradients(N,C,L)" in out and "some checks failed" in out
