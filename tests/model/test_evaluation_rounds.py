"""The harness's rounds path runs model.rounds: same scores in, the rounds' selections out.

Training and re-scoring are replaced by a fixed score table per round (what an adapter would have
produced): the test is about which prompts each round selects, not about what LoRA learns. Real
training in the rounds path is covered by the smoke ablation test in test_evaluation.py.
"""
import numpy as np
import pytest

from model.config import METRICS, SelectionConfig
from model.evaluation.configs import smoke
from model.evaluation.harness import Experiment, RunSpec, _train_units
from model.rounds import prior_counts, round_budgets, select_round
from model.strategies import Pool


def round_scores(n: int, rounds: int, seed: int = 7) -> list[np.ndarray]:
    """One sequence_prob column per round over the whole pool (round 1 = the base model)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.001, 0.9, n) for _ in range(rounds)]


def pool_rows(tasks: dict) -> list[dict]:
    return [{"id": 100 + i, "task": t, "prompt": f"{t} prompt {i}", "reference": "x"}
            for i, t in enumerate(t for t, n in tasks.items() for _ in range(n))]


TASKS = {"alpha": 6, "beta": 5, "gamma": 7, "delta": 4}


class FixedScoresExperiment(Experiment):
    """The harness with training replaced: the adapter after round r scores the pool with table r."""

    def __init__(self, rows, tables):
        scores = [{"id": r["id"], **{m: float(tables[0][i]) for m in METRICS}} for i, r in enumerate(rows)]
        super().__init__(smoke(), lm=None, pool_rows=rows, test_rows=[], pool_scores=scores)
        self.tables, self.trained_on = tables, []

    def train(self, indices, seed):
        self.trained_on.append(sorted(int(i) for i in indices))
        return len(self.trained_on)  # the "adapter" is the round it ends

    def adapted(self, train_result):
        return train_result

    def rescore(self, lm, indices):
        return {m: self.tables[lm][indices] for m in METRICS}


def reference_rounds(rows, tables, cfg: SelectionConfig, rounds: int) -> list[list[int]]:
    """The definition applied by hand: round r over the rows no earlier round took, scores of table r-1."""
    ids, tasks = np.array([r["id"] for r in rows]), np.array([r["task"] for r in rows], dtype=object)
    taken, out = np.zeros(len(rows), dtype=bool), []
    for r in range(1, len(round_budgets(cfg.budget, rounds)) + 1):
        rest = np.flatnonzero(~taken)
        pool = Pool(ids=ids[rest].tolist(), tasks=tasks[rest], scores={cfg.metric: tables[r - 1][rest]})
        sel = select_round(pool, cfg, r, rounds, prior_counts(tasks[taken]))
        picked = rest[sel.order]
        taken[picked] = True
        out.append(ids[picked].tolist())
    return out


@pytest.mark.parametrize("budget, rounds, mpt", [(9, 2, 1), (12, 3, 2), (5, 2, 2), (1, 2, 1)])
def test_multi_round_selects_what_the_definition_does_round_by_round(budget, rounds, mpt):
    rows = pool_rows(TASKS)
    tables = round_scores(len(rows), rounds)
    exp = FixedScoresExperiment(rows, tables)
    spec = RunSpec("weighted_task_diversity", budget, seed=0, min_per_task=mpt, metric="sequence_prob", rounds=rounds)
    chosen, allocations = exp.multi_round(spec, np.arange(len(rows)))
    expected = reference_rounds(rows, tables, SelectionConfig(budget=budget, min_per_task=mpt, seed=0), rounds)
    sizes = [len(e) for e in expected]
    got = np.split(np.array([rows[i]["id"] for i in chosen]), np.cumsum(sizes)[:-1])
    assert [g.tolist() for g in got] == expected
    assert sizes == round_budgets(budget, rounds) and len(set(chosen.tolist())) == budget
    assert [sum(a.values()) for a in allocations] == sizes
    # each round boundary trained on every earlier pick
    assert exp.trained_on == [sorted(chosen[:c].tolist()) for c in np.cumsum(sizes)[:-1]]


def test_train_units_count_the_round_boundary_trainings():
    assert _train_units(40, 2) == 60 and _train_units(40, None) == 40 and _train_units(9, 3) == 9 + 3 + 6
