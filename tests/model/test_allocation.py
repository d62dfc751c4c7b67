"""Budget allocation: hand-checked examples and the properties the spec promises."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.allocation import CONFIDENCE_FLOOR, allocate, confidence_weights, example_confidence, task_confidence


def by_confidence(confidence: dict) -> dict:
    return dict(zip(confidence, confidence_weights(list(confidence.values()))))


def test_hand_checked_weighted_share():
    # c = 0.8, 0.4, 0.2 -> w = 1.25, 2.5, 5 (sum 8.75). Base 5 each = 15; 21 - 15 = 6 left:
    # 6 * w / 8.75 = 0.857, 1.714, 3.429 -> floors 0, 1, 3 (4 used), 2 left by largest remainder:
    # a (.857) and b (.714) -> extras 1, 2, 3.
    weights = by_confidence({"a": 0.8, "b": 0.4, "c": 0.2})
    assert allocate({"a": 10, "b": 10, "c": 10}, 21, 5, weights) == {"a": 6, "b": 7, "c": 8}


def test_hand_checked_cap_is_reshared():
    # Base 5 each = 15; 30 - 15 = 15 left. a's share 15 * 10/12 = 12.5 > its room 1: a is capped at
    # 6 and the other 14 go to b and c in their 1:1 ratio -> 7 each.
    weights = {"a": 10.0, "b": 1.0, "c": 1.0}
    assert allocate({"a": 6, "b": 30, "c": 30}, 30, 5, weights) == {"a": 6, "b": 12, "c": 12}


def test_hand_checked_budget_below_bases_spreads_evenly():
    # Bases 5, 3, 5, 5 = 18 > B = 10: a common level 10 / 4 = 2.5 (b's cap 3 not binding) -> 2 each,
    # the 2 units left go to the least confident tasks first: b (0.1), then d (0.3).
    weights = by_confidence({"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.3})
    assert allocate({"a": 10, "b": 3, "c": 10, "d": 10}, 10, 5, weights) == {"a": 2, "b": 3, "c": 2, "d": 3}
    # a's size (1) caps it below the level: the 6 others spread over b and c -> 3 each.
    assert allocate({"a": 1, "b": 10, "c": 10}, 7, 5) == {"a": 1, "b": 3, "c": 3}


def test_hand_checked_no_base_is_plain_proportional():
    # min_per_task 0: 8 split 1:3 -> 2, 6.
    assert allocate({"a": 100, "b": 100}, 8, 0, {"a": 1.0, "b": 3.0}) == {"a": 2, "b": 6}


def test_equal_remainders_go_to_the_earlier_task():
    # 16 - 15 = 1 unit, shares 1/3 each: the tie goes to the first task in the given order.
    assert allocate({"a": 10, "b": 10, "c": 10}, 16) == {"a": 6, "b": 5, "c": 5}
    assert allocate({"c": 10, "b": 10, "a": 10}, 16) == {"c": 6, "b": 5, "a": 5}


def test_a_seed_decides_which_tied_tasks_get_the_extra_units():
    """Equal weights and a budget below the number of tasks: every remainder ties. Without a seed
    the first tasks win; with one, which tasks win depends on the seed and only on the seed."""
    sizes = {f"t{i:02d}": 4 for i in range(20)}
    assert [t for t, c in allocate(sizes, 4, 1).items() if c] == ["t00", "t01", "t02", "t03"]
    winners = {seed: frozenset(t for t, c in allocate(sizes, 4, 1, seed=seed).items() if c) for seed in range(10)}
    assert all(len(w) == 4 for w in winners.values())
    assert len(set(winners.values())) > 5  # different seeds, different tasks
    assert all(allocate(sizes, 4, 1, seed=s) == allocate(sizes, 4, 1, seed=s) for s in range(10))  # per seed: fixed
    # Above the bases too: 16 - 15 = 1 unit with equal shares, and the seed picks its task.
    assert {next(t for t, c in allocate({"a": 10, "b": 10, "c": 10}, 16, seed=s).items() if c == 6)
            for s in range(20)} == {"a", "b", "c"}


def test_the_seed_never_overrides_the_weights():
    # A tie in remainders still goes to the higher weight (the less confident task) first, whatever the seed.
    weights = {"a": 1.0, "b": 1.0, "c": 2.0, "d": 2.0}
    for seed in range(20):
        alloc = allocate({t: 5 for t in weights}, 3, 1, weights, seed=seed)
        assert alloc["c"] == alloc["d"] == 1 and alloc["a"] + alloc["b"] == 1
    assert {allocate({t: 5 for t in weights}, 3, 1, weights, seed=s)["a"] for s in range(20)} == {0, 1}


def test_budget_over_pool_and_zero_budget():
    assert allocate({"a": 3, "b": 4}, 100) == {"a": 3, "b": 4}
    assert allocate({"a": 3, "b": 4}, 0) == {"a": 0, "b": 0}
    assert allocate({}, 5) == {}


@pytest.mark.parametrize("budget", [-1, 2.5, True, "3", None])
def test_budget_must_be_a_non_negative_int(budget):
    with pytest.raises(ValueError, match="budget"):
        allocate({"a": 3}, budget)


def test_bad_weights_and_sizes_are_rejected():
    with pytest.raises(ValueError, match="weight"):
        allocate({"a": 3, "b": 3}, 4, weights={"a": 1.0})
    with pytest.raises(ValueError, match="weights"):
        allocate({"a": 3}, 4, weights={"a": 0.0})
    with pytest.raises(ValueError, match="size"):
        allocate({"a": -3}, 4)


def test_metric_transforms_make_lower_mean_less_confident():
    assert task_confidence({"t": [0.2, 0.6]}, "sequence_prob") == {"t": pytest.approx(0.4)}
    assert task_confidence({"t": [0.2, 0.6]}, "min_margin") == {"t": pytest.approx(0.4)}
    # exp(mean_logprob): per-token geometric-mean probability.
    assert task_confidence({"t": [math.log(0.5), math.log(0.25)]}, "mean_logprob") == {"t": pytest.approx(0.375)}
    # exp(-entropy): zero entropy is fully confident, more entropy is less.
    assert task_confidence({"t": [0.0, math.log(2)]}, "mean_entropy") == {"t": pytest.approx(0.75)}
    high_entropy, low_entropy = example_confidence([2.0, 0.1], "mean_entropy")
    assert high_entropy < low_entropy
    with pytest.raises(ValueError, match="metric"):
        example_confidence([1.0], "perplexity")


def test_zero_confidence_gets_a_finite_largest_weight():
    w = confidence_weights([0.0, 0.5])
    assert w[0] == 1 and w[1] == CONFIDENCE_FLOOR / 0.5 and np.isfinite(w).all()
    assert allocate({"a": 50, "b": 50}, 20, 5, {"a": w[0], "b": w[1]})["a"] == 15


def test_tiny_confidences_keep_their_ratios():
    """Long responses give sequence_prob far below any fixed epsilon; 1/c must still order the tasks."""
    w = confidence_weights([2e-34, 4e-34, 1e-300])
    assert w == pytest.approx([1e-300 / 2e-34, 1e-300 / 4e-34, 1.0])
    c = {"a": 1e-20, "b": 2e-20, "c": 4e-20}
    weights = dict(zip(c, confidence_weights(list(c.values()))))
    # base 5 each = 15; 21 more shared 4:2:1 -> 12, 6, 3
    assert allocate({t: 100 for t in c}, 36, 5, weights) == {"a": 17, "b": 11, "c": 8}


def iterative_shares(sizes, budget, base, weights):
    """The spec's wording, literally: share in proportion to w among tasks with room, cap, repeat."""
    room = [n - min(base, n) for n in sizes]
    extra = [0.0] * len(sizes)
    left = min(budget, sum(sizes)) - sum(min(base, n) for n in sizes)
    while left > 1e-9:
        open_ = [i for i in range(len(sizes)) if room[i] - extra[i] > 1e-9]
        total_w = sum(weights[i] for i in open_)
        given = 0.0
        for i in open_:
            add = min(left * weights[i] / total_w, room[i] - extra[i])
            extra[i] += add
            given += add
        left -= given
    return [min(base, n) + e for n, e in zip(sizes, extra)]


