"""Issue #8: a retraining pass re-drafts a window, not the project; old versions are deleted.

Against the fake Label Studio (tests.backend.fakes), a real Redis, real RQ workers and the tiny model;
the real Label Studio is covered by tests/e2e (rows <= 1.2 N, the window after two passes).
"""
import pytest
from fastapi.testclient import TestClient

from backend import enqueue, reconcile, wiring
from backend.labelstudio import LabelStudioError
from backend.server import app
from tests.backend.fakes import TEST_PARAMS, backend_env, fake_ls, run_worker  # noqa: F401 (fixtures)

AHEAD = 3


@pytest.fixture
def ls(fake_ls):
    """The 10-task project, all of it selected, a window of 3, training only when asked."""
    params = fake_ls.backends[next(iter(fake_ls.backends))]["extra_params"]
    params.update(budget=10, draft_ahead=AHEAD, train_every=0)
    enqueue.enqueue_refresh(fake_ls.project_id)
    run_worker()
    return fake_ls


def _texts(ls, pid) -> dict[int, str]:
    """task -> draft text of its prediction under the active version (exactly one each)."""
    version = ls.projects[pid]["model_version"]
    out = {}
    for p in ls.predictions_of(version):
        assert p["task"] not in out, f"two predictions of {version} on task {p['task']}"
        out[p["task"]] = p["result"][0]["value"]["text"][0]
    return out


def _adapter_drafts(pid, tasks) -> dict[int, str]:
    st = wiring.store()
    return {t: r["response"] for t, r in st.scores(pid, st.queue(pid)["score_key"], tasks).items()}


def _train(pid):
    enqueue.enqueue_train(pid)
    run_worker()


@pytest.mark.slow
def test_the_window_follows_the_annotators(ls):
    pid, st = ls.project_id, wiring.store()
    order = st.selection(pid)["order"]
    v1 = st.queue(pid)["model_version"]
    base = _texts(ls, pid)
    assert len(order) == 10 and len(base) == 10
    for t in order[:2]:
        ls.annotate(pid, t, "a short answer")
    _train(pid)

    # only the next 3 unlabeled tasks are re-drafted, in place: same version, same scores, same order
    state = st.queue(pid)
    assert state["pass"] == "window" and state["model_version"] == v1 and state["redrafted"] == AHEAD
    assert "|v0001|" in state["score_key"]
    now = _texts(ls, pid)
    assert {t: now[t] for t in order[2:5]} == _adapter_drafts(pid, order[2:5])
    assert {t: now[t] for t in order[5:]} == {t: base[t] for t in order[5:]}
    assert set(st.scores(pid, state["score_key"])) == set(order[2:5])  # no model time beyond the window
    assert len(ls.predictions) == 10 and ls.activations[-1] == (pid, v1)
    assert ls.next_task(pid)["id"] == order[2]

    # an annotator takes the next task: the window moves on by one (the reconcile pass catches it too)
    ls.annotate(pid, order[2], "answer")
    assert reconcile.reconcile_project(pid)["stale_drafts"] == 1
    run_worker()
    now = _texts(ls, pid)
    assert st.queue(pid)["redrafted"] == 1 and now[order[5]] == _adapter_drafts(pid, [order[5]])[order[5]]
    assert now[order[6]] == base[order[6]]

    # a skip keeps the task unlabeled, so in the window; an annotation far down does not move it
    ls.annotate(pid, order[3], "", cancelled=True)
    ls.annotate(pid, order[8], "out of order")
    out = reconcile.reconcile_project(pid)
    assert out["stale_drafts"] == 0 and out["unqueued"] == 0 and out["refresh"] is False

    # a deleted annotation puts its task back at its place, at the front: re-drafted in place
    ls.delete_annotations(pid, order[0])
    assert reconcile.reconcile_project(pid)["refresh"] is True
    run_worker()
    state = st.queue(pid)
    assert state["model_version"] == v1 and state["pass"] == "window" and state["redrafted"] == 1
    assert _texts(ls, pid)[order[0]] == _adapter_drafts(pid, [order[0]])[order[0]]
    assert ls.next_task(pid)["id"] == order[0]

    # a changed setting re-selects: a new version, the old one deleted once the new one is active;
    # tasks outside the new window keep their last draft
    ls.backends[next(iter(ls.backends))]["extra_params"]["seed"] = 1
    enqueue.enqueue_refresh(pid)
    run_worker()
    state = st.queue(pid)
    v2 = state["model_version"]
    assert v2 != v1 and state["pass"] == "full" and state["stale_versions"] == 0
    assert set(ls.model_versions(pid)) == {v2} and ls.projects[pid]["model_version"] == v2
    queue = [p["task"] for p in sorted(ls.predictions_of(v2), key=lambda p: p["score"])]
    assert set(queue) == set(order) - {order[1], order[2], order[8]}
    redrafted = set(queue[:AHEAD]) | {order[0], order[3], order[4], order[5]}
    now, adapter = _texts(ls, pid), _adapter_drafts(pid, queue)
    assert {t: now[t] for t in queue} == {t: adapter[t] if t in redrafted else base[t] for t in queue}

    # an annotation deleted on a task that had no place in the written queue: written again, whole
    ls.delete_annotations(pid, order[8])
    assert reconcile.reconcile_project(pid)["unqueued"] == 1
    run_worker()
    v3 = st.queue(pid)["model_version"]
    assert v3 != v2 and set(ls.model_versions(pid)) == {v3} and order[8] in _texts(ls, pid)


