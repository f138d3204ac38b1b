"""EMAN: an eval-mode teacher whose parameters and batch-norm statistics are EMAs of the student's."""

import copy

import torch
import torch.nn.functional as F
from autonorm_plugins.eman import EMAN

import autonorm
from autonorm import TrainingMethod, build_model, load_spec
from autonorm.trainer import fit
from tests.helpers import registry_with_test_components
from tests.test_build import config
from tests.test_trainer import TRAIN


def student_and_eman(momentum, warmup=False):
    """The paper's constant m unless ``warmup``."""
    torch.manual_seed(0)
    model = build_model(config(model="small_cnn", depth=2, width=8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    eman = EMAN(momentum, warmup=warmup)
    eman.setup(model, optimizer)
    return model, optimizer, eman


def step(model, optimizer, eman, seed=1):
    torch.manual_seed(seed)
    x, y = torch.randn(16, 1, 8, 8) * 2 + 1, torch.randint(0, 10, (16,))
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    eman.after_step(model)


def test_update_is_the_ema_of_parameters_and_batchnorm_buffers_and_copies_the_step_count():
    model, optimizer, eman = student_and_eman(0.9)
    step(model, optimizer, eman)  # teacher and student differ from here on
    before = {k: v.clone() for k, v in eman.teacher.state_dict().items()}
    step(model, optimizer, eman, seed=2)
    student = model.state_dict()
    assert sum("running_mean" in k or "running_var" in k for k in student) == 4
    for key, t in eman.teacher.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert torch.equal(t, student[key]) and int(t) == 2
        else:
            assert not torch.equal(before[key], student[key]), key
            torch.testing.assert_close(t, 0.9 * before[key] + 0.1 * student[key], rtol=0, atol=1e-7, msg=key)


def test_k_updates_towards_a_frozen_student_follow_the_closed_form():
    model, optimizer, eman = student_and_eman(0.8)
    t0 = {k: v.clone() for k, v in eman.teacher.state_dict().items()}
    step(model, optimizer, eman)
    for _ in range(4):  # 5 updates in all, the student no longer changes
        eman.after_step(model)
    for key, t in eman.teacher.state_dict().items():
        if t.is_floating_point():
            expected = 0.8**5 * t0[key] + (1 - 0.8**5) * model.state_dict()[key]
            torch.testing.assert_close(t, expected, rtol=1e-6, atol=1e-6, msg=key)


def test_the_warm_up_follows_the_num_updates_rule_towards_a_frozen_student():
    model, optimizer, eman = student_and_eman(0.999, warmup=True)
    t0 = {k: v.clone() for k, v in eman.teacher.state_dict().items()}
    step(model, optimizer, eman)
    for _ in range(4):
        eman.after_step(model)
    kept = 1.0
    for t in range(5):
        kept *= min(0.999, (1 + t) / (10 + t))  # 0.1, 2/11, 3/12, ...
    for key, t in eman.teacher.state_dict().items():
        if t.is_floating_point():
            expected = kept * t0[key] + (1 - kept) * model.state_dict()[key]
            torch.testing.assert_close(t, expected, rtol=1e-6, atol=1e-6, msg=key)
    eman.updates = 10**5
    assert eman.current_momentum() == 0.999  # the paper's m once the run is long


def test_the_teacher_of_a_short_trial_leaves_its_initialization(digits):
    """With a constant 0.999 over 28 steps the evaluated teacher stays near its random start."""
    scores = {}
    for warmup in (True, False):
        torch.manual_seed(0)
        model = build_model(config(model="small_cnn", depth=2, width=16))
        scores[warmup] = fit(model, digits, TRAIN, 2, methods=[EMAN(warmup=warmup)]).metrics["val_accuracy"]
    assert scores[True] > 0.6 > 0.3 > scores[False]


def test_momentum_zero_makes_the_teacher_the_student_and_one_freezes_it():
    model, optimizer, eman = student_and_eman(0.0)
    step(model, optimizer, eman)
    assert eman.teacher.state_dict().keys() == model.state_dict().keys()
    for (key, t), s in zip(eman.teacher.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(t, s), key
    model, optimizer, frozen = student_and_eman(1.0)
    t0 = copy.deepcopy(frozen.teacher.state_dict())
    step(model, optimizer, frozen)
    for key, t in frozen.teacher.state_dict().items():
        assert torch.equal(t, t0[key]) or key.endswith("num_batches_tracked"), key


def test_teacher_stays_in_eval_mode_and_is_independent_of_the_batch():
    model, optimizer, eman = student_and_eman(0.5)
    for seed in range(3):
        step(model, optimizer, eman, seed)
    teacher = eman.eval_model(model)
    assert teacher is eman.teacher and teacher is not model
    assert model.training and not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    buffers = copy.deepcopy(teacher.state_dict())
    torch.manual_seed(5)
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        together = teacher(x)
        alone = torch.cat([teacher(x[i : i + 1]) for i in range(8)])
        shifted = teacher(torch.cat([x[:1], 10 * torch.randn(63, 1, 8, 8) + 3]))[:1]
        student_shifted = model(torch.cat([x[:1], 10 * torch.randn(63, 1, 8, 8) + 3]))[:1]
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(shifted, together[:1], rtol=0, atol=1e-6)
    assert not torch.allclose(student_shifted, model(x)[:1], atol=1e-3)  # a train-mode BN depends on the batch
    assert all(torch.equal(v, buffers[k]) for k, v in teacher.state_dict().items())  # forwards change no buffer


def test_student_training_is_unchanged_by_the_teacher():
    model, optimizer, eman = student_and_eman(0.9)
    torch.manual_seed(0)
    plain = build_model(config(model="small_cnn", depth=2, width=8))
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for seed in range(3):
        step(model, optimizer, eman, seed)
        step(plain, plain_opt, TrainingMethod(), seed)  # a method that does nothing
    for (key, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_search_with_eman():
    registry = registry_with_test_components()
    spec = load_spec(
        {
            "name": "eman",
            "model": {"backbone": "small_cnn", "depth": 1, "width": 4},
            "space": {"training": {"eman": {"momentum": 0.9}}},
            "train": {"epochs": 1},
            "search": {"trials": 1, "pruner": "none"},
        },
        registry,
    )
    (trial,) = autonorm.search(spec, registry=registry).trials
    assert trial.state == "complete" and trial.config.components["training"].name == "eman"


def test_the_teacher_is_torchs_averaged_model_with_buffers():
    """The reference the method notes name: AveragedModel(use_buffers=True) with the EMA rule."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model, optimizer, eman = student_and_eman(0.7)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.7), use_buffers=True)
    reference.update_parameters(model)  # its first update copies: the teacher's start, the student at setup
    for seed in range(4):
        step(model, optimizer, eman, seed)
        reference.update_parameters(model)
    ours = eman.teacher.state_dict()
    for key, value in reference.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(ours[key], value, rtol=1e-6, atol=1e-7, msg=key)