cases = st.integers(1, 10).flatmap(lambda t: st.tuples(
    st.lists(st.integers(0, 40), min_size=t, max_size=t),
    st.lists(st.floats(0.01, 1.0), min_size=t, max_size=t),
    st.integers(0, 300),
    st.integers(0, 8),
))


@settings(max_examples=200, deadline=None)
@given(cases)
def test_allocation_properties(case):
    sizes, confidence, budget, base = case
    tasks = [f"t{i}" for i in range(len(sizes))]
    weights = dict(zip(tasks, confidence_weights(confidence)))
    alloc = allocate(dict(zip(tasks, sizes)), budget, base, weights)
    a = [alloc[t] for t in tasks]
    w = [weights[t] for t in tasks]
    bases = [min(base, n) for n in sizes]
    assert sum(a) == min(budget, sum(sizes))  # exact total
    assert all(0 <= x <= n for x, n in zip(a, sizes))  # cap
    assert allocate(dict(zip(tasks, sizes)), budget, base, weights) == alloc  # deterministic
    if budget >= sum(bases):
        assert all(x >= b for x, b in zip(a, bases))  # base
        # within one unit of the real water-filling share, as the literal procedure computes it
        shares = iterative_shares(sizes, budget, base, w)
        assert all(abs(x - s) < 1 + 1e-6 for x, s in zip(a, shares))
        for i in range(len(tasks)):  # weights order: a less confident task with room never gets fewer extras
            for j in range(len(tasks)):
                if w[i] > w[j] and a[i] < sizes[i]:
                    assert a[i] - bases[i] >= a[j] - bases[j]
    else:  # spread evenly under the bases, leftovers to the least confident
        assert all(x <= b for x, b in zip(a, bases))
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                if a[i] < bases[i]:  # a task below its cap trails no one by more than one...
                    assert a[i] >= a[j] - 1
                    if w[i] > w[j]:  # ...and no one less in need
                        assert a[i] >= a[j]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=8), st.integers(0, 200), st.integers(0, 6))
def test_equal_weights_differ_by_at_most_one_among_tasks_with_room(sizes, budget, base):
    alloc = list(allocate({i: n for i, n in enumerate(sizes)}, budget, base).values())
    for i, x in enumerate(alloc):
        if x < sizes[i]:
            assert all(x >= y - 1 for y in alloc)
