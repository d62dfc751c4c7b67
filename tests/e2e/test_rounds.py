"""Issue #12 against a real Label Studio: rounds end when their picks are annotated, not at a training.

40 prompts in 4 tasks, budget 20 in 2 rounds, min_per_task 2, train_every 4. Round 1 queues 10
(not the whole budget); the training after 4 annotations leaves the round open; the 10th annotation
ends it, the forced training's adapter re-scores the other 30 and round 2 selects 10 there, exactly
as ``model.rounds.select_round`` does from the stored scores (bases already given: no second base).
"""
from __future__ import annotations

import numpy as np
import pytest

from backend.labelstudio import LabelStudioClient
from backend.store import Store
from model.config import SelectionConfig
from model.rounds import prior_counts, select_round
from tests.e2e.test_end_to_end import (TEMPLATES, active_predictions, backend, connected_project,  # noqa: F401
                                       e2e_redis, run_worker, serve_and_annotate)

pytestmark = pytest.mark.e2e

BUDGET, MIN_PER_TASK, TRAIN_EVERY, ROUNDS = 20, 2, 4, 2
EXTRA_PARAMS = {"budget": BUDGET, "min_per_task": MIN_PER_TASK, "train_every": TRAIN_EVERY, "rounds": ROUNDS,
                "task_field": "task", "max_new_tokens": 8, "epochs": 1, "batch_size": 4, "r": 4}


def recomputed(st: Store, project: int, tasks: list[dict], r: int, key: str, earlier: list[int]) -> list[int]:
    """Round r's picks from the stored scores, by the model-side definition."""
    by_id = {t["id"]: t for t in tasks}
    pool = [t for t in sorted(tasks, key=lambda t: t["id"]) if t["id"] not in set(earlier)]
    scores = st.scores(project, key, [t["id"] for t in pool])
    rows = [{"id": t["id"], "task": t["data"]["task"], "prompt": t["data"]["prompt"], **scores[t["id"]]} for t in pool]
    sel = select_round(rows, SelectionConfig(budget=BUDGET, min_per_task=MIN_PER_TASK), r, ROUNDS,
                       prior_counts(by_id[t]["data"]["task"] for t in earlier))
    return [rows[i]["id"] for i in sel.order]


def test_rounds_end_when_their_picks_are_annotated(label_studio, backend, e2e_redis, tmp_path):
    backend_url, env, adapters, backend_log = backend
    client = LabelStudioClient(*label_studio)
    st = Store(e2e_redis)
    project = connected_project(client, backend_url, "e2e-rounds", EXTRA_PARAMS)
    run_worker(env, tmp_path, e2e_redis)

    tasks = client.tasks(project)
    sel = st.selection(project)
    first = sel["rounds"][0]["order"]
    assert sel["round"] == 1 and len(first) == BUDGET // ROUNDS  # not the whole budget
    assert first == recomputed(st, project, tasks, 1, sel["rounds"][0]["score_key"], [])
    assert min(sel["rounds"][0]["allocation"].values()) >= MIN_PER_TASK

    # 4 annotations: a train_every training, and round 1 stays open
    assert serve_and_annotate(client, project, TRAIN_EVERY) == first[:TRAIN_EVERY]
    run_worker(env, tmp_path, e2e_redis)
    assert st.last_training(project) is not None, backend_log.read_text()[-3000:]
    assert st.round_adapters(project) == {} and st.selection(project)["rounds"] == sel["rounds"]

    # the rest of round 1: its last annotation's webhook forces the training that starts round 2
    assert serve_and_annotate(client, project, len(first) - TRAIN_EVERY) == first[TRAIN_EVERY:]
    run_worker(env, tmp_path, e2e_redis)
    started = st.round_adapters(project)
    assert list(started) == [2] and st.last_training(project)["started_round"] == 2, backend_log.read_text()[-3000:]
    sel = st.selection(project)
    assert sel["round"] == 2 and sel["rounds"][0]["order"] == first and started[2] in sel["score_key"]
    second = sel["rounds"][1]["order"]
    assert len(second) == BUDGET - len(first) and not set(second) & set(first)
    assert second == recomputed(st, project, client.tasks(project), 2, sel["score_key"], first)
    _, preds = active_predictions(client, project)
    assert [p["task"] for p in sorted(preds, key=lambda p: p["score"])][:len(second)] == second
    assert serve_and_annotate(client, project, len(second)) == second
    run_worker(env, tmp_path, e2e_redis)
    assert list(st.round_adapters(project)) == [2]  # no third round
    totals = np.bincount([sorted(TEMPLATES).index(t["data"]["task"]) for t in client.tasks(project)
                          if t["id"] in set(first + second)], minlength=4)
    assert totals.sum() == BUDGET and totals.min() >= MIN_PER_TASK

