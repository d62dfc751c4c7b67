"""The one budget type: parsing (text and numbers) and the one rounding rule."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.budget import Budget


@pytest.mark.parametrize("text, value", [("16", 16), ("1", 1), (" 3 ", 3), ("0.05", 0.05), ("1.0", 1.0),
                                         ("1e-1", 0.1), (7, 7), (0.25, 0.25)])
def test_parse(text, value):
    b = Budget.parse(text)
    assert b.value == value and type(b.value) is type(value)
    assert Budget.parse(b) is b


@pytest.mark.parametrize("bad, reason", [("0", ">= 1"), ("-3", ">= 1"), (0, ">= 1"), ("1.5", "0 < f <= 1"),
                                         ("0.0", "0 < f <= 1"), ("nan", "0 < f <= 1"), ("inf", "0 < f <= 1"),
                                         ("ten", "not a number"), ("", "not a number"), (True, "integer >= 1"),
                                         (None, "integer >= 1"), ([3], "integer >= 1")])
def test_parse_rejects(bad, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        Budget.parse(bad)


def test_one_is_a_count_and_one_point_zero_the_pool():
    assert Budget.parse("1").resolve(80) == 1
    assert Budget.parse("1.0").resolve(80) == 80


def test_resolve_rounds_a_fraction_up_and_caps_at_the_pool():
    assert Budget(0.25).resolve(10) == 3  # 2.5 -> 3 (Python's round would give 2)
    assert Budget(0.25).resolve(14) == 4  # 3.5 -> 4
    assert Budget(0.01).resolve(5) == 1  # never 0 for a positive fraction of a non-empty pool
    assert Budget(0.07).resolve(100) == 7  # on the decimal written, not 7.000000000000001
    assert Budget(0.1).resolve(0) == 0
    assert Budget(30).resolve(10) == 10
    # The committed `small` results: 5/10/20/50 % of 80. round(f * n) gives the same counts there.
    assert [Budget(f).resolve(80) for f in (0.05, 0.1, 0.2, 0.5)] == [4, 8, 16, 40]
    assert [max(1, round(f * 80)) for f in (0.05, 0.1, 0.2, 0.5)] == [4, 8, 16, 40]


@given(st.floats(min_value=1e-6, max_value=1.0), st.integers(min_value=0, max_value=10 ** 6))
def test_resolve_is_at_least_the_fraction_and_less_than_one_more(f, n):
    k = Budget(f).resolve(n)
    exact = float(f) * n
    assert k <= n and k >= min(n, math.floor(exact))
    assert k <= math.ceil(exact * (1 + 1e-12)) and (n == 0 or k >= 1)


@pytest.mark.parametrize("bad", [-1, 2.5, None, True])
def test_resolve_rejects_a_bad_pool_size(bad):
    with pytest.raises(ValueError, match="pool size"):
        Budget(3).resolve(bad)