@pytest.mark.slow
def test_draft_ahead_zero_never_redrafts(ls):
    pid, st = ls.project_id, wiring.store()
    ls.backends[next(iter(ls.backends))]["extra_params"]["draft_ahead"] = 0
    before = _texts(ls, pid)
    ls.annotate(pid, st.selection(pid)["order"][0], "a short answer")
    _train(pid)
    assert st.queue(pid)["redrafted"] == 0 and st.adapter(pid) == "v0001"
    assert {t: x for t, x in _texts(ls, pid).items()} == {t: before[t] for t in _texts(ls, pid)}
    assert "update_prediction" not in ls.calls


def test_a_pass_reads_the_window_not_the_project(ls):
    """Reads grow with the annotated tasks and the window, never with N or past passes."""
    pid = ls.project_id
    more = ls.add_tasks(pid, [f"summarize paragraph {i}" for i in range(40)], [{"task": "summarize"}] * 40)
    enqueue.enqueue_refresh(pid)
    run_worker()  # the import: only the 40 new tasks are read
    assert ls.tasks_read == 10 + 40
    for _ in range(3):
        ls.tasks_read = 0
        enqueue.enqueue_refresh(pid)
        run_worker()
        assert ls.tasks_read <= AHEAD
    assert "tasks" not in ls.calls and len(ls.predictions) == 50 and set(more) <= set(_texts(ls, pid))


def test_version_cleanup_survives_label_studio_failing_half_way(ls, monkeypatch):
    pid, st = ls.project_id, wiring.store()
    v1 = st.queue(pid)["model_version"]
    params = ls.backends[next(iter(ls.backends))]["extra_params"]

    # the import of a new version dies half-way: the old version stays active and whole
    real_import = ls.import_predictions

    def dies_half_way(project, preds):
        real_import(project, preds[:4])
        raise LabelStudioError("Label Studio POST import failed after 1 try: HTTP 500", 500)
    monkeypatch.setattr(ls, "import_predictions", dies_half_way)
    params["budget"] = 9
    enqueue.enqueue_refresh(pid)
    run_worker()
    assert ls.projects[pid]["model_version"] == v1 and len(ls.predictions_of(v1)) == 10
    assert st.queue(pid)["model_version"] == v1
    monkeypatch.setattr(ls, "import_predictions", real_import)

    # the next pass writes a new version; deleting the old ones fails after the first
    real_delete, deleted = ls.delete_model_version, []

    def fails_second(project, version):
        if deleted:
            raise LabelStudioError("Label Studio DELETE model-versions failed after 5 tries: HTTP 503", 503)
        deleted.append(version)
        return real_delete(project, version)
    monkeypatch.setattr(ls, "delete_model_version", fails_second)
    enqueue.enqueue_refresh(pid)
    run_worker()
    state = st.queue(pid)
    v3 = state["model_version"]
    assert ls.projects[pid]["model_version"] == v3 and len(_texts(ls, pid)) == 10
    assert state["stale_versions"] == 1 and len(ls.model_versions(pid)) == 2
    assert [p["task"] for p in sorted(ls.predictions_of(v3), key=lambda p: p["score"])][:9] == \
        st.selection(pid)["order"]

    # the reconcile pass sees the leftover and the next pass finishes the clean-up; nothing is lost
    monkeypatch.setattr(ls, "delete_model_version", real_delete)
    assert reconcile.reconcile_project(pid)["refresh"] is True
    run_worker()
    assert ls.model_versions(pid) == {v3: 10} and st.queue(pid)["stale_versions"] == 0
    assert st.queue(pid)["model_version"] == v3


