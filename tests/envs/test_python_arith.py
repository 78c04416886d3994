"""The RL4VLM-rules scorer: the value Python's eval gave the joined formula, computed without eval."""

from __future__ import annotations

import math
import random
import warnings

import pytest

from vlmppo.envs.cards.python_arith import python_value

TOKENS = [str(n) for n in range(1, 11)] + ["+", "-", "*", "/", "(", ")", " "]


def python_reference(text: str):
    """Python's own value of ``text`` (the oracle: only digits, operators, parentheses and spaces are
    ever passed, and never two powers, so nothing can run long). eval strips leading blanks, compile
    does not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "(2)(3)" warns that an int is not callable
            value = eval(compile(text.lstrip(" \t"), "<formula>", "eval"), {"__builtins__": {}}, {})  # noqa: S307
    except Exception:
        return None
    return value if isinstance(value, int | float | complex) else None  # "()" is a tuple: never 24


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_agrees_with_python_on_random_token_strings():
    rng = random.Random(0)
    checked = 0
    for _ in range(15000):
        formula = [rng.choice(TOKENS) for _ in range(rng.randint(1, 9))]
        text = "".join(formula)
        if text.count("**") > 1:
            continue  # a tower such as 9**9**9 would keep Python busy for minutes
        assert same(python_value(formula), python_reference(text)), text
        checked += 1
    assert checked > 14000


@pytest.mark.parametrize(
    ("formula", "value"),
    [
        (["1", "1", "+", "1"], 12),  # joined digits: "1", "1" is 11
        (["10", "10", "/", "4", "/"], None),
        (["2", "*", "*", "3"], 8),  # two "*" make a power
        (["7", "/", "/", "2"], 3),  # two "/" make a floor division
        (["-", "2", "*", "*", "2"], -4),  # the power binds tighter than the leading sign
        (["+", "2", "*", "6"], 12),  # a leading sign is accepted
        (["2", "*", "-", "-", "6"], 12),
        (["2", " ", "*", "6"], 12),  # a blank token is a space
        (["2", "*", " ", "*", "6"], None),  # ... which splits "**"
        (["1", " ", "1"], None),
        (["8", "/", "(", "3", "-", "8", "/", "3", ")"], 23.99999999999999),  # float rounding
        (["(", ")"], None),
        (["(", "2", ")", "(", "3", ")"], None),
        (["6", "/", "(", "2", "-", "2", ")"], None),
        ([], None),
    ],
)
def test_values_match_what_eval_gave(formula, value):
    got = python_value(formula)
    assert same(got, value) and same(got, python_reference("".join(formula)))


def test_a_power_too_large_to_compute_is_refused_not_computed():
    # eval would compute 10**10**10 (ten billion digits) for hours; with four cards at most, nothing left
    # in a formula could bring it back to 24, so refusing it scores the same.
    assert python_value(["10", "*", "*", "10", "*", "*", "10"]) is None
    assert python_value(["10", "*", "*", "10", "10", "10"]) == 10**101010  # big but computable
