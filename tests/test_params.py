import pytest

from autonorm.params import Categorical, Choice, DomainError, Fixed, Float, FloatRange, Int, IntRange, parse_domain


@pytest.mark.parametrize(
    "param, raw, expected",
    [
        (Int(8, 1, 32), 4, Fixed(4)),
        (Int(8, 1, 32), [2, 4, 8], Categorical((2, 4, 8))),
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
