"""Rounds in the backend: the same scores give the harness's selections, round by round.

A fake Label Studio project and a real Redis; each round's scores are stored under the score key of
the adapter that selects it, as the scoring jobs would store them. The adapter itself is an empty
version folder (``adapter_sync.available`` only checks that it exists): training is not what is compared
here, and the real training path is covered by test_jobs.py::test_rounds_follow_annotations_not_trainings.
"""
import numpy as np
import pytest

from backend import wiring
from backend.project import load_project
from backend.queue_writer import write_queue
from backend.selection import round_due, start_next_round
from model.config import METRICS
from model.evaluation.harness import RunSpec
from tests.backend.fakes import TEST_PARAMS, FakeLabelStudio, backend_env, fake_ls  # noqa: F401 (fixtures)
from tests.model.test_evaluation_rounds import TASKS, FixedScoresExperiment, pool_rows, round_scores


def _store_scores(st, proj, adapter, ids, values) -> None:
    st.put_scores(proj.id, proj.score_key(adapter),
                  {t: {"response": f"draft {t}", "n_tokens": 3, **{m: float(v) for m in METRICS}}
                   for t, v in zip(ids, values)})


def _fresh_adapter(backend_env, pid: int, version: str) -> None:
    (backend_env.model_dir / str(pid) / version).mkdir(parents=True)


@pytest.mark.parametrize("budget, rounds, mpt", [(9, 2, 1), (12, 3, 2), (5, 2, 2)])
def test_backend_rounds_select_what_the_harness_selects(backend_env, monkeypatch, budget, rounds, mpt):
    rows = pool_rows(TASKS)
    ls = FakeLabelStudio(extra_params={**TEST_PARAMS, "budget": budget, "min_per_task": mpt, "rounds": rounds,
                                       "train_every": 0})
    pid = ls.add_project([r["prompt"] for r in rows], [{"task": r["task"]} for r in rows])
    monkeypatch.setattr(wiring, "make_client", lambda: ls)
    ids = [t["id"] for t in ls.tasks(pid)]
    for row, tid in zip(rows, ids):
        row["id"] = tid
    tables = round_scores(len(rows), rounds)

    exp = FixedScoresExperiment(rows, tables)
    spec = RunSpec("weighted_task_diversity", budget, seed=0, min_per_task=mpt, metric="sequence_prob", rounds=rounds)
    chosen, allocations = exp.multi_round(spec, np.arange(len(rows)))
    sizes = [sum(a.values()) for a in allocations]
    harness = [ids_.tolist() for ids_ in np.split(np.array(ids)[chosen], np.cumsum(sizes)[:-1])]

    st = wiring.store()
    proj = load_project(ls, st, pid)
    _store_scores(st, proj, None, ids, tables[0])
    backend = []
    for r in range(1, rounds + 1):
        state = write_queue(pid)
        sel = st.selection(pid)
        assert sel["round"] == state["round"] == r
        backend.append(sel["rounds"][-1]["order"])
        assert [rnd["order"] for rnd in sel["rounds"]] == backend  # earlier rounds never move
        # the queue: this round's open picks first, in selection order
        assert [ls.next_task(pid)["id"] for _ in range(1)] == [backend[-1][0]]
        *most, last = backend[-1]
        for t in most:
            ls.annotate(pid, t, "an answer")
            assert not st.close_pick(pid, t)
        proj = load_project(ls, st, pid)
        assert round_due(proj, sel) is None  # one pick still open: no new round, whatever trains
        assert start_next_round(st, proj, "v0099") is None
        ls.annotate(pid, last, "an answer", cancelled=r == 1)  # a skip ends a round too
        assert st.close_pick(pid, last) == (r < rounds)  # the webhook's trigger, only while rounds remain
        if r == rounds:
            break
        version = f"v{r:04d}"
        _fresh_adapter(backend_env, pid, version)
        proj = load_project(ls, st, pid)
        assert round_due(proj, sel) == r + 1
        assert start_next_round(st, proj, version) == r + 1
        proj = load_project(ls, st, pid)
        assert proj.round_adapters[-1] == version and round_due(proj, sel) is None
        taken = {t for picks in backend for t in picks}
        rest = [i for i, t in enumerate(ids) if t not in taken]
        _store_scores(st, proj, version, [ids[i] for i in rest], tables[r][rest])

    assert backend == harness
    assert [len(b) for b in backend] == sizes


def test_a_project_without_rounds_keeps_one_frozen_selection(fake_ls):
    st, pid = wiring.store(), fake_ls.project_id
    proj = load_project(fake_ls, st, pid)
    _store_scores(st, proj, None, [t["id"] for t in proj.usable], np.linspace(0.1, 0.9, len(proj.usable)))
    first = write_queue(pid)
    order = st.selection(pid)["order"]
    for t in order:
        fake_ls.annotate(pid, t, "x")
    assert not st.close_pick(pid, order[-1])  # no round to end: nothing is watched
    assert round_due(load_project(fake_ls, st, pid), st.selection(pid)) is None
    assert write_queue(pid)["round"] == first["round"] == 1 and st.selection(pid)["order"] == order


def test_a_round_planned_before_its_pool_was_scored_does_not_end(backend_env, monkeypatch):
    """Round 1 written while a score chunk failed: an empty selection is not a finished round."""
    ls = FakeLabelStudio(extra_params={**TEST_PARAMS, "rounds": 2, "train_every": 0})
    pid = ls.add_project([f"prompt {i}" for i in range(6)], [{"task": "a b".split()[i % 2]} for i in range(6)])
    monkeypatch.setattr(wiring, "make_client", lambda: ls)
    st = wiring.store()
    proj = load_project(ls, st, pid)
    _store_scores(st, proj, None, [t["id"] for t in proj.usable][:1], [0.5])  # 5 of 6 unscored
    write_queue(pid)
    sel = st.selection(pid)
    assert sel["rounds"][0]["unscored"] == 5 and len(sel["order"]) == 1
    ls.annotate(pid, sel["order"][0], "x")
    assert round_due(load_project(ls, st, pid), sel) is None
    _store_scores(st, proj, None, [t["id"] for t in proj.usable], np.linspace(0.1, 0.9, 6))
    write_queue(pid)  # the scores arrived: round 1 re-planned over the whole pool
    assert len(st.selection(pid)["order"]) == 2 and st.selection(pid)["rounds"][0]["unscored"] == 0
