"""The micro-batch claim of the GN, FRN and BCN papers (Wu & He 2018; Singh & Krishnan 2019; Qiao et al.
2019), in miniature on digits. Each model is trained at batch size 2; then its normalization statistics are
gathered afresh by training-mode passes (no weight updates) over the same data in batches of 2 or of 32, and
its eval outputs on held-out digits are compared:

- BatchNorm: the eval outputs depend on the batch size the running statistics were gathered with, and at
  batch 2 on which batches happened to come last; training-mode outputs at batch 2 are far from eval ones.
- GroupNorm, GN + WS, FRN: no statistics; a sample's eval output is the same whatever the batch (alone, in
  another batch, after gathering at 2 or 32) and equals its training-mode output.
- BCN, micro-batch variant (``estimate=True``, its default update rate r = 0.01): its batch stage normalizes
  with estimated population statistics in training and eval alike, each step moving them r of the way to the
  batch's statistics (an average over about 1/r steps, not BN's last few batches). So at batch 2 a
  training-mode output differs from the eval output by one update step only, and the estimates gathered in
  batches of 2 or of 32 give eval outputs far closer than BN's do. (With r = 0.3, or with the BN stage of
  ``estimate=False``, BCN depends on tiny batches as BN does; the last test checks the latter.)
"""

import copy
import functools

import pytest
import torch
from sklearn.datasets import load_digits

from autonorm import TrialConfig, build_model

TRAIN, PROBE = slice(0, 1400), slice(1400, None)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # many tiny steps: threads only add overhead (and stall when the machine is busy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
    return x, torch.tensor(data.target)


def batches(batch_size: int, steps: int, seed: int):
    x, y = (t[TRAIN] for t in digits())
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        yield x[idx], y[idx]


def trained(norm: str, batch_size: int = 2, steps: int = 400, **params) -> torch.nn.Module:
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
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in batches(batch_size, steps, seed=0):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def gathered(model: torch.nn.Module, batch_size: int, seed: int = 1, steps: int = 600) -> torch.nn.Module:
    """A copy whose statistics are reset and re-estimated by training-mode passes in batches of ``batch_size``
    (600 steps: BCN's estimates at r = 0.01 keep 0.99^600 < 0.3% of their reset values)."""
    model = copy.deepcopy(model)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean") or name.endswith("num_batches_tracked"):
            buffer.zero_()
        elif name.endswith("running_var"):
            buffer.fill_(1)
    with torch.no_grad():
        for x, _ in batches(batch_size, steps, seed):
            model.train()(x)
    return model.eval()


def evaluated(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).eval()(digits()[0][PROBE])


def train_mode(model: torch.nn.Module, batch_size: int) -> torch.Tensor:
    """Training-mode outputs on the probe digits in batches of ``batch_size``, each batch on a fresh copy of
    ``model``: the step that a batch of this size takes from the model's statistics."""
    with torch.no_grad():
        return torch.cat([copy.deepcopy(model).train()(x) for x in digits()[0][PROBE].split(batch_size)])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def dependence(model: torch.nn.Module) -> dict[str, float]:
    """How much the eval outputs move with the gathering batch size, with the gathering batches, and how far
    training-mode outputs at batch 2 are from eval outputs."""
    at_2, at_32 = evaluated(gathered(model, 2)), evaluated(gathered(model, 32))
    return {
        "2 vs 32": rel(at_2, at_32),
        "batches of 2": rel(evaluated(gathered(model, 2, seed=2)), at_2),
        "batches of 32": rel(evaluated(gathered(model, 32, seed=2)), at_32),
        "train vs eval at 2": rel(train_mode(gathered(model, 2), 2), at_2),
    }


@pytest.fixture(scope="module")
def batchnorm() -> dict[str, float]:
    return dependence(trained("batchnorm"))


def test_batchnorm_eval_outputs_depend_on_statistics_from_tiny_batches(batchnorm):
    assert batchnorm["2 vs 32"] > 0.08, batchnorm
    # at batch 2 the running statistics are an average over the last few tiny batches: which ones, matters
    assert batchnorm["batches of 2"] > 0.08 and batchnorm["batches of 2"] > 3 * batchnorm["batches of 32"], batchnorm
    assert batchnorm["train vs eval at 2"] > 0.3, batchnorm


@pytest.mark.parametrize("norm, params", [("groupnorm", {"groups": 4}), ("gn_ws", {"groups": 4}), ("frn", {})])
def test_batch_independent_methods_are_unaffected_by_batch_size(norm, params):
    model = trained(norm, **params).eval()
    out = evaluated(model)
    probe = digits()[0][PROBE]
    with torch.no_grad():
        alone = torch.cat([model(x) for x in probe[:8].split(1)])
        other_batch = model(torch.cat([probe[:8], digits()[0][:24]]))[:8]
    assert torch.allclose(alone, out[:8], atol=1e-5) and torch.allclose(other_batch, out[:8], atol=1e-5)
    for batch_size in (2, 32):
        assert torch.allclose(evaluated(gathered(model, batch_size)), out, atol=1e-6)
    assert torch.allclose(train_mode(model, 2), out, atol=1e-6)


def test_bcn_micro_batch_variant_keeps_eval_consistent_with_its_estimates(batchnorm):
    model = trained("bcn", estimate=True, groups=4)
    estimators = [m for m in model.modules() if hasattr(m, "rate")]
    assert estimators and all(m.rate == 0.01 for m in estimators)  # the default update rate, in training too
    bcn = dependence(model)
    # training mode normalizes with the same estimates as eval, moved by one step of 1%
    assert bcn["train vs eval at 2"] < 0.03 and bcn["train vs eval at 2"] < batchnorm["train vs eval at 2"] / 10
    # estimates gathered from batches of 2 give eval outputs far closer to those of batches of 32 than BN's
    assert bcn["2 vs 32"] < batchnorm["2 vs 32"] / 2, (bcn, batchnorm)
    assert bcn["batches of 2"] < batchnorm["batches of 2"] / 2, (bcn, batchnorm)


def test_bcn_with_a_batchnorm_stage_is_batch_dependent_like_batchnorm():
    # the large-batch variant uses batch statistics in training: the micro-batch property is the estimates'
    model = trained("bcn", estimate=False, groups=4)
    assert rel(train_mode(gathered(model, 2), 2), evaluated(gathered(model, 2))) > 0.2
