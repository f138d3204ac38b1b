"""The embedded default dataset: scikit-learn's handwritten digits (1,797 images, 8x8, 10 classes).

It ships inside scikit-learn, so searches and tests run offline.

``imbalance`` > 1 gives a long-tailed variant: the training split keeps n_c = floor(n_0 * imbalance^(-c / (K - 1)))
samples of class c, at least 1 (the exponential profile of Cui et al., "Class-Balanced Loss Based on Effective
Number of Samples", CVPR 2019, arXiv:1901.05555; class 0 is the head, with n_0 = 113), while validation and
test stay balanced. Whole counts of at least 1 make the largest / smallest class ratio 113 / floor(113 /
imbalance), not ``imbalance`` itself: 10 gives 10.3, 20 gives 22.6, 50 gives 56.5, and anything above 56.5
gives 113, the tail class keeping a single sample. ``imbalance`` is therefore accepted up to 113 only.

The variant makes its own stratified split: 0.2 test with seed 0, then 0.2 validation with seed 1, as
autonorm's default split does under ``search.seed`` 0. A dataset's factory does not see ``search.seed``, so
the split stays the same under any other seed, where it differs from the default split's; the data
section's ``val_fraction`` and ``test_fraction`` do not apply to it either.
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
    ``imbalance`` > 1, a long-tailed training split (largest / smallest class = 113 / floor(113 / imbalance))."""
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
            # the head class's 113 training samples: a larger imbalance cannot shrink the tail below one
            params={"imbalance": Float(1.0, 1.0, 113.0, log=True, minimum=1.0, maximum=113.0)},
        )
    ]
