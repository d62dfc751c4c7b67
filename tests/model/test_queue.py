"""Tijdeman interleaving: every prefix keeps every task within 1 - 1/(2(n-1)) of its share."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import queue
from model.queue import interleave, interleave_indices


def worst_prefix_deviation(alloc: dict, sequence: list) -> float:
    total = sum(alloc.values())
    seen = dict.fromkeys(alloc, 0)
    worst = 0.0
    for k, task in enumerate(sequence, 1):
        seen[task] += 1
        worst = max(worst, max(abs(seen[t] - k * alloc[t] / total) for t in alloc))
    return worst


def check_sequence(alloc: dict) -> None:
    sequence = interleave(alloc)
    assert sorted(map(str, sequence)) == sorted(str(t) for t, c in alloc.items() for _ in range(c))
    n = sum(c > 0 for c in alloc.values())
    if n >= 2:
        assert worst_prefix_deviation(alloc, sequence) <= 1 - 1 / (2 * (n - 1)) + 1e-12


def test_hand_checked_two_tasks():
    # B = 3, p = 2/3, 1/3, d = 1/2. Step 1: a is owed 2/3 >= 1/2, b only 1/3 -> a. Step 2: a is owed
    # 4/3 - 1 = 1/3 < 1/2, b 2/3 -> b. Step 3: a.
    assert interleave({"a": 2, "b": 1}) == ["a", "b", "a"]


def test_hand_checked_earliest_deadline_wins():
    # B = 4, n = 3, d = 1/4; deadlines (count + 1 - d) / p. Step 1: all owed >= 1/4; deadlines
    # x 3, y 3, z 1.5 -> z. Step 2: z owed 0; x and y tie at 3 -> x (first). Step 3: y (3) before
    # z (3.5). Step 4: z.
    assert interleave({"x": 1, "y": 1, "z": 2}) == ["z", "x", "y", "z"]


def test_degenerate_allocations():
    assert interleave({}) == []
    assert interleave({"only": 3}) == ["only"] * 3
    assert interleave({"a": 0, "b": 2, "c": 0}) == ["b", "b"]
    assert interleave({"a": 0}) == []


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError, match="'a'"):
        interleave({"a": -1})
    with pytest.raises(ValueError):
        interleave({"a": 1.5})


def test_every_small_allocation_exhaustively():
    for n in (2, 3):
        for counts in itertools.product(range(7), repeat=n):
            check_sequence(dict(zip("abc", counts)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12))
def test_prefix_property(counts):
    check_sequence({f"t{i}": c for i, c in enumerate(counts)})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=2, max_size=8))
def test_exact_fraction_deadlines_give_the_same_sequence(counts):
    fast = interleave_indices(counts).tolist()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(queue, "FLOAT_DEADLINE_LIMIT", 0)  # force the exact Fraction path
        assert interleave_indices(counts).tolist() == fast


def test_deterministic_and_label_agnostic():
    alloc = {"x": 7, "y": 3, "z": 11, "w": 1}
    assert interleave(alloc) == interleave(alloc)
    renamed = interleave({i: c for i, c in enumerate(alloc.values())})
    assert renamed == [list(alloc).index(t) for t in interleave(alloc)]
