"""The embedded default dataset: scikit-learn's handwritten digits (1,797 images, 8x8, 10 classes).

It ships inside scikit-learn, so searches and tests run offline.

``imbalance`` > 1 gives a long-tailed variant: the training split keeps n_c = n_0 * imbalance^(-c / (K - 1))
samples of class c (the exponential profile of Cui et al., "Class-Balanced Loss Based on Effective
Number of Samples", CVPR 2019, arXiv:1901.05555; class 0 is the head, class 9 has 1/imbalance of it),
while validation and test stay balanced. The variant makes its own stratified split, with the same
fractions (0.2 test, then 0.2 validation) and seeds as autonorm's default split, so the data section's
``val_fraction`` and ``test_fraction`` do not apply to it.
"""

from __future__ import annotations

import numpy as np

import autonorm
from autonorm import Arrays, Component, Float


def long_tail_counts(counts: np.ndarray, imbalance: float) -> np.ndarray:
    """Exponential profile: class c keeps counts[0] * imbalance^(-c / (K - 1)) samples (at most its own, at least 1)."""
    k = len(counts)
    wanted = np.floor(counts[0] * imbalance ** (-np.arange(k) / max(k - 1, 1)))
    return np.clip(wanted, 1, counts).astype(int)


def digits(imbalance: float = 1.0) -> Arrays:
    """scikit-learn's 8x8 handwritten digits as (N, 1, 8, 8) images with pixel values in [0, 1]; with
    ``imbalance`` > 1, a long-tailed training split (largest / smallest class = ``imbalance``)."""
    from sklearn.datasets import load_digits  # here: importing scikit-learn takes a second every command paid
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    if imbalance == 1:
        return Arrays(x=x, y=y, num_classes=10)
    x, x_test, y, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x, x_val, y, y_val = train_test_split(x, y, test_size=0.2, random_state=1, stratify=y)
    keep = long_tail_counts(np.bincount(y, minlength=10), imbalance)
    order = np.random.default_rng(0).permutation(len(y))
    rows = np.concatenate([order[y[order] == c][: keep[c]] for c in range(10)])
    return Arrays(x=x[rows], y=y[rows], x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test, num_classes=10)


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    return [
        Component(
            kind="dataset",
            name="digits",
            factory=digits,
            params={"imbalance": Float(1.0, 1.0, 200.0, log=True, minimum=1.0)},
        )
    ]
