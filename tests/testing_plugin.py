"""Components used only by the tests: ones that diverge, raise, or declare combination rules."""

import torch
from torch import nn

import autonorm
from autonorm import Component, FilePath


class Explode(nn.Module):
    """Scales features to overflow: any loss after it is not finite."""

    def forward(self, x):
        return x * torch.tensor(1e38) * 1e38


class NanInLaterEvals(nn.Module):
    """Trains as the identity; evaluated, it gives NaN from its second evaluation on (an averaged or EMA
    model gone bad while training stays finite)."""

    def __init__(self) -> None:
        super().__init__()
        self.evaluations = 0

    def forward(self, x):
        if self.training:
            return x
        if x.shape[0] > 1:  # not the single-sample latency passes
            self.evaluations += 1
        return x * float("nan") if self.evaluations > 1 else x


class Raises(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside a trial")


class Interrupt(nn.Module):
    """Behaves like a user pressing Ctrl-C in the middle of a trial."""

    def forward(self, x):
        raise KeyboardInterrupt


class Shift(nn.Module):
    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return x + self.bias.view(1, -1, *[1] * (x.dim() - 2))


@autonorm.hookimpl
def autonorm_components():
    return [
        Component(kind="normalization", name="explode", factory=lambda num_channels: Explode()),
        Component(kind="normalization", name="nan_in_eval", factory=lambda num_channels: NanInLaterEvals()),
        Component(kind="activation", name="raises", factory=lambda num_channels: Raises()),
        Component(kind="activation", name="interrupt", factory=lambda num_channels: Interrupt()),
        Component(
            kind="normalization",
            name="shift_tanh",
            factory=Shift,
            own_activation=lambda num_channels: nn.Tanh(),
        ),
        Component(kind="normalization", name="no_elu", factory=Shift, excludes=("activation:elu",)),
        Component(
            kind="activation",
            name="reads_a_file",
            factory=lambda num_channels, table="table.txt": nn.Identity(),
            params={"table": FilePath("table.txt")},
        ),
        Component(kind="pooling", name="needs_resnet", factory=lambda: nn.Flatten(2), requires=("model:resnet",)),
    ]
