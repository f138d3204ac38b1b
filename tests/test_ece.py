"""Expected calibration error in ``evaluate``: 20 equal-width bins over the max softmax probability."""

import math

import torch
from torch import nn

from autonorm.spec import OBJECTIVE_DIRECTIONS
from autonorm.trainer import ECE_BINS, evaluate


def direct_ece(logits: torch.Tensor, y: torch.Tensor, bins: int) -> float:
    """sum_b (n_b / N) |acc_b - conf_b| written out with a Python loop over the bins."""
    p = logits.double().softmax(1)
    conf, pred = p.max(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        if inside.any():
            acc = (pred[inside] == y[inside]).double().mean().item()
            total += inside.double().mean().item() * abs(acc - conf[inside].mean().item())
    return total


def test_ece_matches_the_direct_formula_across_eval_batches():
    torch.manual_seed(0)
    logits, y = 3 * torch.randn(257, 5), torch.randint(0, 5, (257,))
    metrics = evaluate(nn.Identity(), logits, y, batch_size=64)
    assert ECE_BINS == 20
    assert math.isclose(metrics["val_ece"], direct_ece(logits, y, 20), abs_tol=1e-6)
    assert metrics["val_ece"] > 0.05


def test_small_hand_computed_case():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bin [0.9, 0.95) has acc 0.5, conf 0.9; bin [0.6, 0.65)
    # has acc 1, conf 0.6 -> ECE = 2/3 * 0.4 + 1/3 * 0.4 = 0.4
    def two_class(p):
        return [0.0, math.log(p / (1 - p))]

    logits = torch.tensor([two_class(0.9), two_class(0.9), two_class(0.6)])
    y = torch.tensor([1, 0, 1])
    assert math.isclose(evaluate(nn.Identity(), logits, y)["val_ece"], 0.4, abs_tol=1e-6)


def test_confident_right_is_zero_and_confident_wrong_is_one():
    logits = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 50.0]])
    assert evaluate(nn.Identity(), logits, torch.tensor([0, 1, 2]))["val_ece"] < 1e-6
    assert math.isclose(evaluate(nn.Identity(), logits, torch.tensor([1, 2, 0]))["val_ece"], 1.0, abs_tol=1e-6)


def test_perfectly_calibrated_set_has_small_ece_and_an_overconfident_one_does_not():
    torch.manual_seed(0)
    n = 20000
    conf = 0.5 + 0.5 * torch.rand(n)  # binary: confidence in [0.5, 1]
    logits = torch.stack([torch.zeros(n), torch.log(conf / (1 - conf))], 1)
    right = torch.rand(n) < conf  # correct with probability = confidence
    y = torch.where(right, 1, 0)
    assert evaluate(nn.Identity(), logits, y)["val_ece"] < 0.02
    # the same predictions with accuracy 0.5 everywhere: ECE = mean(conf) - 0.5 = 0.25
    coin = torch.where(torch.rand(n) < 0.5, 1, 0)
    assert math.isclose(evaluate(nn.Identity(), logits, coin)["val_ece"], 0.25, abs_tol=0.02)


def test_empty_set_is_nan_and_ece_is_a_minimized_objective():
    metrics = evaluate(nn.Identity(), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert math.isnan(metrics["val_ece"])
    assert OBJECTIVE_DIRECTIONS["val_ece"] == "minimize"