def test_a_version_label_studio_does_not_follow_is_never_deleted(ls):
    """If Label Studio follows another version than the one we recorded (a pass died between
    activating and recording), the next pass writes and activates a new one before deleting any."""
    pid, st = ls.project_id, wiring.store()
    v1 = st.queue(pid)["model_version"]
    ls.import_predictions(pid, [{"task": p["task"], "model_version": f"wtd-{pid}-99", "score": p["score"],
                                 "result": p["result"]} for p in ls.predictions_of(v1)])
    ls.activate_queue(pid, f"wtd-{pid}-99")
    enqueue.enqueue_refresh(pid)
    run_worker()
    v = st.queue(pid)["model_version"]
    assert v not in (v1, f"wtd-{pid}-99") and ls.projects[pid]["model_version"] == v
    assert set(ls.model_versions(pid)) == {v} and len(_texts(ls, pid)) == 10


def test_an_annotation_inside_the_window_moves_it_at_once(ls):
    pid, st = ls.project_id, wiring.store()
    order = st.selection(pid)["order"]
    client = TestClient(app)
    hook = {"action": "ANNOTATION_CREATED", "project": {"id": pid}}
    refresh = lambda: st.is_pending(pid, "refresh")  # noqa: E731
    client.post("/webhook", json={**hook, "annotation": {"id": 1, "task": order[9], "was_cancelled": False}})
    assert not refresh()  # far down the queue: the window stays
    client.post("/webhook", json={**hook, "annotation": {"id": 2, "task": order[1], "was_cancelled": True}})
    assert not refresh()  # a skip
    client.post("/webhook", json={**hook, "annotation": {"id": 3, "task": order[0], "was_cancelled": False}})
    assert refresh()
    assert st.annotated_ids(pid) == {order[9], order[0]}  # live progress, before any pass


def test_live_progress_per_task_label(ls):
    pid, st = ls.project_id, wiring.store()
    alloc = st.selection(pid)["allocation"]
    assert st.progress(pid) == {label: {"annotated": 0, "allocated": n} for label, n in alloc.items()}
    first = st.selection(pid)["order"][0]
    label = next(t["data"]["task"] for t in ls.tasks_by_project[pid] if t["id"] == first)
    TestClient(app).post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": pid},
                                           "annotation": {"id": 1, "task": first}})
    assert st.progress(pid)[label] == {"annotated": 1, "allocated": alloc[label]}
    assert TestClient(app).get("/metrics").json()["projects"][str(pid)]["progress"][label]["annotated"] == 1


def test_a_big_import_scores_only_the_new_tasks_and_reselects_once(ls, monkeypatch):
    """Label Studio sends one TASKS_CREATED per import request; a burst of them writes one new version."""
    from rq import SimpleWorker

    import model.scoring
    from backend.settings import get_settings
    pid, st = ls.project_id, wiring.store()
    scored = []
    real = model.scoring.score_rows
    monkeypatch.setattr(model.scoring, "score_rows", lambda rows, *a, **k: scored.extend(r["id"] for r in rows)
                        or real(rows, *a, **k))
    worker = SimpleWorker(get_settings().queues, connection=wiring.redis_conn())
    new = []
    for part in range(3):  # each part lands while the previous part's jobs are still queued
        new += ls.add_tasks(pid, [f"translate line {part}-{i}" for i in range(6)], [{"task": "translate"}] * 6)
        enqueue.enqueue_refresh(pid)  # the import's TASKS_CREATED
        worker.work(burst=True, max_jobs=2)
    run_worker()
    assert sorted(scored) == sorted(new)  # each new task scored once, no old one again
    versions = [v for _, v in ls.activations]
    assert len(versions) == 2 and st.queue(pid)["model_version"] == versions[-1]  # one re-selection
    assert set(ls.model_versions(pid)) == {versions[-1]} and len(_texts(ls, pid)) == 28
