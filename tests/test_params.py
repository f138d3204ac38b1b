import numpy as np
import optuna
import pytest

from autonorm.params import (
    Categorical,
    Choice,
    DomainError,
    Fixed,
    Float,
    FloatRange,
    Int,
    IntRange,
    Ordered,
    Str,
    parse_domain,
)


@pytest.mark.parametrize(
    "param, raw, expected",
    [
        (Int(8, 1, 32), 4, Fixed(4)),
        (Int(8, 1, 32), [2, 4, 8], Ordered((2, 4, 8))),
        (Float(0.1, 1e-3, 1.0), [0.3, 0.003, 1, 0.03], Ordered((0.003, 0.03, 0.3, 1.0))),
        (Int(8, 1, 32), [8, 2], Categorical((8, 2))),
        (Choice("sgd", ("sgd", "adam", "lamb")), ["sgd", "adam", "lamb"], Categorical(("sgd", "adam", "lamb"))),
        (Int(8, 1, 32), {"low": 2, "high": 16, "log": True}, IntRange(2, 16, True)),
        (Float(0.1, 1e-3, 1.0), {"loguniform": [0.01, 0.5]}, FloatRange(0.01, 0.5, True)),
        (Float(0.1, 1e-3, 1.0), {"uniform": [0, 1]}, FloatRange(0.0, 1.0, False)),
        (Float(0.1, 1e-3, 1.0), 3, Fixed(3.0)),
        (Choice("sgd", ("sgd", "adam")), ["adam"], Categorical(("adam",))),
    ],
)
def test_parse_domain_forms(param, raw, expected):
    assert parse_domain(param, raw) == expected


@pytest.mark.parametrize(
    "param, raw, message",
    [
        (Int(8, 1, 32), [], "empty list"),
        (Int(8, 1, 32), [2, 2], "repeated"),
        (Int(8, 1, 32), 2.5, "expected an integer"),
        (Int(8, 1, 32), True, "expected an integer"),
        (Float(0.1, 1e-3, 1.0), "fast", "expected a finite number"),
        (Float(0.1, 1e-3, 1.0), {"uniform": [0.5, 0.1]}, "empty or inverted range"),
        (Float(0.1, 1e-3, 1.0), {"uniform": [0.5, 0.5]}, "empty or inverted range"),
        (Float(0.1, 1e-3, 1.0), {"loguniform": [0, 1]}, "log range needs low > 0"),
        (Float(0.1, 1e-3, 1.0), {"uniform": [0.5]}, "expects a list [low, high]"),
        (Float(0.1, 1e-3, 1.0), {"between": [0, 1]}, "expected a value"),
        (Choice("sgd", ("sgd", "adam")), "rmsprop", "expected one of ['sgd', 'adam']"),
        (Choice("sgd", ("sgd", "adam")), {"low": 0, "high": 1}, "does not apply to a choice"),
    ],
)
def test_parse_domain_errors(param, raw, message):
    with pytest.raises(DomainError, match=None) as info:
        parse_domain(param, raw)
    assert message in str(info.value)


def test_an_integer_declared_with_values_searches_those_by_default_and_any_given_range_as_asked():
    """Group counts: ``search`` tries the powers of two that divide channel counts, not 3, 5, 6 or 7."""
    groups = Int(8, 1, 32, log=True, values=(1, 2, 4, 8, 16, 32))
    assert groups.default_domain() == Ordered((1, 2, 4, 8, 16, 32))
    assert parse_domain(groups, {"low": 2, "high": 12}) == IntRange(2, 12)
    assert str(groups) == "8 in {1 < 2 < 4 < 8 < 16 < 32}"


def test_a_parameter_shows_the_values_it_accepts_beyond_its_search_range():
    assert str(Float(0.1, 0.01, 0.5, log=True, minimum=0, maximum=1)) == "0.1 in [0.01, 0.5] log; accepts [0, 1]"
    assert str(Int(8, 1, 32, minimum=1)).endswith("; accepts >= 1") and str(Float(1, 0, 2)) == "1 in [0, 2]"


def test_ordered_choice_is_suggested_as_a_position_and_returns_the_value():
    domain = parse_domain(Float(0.1, 1e-3, 1.0), [1.0, 0.01, 0.1])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        value = domain.suggest(trial, "train.lr")
        assert trial.distributions["train.lr"] == optuna.distributions.IntDistribution(0, 2)
        assert value == (0.01, 0.1, 1.0)[trial.params["train.lr"]]
        study.tell(trial, value)
    assert {t.params["train.lr"] for t in study.trials} == {0, 1, 2}
    assert str(domain) == "{0.01 < 0.1 < 1.0}"


def test_tpe_learns_from_the_neighbours_of_an_ordered_choice():
    """Scores peak at one end: after a few trials TPE proposes the top values more often than a
    categorical choice lets it, because positions near the best ones count as evidence."""
    values = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

    def top_share(domain) -> float:
        sampler = optuna.samplers.TPESampler(seed=1, n_startup_trials=5)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(lambda t: float(values.index(domain.suggest(t, "x"))), n_trials=30)
        return sum(t.value >= 7 for t in study.trials[5:]) / 25

    assert top_share(Ordered(tuple(values))) > top_share(Categorical(tuple(values))) + 0.1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Float(5.0, 1e-8, 1e-3), r"default 5.0 is outside \[1e-08, 0.001\]"),
        (lambda: Float(1e-5, 0.0, 1e-3, log=True), "a log range needs low > 0"),
        (lambda: Float(0.1, 1.0, 0.01), "low 1.0 must be below high 0.01"),
        (lambda: Float(float("nan"), 0.0, 1.0), "expected a finite number, got nan"),
        (lambda: Int(2.5, 1, 8), "expected an integer, got 2.5"),
        (lambda: Int(4, 8, 8), "low 8 must be below high 8"),
        (lambda: Choice(3, (2, 4, 8)), "default 3 is not one of the choices"),
        (lambda: Choice("a", "abc"), "choices must be a non-empty tuple"),
        (lambda: Str(3), "the default must be text"),
        (lambda: Int(8, 1, 32, values=(1, 4, 2, 32)), "values must ascend, without repeats, from low to high"),
        (lambda: Int(8, 1, 32, values=(2, 8, 32)), "values must ascend, without repeats, from low to high"),
        (lambda: Int(8, 1, 32, values=(1, 4, 32)), "default 8 is not one of the values"),
        (lambda: Int(8, 1, 32, values=(1, 8, 32.5)), "values: expected an integer, got 32.5"),
    ],
)
def test_a_bad_declaration_is_refused_when_made(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_scalars_from_a_program_are_numbers():
    """A program computing its space with NumPy passes np.int64 / np.float32, which are not int / float."""
    assert Int(1, 1, 10).check(np.int64(3)) == 3 and type(Int(1, 1, 10).check(np.int64(3))) is int
    assert Float(0.1, 0.01, 1.0).check(np.float32(0.5)) == 0.5
    with pytest.raises(DomainError, match="expected an integer, got True"):
        Int(1, 1, 10).check(True)
