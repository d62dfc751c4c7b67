"""``select`` end to end on rows and on Pools: allocation, queue, within-task order, errors."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from model.allocation import allocate, confidence_weights
from model.config import SelectionConfig
from model.kcenter import k_center
from model.queue import interleave
from model import strategies
from model.strategies import STRATEGIES, Pool, get_strategy, select


def scored_rows(sizes=(12, 8, 20), probs=(0.9, 0.5, 0.1)):
    rows = []
    for t, (n, p) in enumerate(zip(sizes, probs)):
        for j in range(n):
            rows.append({"id": f"r{len(rows)}", "task": f"task{t}", "prompt": f"prompt {t} {j}",
                         "sequence_prob": p * (0.9 + 0.01 * j), "mean_logprob": math.log(p) - 0.01 * j,
                         "mean_entropy": 1 - p + 0.01 * j, "min_margin": p})
    return rows


class FakeEmbed:
    """Deterministic 'embeddings' per prompt text; counts calls so tests see when it runs."""

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=6) for t in texts])


def tasks_of(rows, sel):
    return [rows[i]["task"] for i in sel.order]


def test_registry_matches_config():
    assert {get_strategy(name).name for name in STRATEGIES} == set(STRATEGIES)
    with pytest.raises(ValueError, match="unknown strategy 'nope'") as e:
        get_strategy("nope")
    assert all(name in str(e.value) for name in STRATEGIES)


@pytest.mark.parametrize("metric", ["sequence_prob", "mean_logprob", "mean_entropy", "min_margin"])
def test_weighted_task_diversity_allocates_queues_and_fills(metric):
    rows = scored_rows()
    sel = select(rows, SelectionConfig(budget=24, metric=metric))
    assert sel.task_sizes == {"task0": 12, "task1": 8, "task2": 20}
    weights = dict(zip(sel.task_confidence, confidence_weights(list(sel.task_confidence.values()))))
    assert sel.allocation == allocate(sel.task_sizes, 24, 5, weights)
    assert sel.allocation["task2"] > sel.allocation["task1"] >= sel.allocation["task0"] >= 5
    assert len(set(sel.order)) == 24
    assert tasks_of(rows, sel) == interleave(sel.allocation)  # queue = Tijdeman over the allocation


def test_task_diversity_spreads_a_small_budget_by_seed():
    """Fewer prompts than tasks: the seed, not the label order, decides which tasks get one."""
    rows = [{"id": i, "task": f"t{i % 20:02d}"} for i in range(80)]
    chosen = {}
    for seed in range(6):
        sel = select(rows, SelectionConfig(budget=4, strategy="task_diversity", min_per_task=1, seed=seed))
        chosen[seed] = frozenset(t for t, c in sel.allocation.items() if c)
        assert len(chosen[seed]) == 4 and sum(sel.allocation.values()) == 4
        again = select(rows, SelectionConfig(budget=4, strategy="task_diversity", min_per_task=1, seed=seed))
        assert again.order == sel.order
    assert len(set(chosen.values())) == 6
    assert set().union(*chosen.values()) - {"t00", "t01", "t02", "t03"}


def test_registry_needs():
    from model.strategies import needs
    fields = {(s, w): needs(SelectionConfig(budget=1, strategy=s, within=w)).fields(SelectionConfig(budget=1))
              for s in STRATEGIES for w in ("random", "least_confident", "diverse")}
    assert fields[("random", "diverse")] == fields[("task_diversity", "random")] == ()
    assert fields[("weighted_task_diversity", "random")] == ("sequence_prob",)
    assert fields[("task_diversity", "least_confident")] == ("sequence_prob",)
    assert fields[("k_center", "random")] == fields[("task_diversity", "diverse")] == ("prompt",)
    assert fields[("weighted_task_diversity", "diverse")] == ("sequence_prob", "prompt")
    assert [s for s in STRATEGIES if get_strategy(s).uses_min_per_task] == ["weighted_task_diversity",
                                                                            "task_diversity"]


def test_task_confidence_is_the_mean_transformed_metric():
    rows = scored_rows()
    sel = select(rows, SelectionConfig(budget=10, metric="mean_logprob"))
    task1 = [math.exp(r["mean_logprob"]) for r in rows if r["task"] == "task1"]
    assert sel.task_confidence["task1"] == pytest.approx(sum(task1) / len(task1))


def test_task_diversity_is_uniform():
    sel = select(scored_rows(), SelectionConfig(budget=24, strategy="task_diversity"))
    assert sel.allocation == {"task0": 8, "task1": 8, "task2": 8}
    sel = select(scored_rows(sizes=(3, 30, 30)), SelectionConfig(budget=24, strategy="task_diversity"))
    assert sel.allocation == {"task0": 3, "task1": 11, "task2": 10}  # capped task's share re-shared


def test_within_random_is_seeded():
    rows = scored_rows()
    first = select(rows, SelectionConfig(budget=15, seed=1))
    assert select(rows, SelectionConfig(budget=15, seed=1)) == first
    assert select(rows, SelectionConfig(budget=15, seed=2)).order != first.order
    assert select(rows, SelectionConfig(budget=15, seed=2)).allocation == first.allocation


@pytest.mark.parametrize("metric, least_first", [("sequence_prob", min), ("mean_entropy", max)])
def test_within_least_confident(metric, least_first):
    rows = scored_rows()
    sel = select(rows, SelectionConfig(budget=21, metric=metric, within="least_confident"))
    for task, count in sel.allocation.items():
        picked = [rows[i][metric] for i in sel.order if rows[i]["task"] == task]
        pool = sorted((r[metric] for r in rows if r["task"] == task), reverse=least_first is max)
        assert picked == pool[:count]  # the least confident, least confident first


def test_within_diverse_is_k_center_inside_each_task():
    rows, embed = scored_rows(), FakeEmbed()
    sel = select(rows, SelectionConfig(budget=21, within="diverse", seed=3), embed_fn=embed)
    assert embed.calls == 1
    vectors = embed([r["prompt"] for r in rows])
    for task, count in sel.allocation.items():
        members = [i for i, r in enumerate(rows) if r["task"] == task]
        expected = [members[p] for p in k_center(vectors[members], count, seed=3)]
        assert [i for i in sel.order if rows[i]["task"] == task] == expected


def test_random_strategy_is_a_seeded_permutation():
    rows = [{k: v for k, v in r.items() if k != "sequence_prob"} for r in scored_rows()]
    sel = select(rows, SelectionConfig(budget=9, strategy="random", seed=4))
    assert sel.order == np.random.default_rng(4).permutation(len(rows))[:9].tolist()
    assert sum(sel.allocation.values()) == 9
    assert sel.allocation == {t: tasks_of(rows, sel).count(t) for t in sel.task_sizes}
    assert sel.task_confidence == {}  # no metric column: nothing to report


def test_k_center_strategy_orders_by_pick():
    rows, embed = scored_rows(), FakeEmbed()
    sel = select(rows, SelectionConfig(budget=7, strategy="k_center", seed=2), embed_fn=embed)
    assert sel.order == k_center(embed([r["prompt"] for r in rows]), 7, seed=2)
    pool = Pool(ids=[r["id"] for r in rows], tasks=[r["task"] for r in rows],
                embeddings=embed([r["prompt"] for r in rows]))
    calls = embed.calls
    assert select(pool, SelectionConfig(budget=7, strategy="k_center", seed=2), embed_fn=embed).order == sel.order
    assert embed.calls == calls  # a pool with embeddings is not embedded again


def test_embeddings_only_when_needed():
    embed = FakeEmbed()
    select(scored_rows(), SelectionConfig(budget=5), embed_fn=embed)
    select(scored_rows(), SelectionConfig(budget=5, strategy="random"), embed_fn=embed)
    assert embed.calls == 0


def test_pool_from_arrays_matches_rows():
    rows = scored_rows()
    pool = Pool(ids=np.arange(len(rows)), tasks=np.array([r["task"] for r in rows]),
                scores={"sequence_prob": np.array([r["sequence_prob"] for r in rows])})
    cfg = SelectionConfig(budget=17)
    assert select(pool, cfg) == select(rows, cfg)


def test_budget_edges():
    rows = scored_rows(sizes=(2, 3))
    assert select(rows, SelectionConfig(budget=0)).order == []
    assert select(rows, SelectionConfig(budget=0)).allocation == {"task0": 0, "task1": 0}
    assert sorted(select(rows, SelectionConfig(budget=99)).order) == list(range(5))
    for strategy in ("random", "task_diversity"):
        assert sorted(select(rows, SelectionConfig(budget=99, strategy=strategy)).order) == list(range(5))
    for budget in (-1, 2.0, True):
        with pytest.raises(ValueError, match="budget"):
            select(rows, SelectionConfig(budget=budget))


def test_integer_task_labels_are_kept():
    rows = [{**r, "task": int(r["task"][-1])} for r in scored_rows()]
    assert select(rows, SelectionConfig(budget=15)).allocation == {0: 5, 1: 5, 2: 5}
    with pytest.raises(ValueError, match="task labels"):
        select([{**rows[0], "task": "x"}] + rows[1:], SelectionConfig(budget=3))


@pytest.mark.parametrize("cfg, drop, field", [
    (SelectionConfig(budget=3, strategy="k_center"), "prompt", "'prompt'"),
    (SelectionConfig(budget=3, within="diverse"), "prompt", "'prompt'"),
    (SelectionConfig(budget=3), "sequence_prob", "'sequence_prob'"),
    (SelectionConfig(budget=3, strategy="task_diversity", within="least_confident"), "sequence_prob",
     "'sequence_prob'"),
    (SelectionConfig(budget=3, strategy="random"), "task", "'task'"),
])
def test_missing_fields_are_named(cfg, drop, field):
    rows = scored_rows()
    rows[4] = {k: v for k, v in rows[4].items() if k != drop}
    with pytest.raises(ValueError, match=f"row 5: field {field} missing"):
        select(rows, cfg, embed_fn=FakeEmbed())


def test_bad_values_and_pools_are_rejected():
    rows = scored_rows()
    rows[2]["sequence_prob"] = "high"
    with pytest.raises(ValueError, match="row 3: field 'sequence_prob'"):
        select(rows, SelectionConfig(budget=3))
    with pytest.raises(ValueError, match="'sequence_prob' missing"):
        select(Pool(ids=[1, 2], tasks=["a", "b"]), SelectionConfig(budget=1))
    with pytest.raises(ValueError, match="'prompt' missing"):
        select(Pool(ids=[1, 2], tasks=["a", "b"]), SelectionConfig(budget=1, strategy="k_center"))
    with pytest.raises(ValueError, match="finite"):
        Pool(ids=[1, 2], tasks=["a", "b"], scores={"sequence_prob": [0.5, float("nan")]})
    with pytest.raises(ValueError, match="within"):
        select(scored_rows(), SelectionConfig(budget=3, within="sideways"))


@pytest.mark.parametrize("multiplier", [1_000_003, 0])  # 0: labels collide, the exact fallback runs
def test_string_grouping_matches_np_unique(monkeypatch, multiplier):
    monkeypatch.setattr(strategies, "_HASH_MULTIPLIER", np.uint64(multiplier))
    tasks = np.array(["b", "a", "", "ab", "a\u00e9", "b", "ab", "bb"] * 3)
    labels, inverse, sizes = np.unique(tasks, return_inverse=True, return_counts=True)
    groups = strategies._group_strings(tasks)
    assert groups.labels == labels.tolist()
    assert groups.inverse.tolist() == inverse.tolist() and groups.sizes.tolist() == sizes.tolist()


@pytest.mark.slow
def test_real_embeddings_contract_and_k_center_select():
    from model.embeddings import _model, embed

    texts = ["Translate to French: good morning", "Translate to French: good night",
             "Sum 17 and 25", "What is 17 plus 25?"]
    X = embed(texts)
    assert X.dtype == np.float32 and X.shape == (4, 384)
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert X[0] @ X[1] > X[0] @ X[2] and X[2] @ X[3] > X[2] @ X[1]  # meaning, not noise
    assert np.allclose(embed(texts[:1]), X[:1], atol=1e-5)
    assert embed([]).shape == (0, 384)
    assert _model.cache_info().currsize == 1 and _model.cache_info().misses == 1  # loaded once
    rows = [{"id": i, "task": "t", "prompt": p} for i, p in enumerate(texts)]
    sel = select(rows, SelectionConfig(budget=2, strategy="k_center"))
    assert {"Translate" in rows[i]["prompt"] for i in sel.order} == {True, False}  # one of each topic
