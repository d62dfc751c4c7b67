"""model.rounds: budgets per round, the topped-up base, when the next round is due, the queue."""
import numpy as np
import pytest

from model.config import SelectionConfig
from model.rounds import next_round, prior_counts, queue_order, round_budgets, round_config, select_round
from model.strategies import Pool, select


@pytest.mark.parametrize("budget, rounds, expected", [
    (20, 2, [10, 10]), (5, 2, [3, 2]), (10, 3, [4, 3, 3]), (1, 3, [1]), (0, 2, [0]), (7, 1, [7])])
def test_round_budgets_split_evenly_earlier_rounds_take_the_remainder(budget, rounds, expected):
    assert round_budgets(budget, rounds) == expected


@pytest.mark.parametrize("budget, rounds", [(-1, 2), (5, 0), (2.0, 2), (True, 2)])
def test_round_budgets_reject_bad_counts(budget, rounds):
    with pytest.raises(ValueError):
        round_budgets(budget, rounds)


def _pool(sizes: dict, confidence: dict) -> Pool:
    tasks = [t for t, n in sizes.items() for _ in range(n)]
    return Pool(ids=list(range(len(tasks))), tasks=np.array(tasks),
                scores={"sequence_prob": np.array([confidence[t] for t in tasks])})


def test_round_two_tops_up_the_base_round_one_could_not_give():
    sizes = {t: 4 for t in "abcdef"}
    conf = {"a": 0.01, "b": 0.02, "c": 0.5, "d": 0.6, "e": 0.7, "f": 0.8}
    cfg = SelectionConfig(budget=8, min_per_task=1, seed=0)
    first = select_round(_pool(sizes, conf), cfg, 1, 2)
    assert sum(first.allocation.values()) == 4  # 4 < 6 bases: one each to the 4 least confident
    assert first.allocation == {"a": 1, "b": 1, "c": 1, "d": 1, "e": 0, "f": 0}
    prior = prior_counts(t for t, n in first.allocation.items() for _ in range(n))
    rest = _pool({t: 4 - prior.get(t, 0) for t in sizes}, conf)
    second = select_round(rest, cfg, 2, 2, prior)
    # e and f still lack their base: round 2 gives it first, then weights the remaining 2
    assert second.allocation["e"] >= 1 and second.allocation["f"] >= 1 and sum(second.allocation.values()) == 4
    # without the top-up, the weights alone would have sent everything to a and b
    plain = select(rest, SelectionConfig(budget=4, min_per_task=0, seed=0))
    assert plain.allocation["e"] == plain.allocation["f"] == 0


def test_round_two_is_weighted_only_when_round_one_covered_every_base():
    conf = {"a": 0.1, "b": 0.9}  # two tasks of 10; round 1 took the bases, 2 each
    cfg = SelectionConfig(budget=8, min_per_task=2, seed=0)
    prior = {"a": 2, "b": 2}
    assert round_config(cfg, 2, 2, prior).budget == 4
    second = select_round(_pool({"a": 8, "b": 8}, conf), cfg, 2, 2, prior)
    assert second.allocation == select(_pool({"a": 8, "b": 8}, conf),
                                       SelectionConfig(budget=4, min_per_task=0, seed=0)).allocation


def test_one_round_is_plain_select():
    pool = _pool({"a": 5, "b": 3}, {"a": 0.2, "b": 0.4})
    cfg = SelectionConfig(budget=5, min_per_task=1, seed=3)
    assert select_round(pool, cfg, 1, 1).order == select(pool, cfg).order


def test_round_config_checks_the_round_number_and_round_one_prior():
    cfg = SelectionConfig(budget=4)
    with pytest.raises(ValueError, match="round 3 of 2"):
        round_config(cfg, 3, 2)
    with pytest.raises(ValueError, match="round 1"):
        round_config(cfg, 1, 2, {"a": 1})
    assert round_config(SelectionConfig(budget=1), 1, 2).budget == 1  # one prompt: one round


def test_next_round_waits_until_every_pick_of_the_planned_rounds_is_done():
    assert next_round([], set(), 10, 2) == 1
    planned = [[1, 2, 3, 4, 5]]
    assert next_round(planned, {1, 2, 3, 4}, 10, 2) is None
    assert next_round(planned, {1, 2, 3, 4, 5, 99}, 10, 2) == 2
    assert next_round(planned + [[6, 7, 8, 9, 10]], set(range(20)), 10, 2) is None  # the last round
    assert next_round([[1]], {1}, 1, 2) is None  # a budget of 1 has one round
    assert next_round([[]], set(), 10, 2) == 2  # an empty round (no pool left) is done at once


def test_queue_order_serves_the_open_picks_first_then_the_rest_by_id():
    assert queue_order([[5, 3], [9, 1]], {1, 2, 3, 4, 9, 10}) == [3, 9, 1, 2, 4, 10]
    assert queue_order([], {4, 2}) == [2, 4]


def test_a_round_short_of_prompts_leaves_its_budget_to_the_next():
    cfg = SelectionConfig(budget=10, min_per_task=0)
    assert [round_config(cfg, r, 3, {"a": n} if n else None).budget for r, n in ((1, 0), (2, 4), (3, 7))] == [4, 3, 3]
    assert round_config(cfg, 2, 3, {"a": 1}).budget == 5  # round 1 found only 1 prompt
    assert round_config(cfg, 3, 3, {"a": 12}).budget == 0  # never below 0


def test_allocate_array_takes_one_base_per_task():
    from model.allocation import allocate_array
    counts = allocate_array([4, 4, 4], 5, np.array([2, 0, 1]), np.array([1.0, 1.0, 1.0]))
    assert counts.sum() == 5 and (counts >= [2, 0, 1]).all()
    assert allocate_array([4, 4, 4], 2, np.array([2, 0, 1])).tolist() == [1, 0, 1]  # short of the bases: even
    for bad in (np.array([1, 1]), np.array([1.5, 1, 1]), np.array([-1, 0, 0])):
        with pytest.raises(ValueError, match="min_per_task"):
            allocate_array([4, 4, 4], 3, bad)
