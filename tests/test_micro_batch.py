"""The micro-batch claim of the GN, FRN and BCN papers, in miniature. After a few steps of training at batch 2,
BatchNorm's training-mode outputs (statistics of 2 samples) disagree with its eval-mode outputs (running
statistics) far more than in batches of 32, so what it learns at batch 2 is not what it computes at test time;
batch-independent methods (GN, GN+WS, FRN) compute exactly the same in both modes."""

import pytest
import torch
from sklearn.datasets import load_digits

from autonorm import TrialConfig, build_model


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
    return x, torch.tensor(data.target)


def trained(norm: str, batch_size: int, steps: int = 30, **params) -> torch.nn.Module:
    torch.manual_seed(0)
    config = TrialConfig(
        dataset={"name": "digits"},
        val_fraction=0.2,
        test_fraction=0.2,
        input_shape=(1, 8, 8),
        num_classes=10,
        model={"name": "small_cnn", "params": {"depth": 2, "width": 8}},
        components={
            "normalization": {"name": norm, "params": params},
            "activation": {"name": "relu"},
            "pooling": {"name": "avg"},
            "head": {"name": "linear"},
        },
        epochs=1,
        train={},
    )
    model = build_model(config).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    x, y = digits()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


def train_eval_gap(model: torch.nn.Module, batch_size: int) -> float:
    """Relative difference between training-mode outputs (in batches of ``batch_size``) and eval outputs."""
    probe = digits()[0][-64:]
    with torch.no_grad():
        train_out = torch.cat([model.train()(b) for b in probe.split(batch_size)])
        eval_out = model.eval()(probe)
    return ((train_out - eval_out).norm() / eval_out.norm()).item()


def test_batchnorm_train_eval_gap_is_large_at_batch_2():
    model = trained("batchnorm", 2)
    gap_2, gap_32 = train_eval_gap(model, 2), train_eval_gap(model, 32)
    assert gap_2 > 0.1 and gap_2 > 2 * gap_32, (gap_2, gap_32)


@pytest.mark.parametrize("norm, params", [("groupnorm", {"groups": 4}), ("frn", {}), ("gn_ws", {"groups": 4})])
def test_batch_independent_methods_are_the_same_in_train_and_eval(norm, params):
    assert train_eval_gap(trained(norm, 2, **params), 2) < 1e-6


def test_bcn_estimates_frozen_make_train_and_eval_agree():
    # rate 0 after training: the estimate variant normalizes with the same running estimates in both modes
    model = trained("bcn", 2, estimate=True, groups=4)
    for module in model.modules():
        if hasattr(module, "rate"):
            module.rate = 0.0
    assert train_eval_gap(model, 2) < 1e-6
