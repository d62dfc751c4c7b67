"""The job chain against the fake Label Studio (tests.backend.fakes), a real Redis and real RQ workers.

The real Label Studio server is covered by the e2e test.
"""
import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

import json

from backend import enqueue, reconcile, wiring
from backend.settings import get_settings
from tests.backend.fakes import backend_env, fake_ls, run_worker  # noqa: F401 (fixtures)


def _serve_all(ls, pid):
    """Task ids in the order Label Studio's /next hands them out, annotating each one."""
    served = []
    while (task := ls.next_task(pid)) is not None:
        served.append(task["id"])
        ls.annotate(pid, task["id"], "done")
    return served


def test_scoring_and_queue_chain(fake_ls):
    ls, pid = fake_ls, fake_ls.project_id
    assert enqueue.enqueue_refresh(pid) is not None
    run_worker()
    st = wiring.store()
    state = st.queue(pid)
    v1 = state["model_version"]
    assert v1 == f"wtd-{pid}-1" and ls.activations == [(pid, v1)]
    assert ls.projects[pid]["sampling"] == "Uncertainty sampling"
    preds = ls.predictions_of(v1)
    assert len(preds) == 10 and sorted(p["score"] for p in preds) == [i / 10 for i in range(10)]
    assert all(p["result"][0]["from_name"] == "response" and p["result"][0]["type"] == "textarea"
               for p in preds)
    # budget 4: the selected tasks take positions 0-3, in the selection's order
    selection = st.selection(pid)
    by_score = [p["task"] for p in sorted(preds, key=lambda p: p["score"])]
    assert by_score[:4] == selection["order"] and state["selected"] == 4
    assert len(st.scored_ids(pid, state["score_key"])) == 10
    assert len(json.loads(st.jobs(pid)["score"])) == 3  # 10 tasks in chunks of 4

    # a second pass scores nothing new, keeps the (frozen) order and the version, and writes nothing:
    # every draft in the window is already the current adapter's (the base model's)
    enqueue.enqueue_refresh(pid)
    run_worker()
    state = st.queue(pid)
    assert state["model_version"] == v1 and state["pass"] == "window" and state["written"] == 0
    assert ls.activations == [(pid, v1)] and len(ls.predictions) == 10
    assert st.jobs(pid)["score"] == "[]"
    assert [p["task"] for p in sorted(ls.predictions_of(v1), key=lambda p: p["score"])] == by_score
    assert _serve_all(ls, pid) == by_score


def test_new_tasks_are_scored_and_queued_after_refresh(fake_ls):
    ls, pid = fake_ls, fake_ls.project_id
    enqueue.enqueue_refresh(pid)
    run_worker()
    st = wiring.store()
    new = ls.add_tasks(pid, ["write a question about the passage", "answer the question briefly"],
                       [{"task": "summarize"}, {"task": "translate"}])
    assert reconcile.reconcile_project(pid)["refresh"] is True  # lost TASKS_CREATED is caught
    run_worker()
    assert len(json.loads(st.jobs(pid)["score"])) == 1  # only the 2 new tasks were scored
    state = st.queue(pid)
    assert state["predictions"] == 12 and set(new) <= set(st.positions(pid, new))


def test_connect_puts_the_auth_header_on_the_webhook(fake_ls, monkeypatch):
    from backend.settings import get_settings
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "pw")
    get_settings.cache_clear()
    enqueue.enqueue_connect(fake_ls.project_id)
    run_worker()
    assert fake_ls.webhooks[fake_ls.project_id]["headers"] == {"Authorization": "Basic bHM6cHc="}
    assert wiring.store().queue(fake_ls.project_id) is not None


def test_coalesced_training_waits_for_the_running_one(fake_ls):
    pid = fake_ls.project_id
    first = enqueue.enqueue_train(pid)
    assert all(enqueue.enqueue_train(pid) is None for _ in range(20))
    first.set_status(JobStatus.STARTED)
    assert wiring.store().clear_pending(pid, "train", first.id)  # what the job does when it starts
    second = enqueue.enqueue_train(pid)
    assert second is not None and second.get_status() == JobStatus.DEFERRED
    assert enqueue.enqueue_train(pid) is None


def test_a_failing_job_lands_in_the_failed_registry(fake_ls, monkeypatch):
    def broken(project_id):
        raise RuntimeError("Label Studio API GET /api/tasks: 500 after 4 tries")
    monkeypatch.setattr(fake_ls, "annotated_tasks", broken)
    job = enqueue.enqueue_refresh(fake_ls.project_id)
    run_worker()
    registry = FailedJobRegistry(queue=Queue(get_settings().score_queue, connection=wiring.redis_conn()))
    assert job.id in registry.get_job_ids()
    assert "500 after 4 tries" in job.latest_result().exc_string


@pytest.mark.slow
def test_training_end_to_end(fake_ls):
    ls, pid = fake_ls, fake_ls.project_id
    enqueue.enqueue_refresh(pid)
    run_worker()
    st = wiring.store()
    base_order = [t for t in st.selection(pid)["order"]]
    for task_id in base_order[:3]:
        ls.annotate(pid, task_id, "a short answer")
    assert reconcile.reconcile_project(pid)["train"] is True  # 3 new annotations >= train_every
    run_worker()
    assert st.adapter(pid) == "v0001"
    assert (get_settings().model_dir / str(pid) / "v0001" / "adapter_config.json").exists()
    last = st.last_training(pid)
    assert last["version"] == "v0001" and last["n_examples"] == 3 and last["loss"] > 0
    meta = Job.fetch(st.jobs(pid)["train"], connection=st.conn).meta
    assert meta["step"] == meta["total"] == last["steps"] and meta["loss"] > 0
    # the window (draft_ahead 50 > 7 unlabeled) re-drafted from the adapter in place, same version;
    # rounds == 1 keeps the base model's order
    state = st.queue(pid)
    assert "|v0001|" in state["score_key"] and "|base|" in state["selection_key"]
    assert state["pass"] == "window" and state["redrafted"] == 7 and state["model_version"] == f"wtd-{pid}-1"
    assert len(ls.predictions) == 10
    assert st.selection(pid)["order"] == base_order
    assert ls.next_task(pid)["id"] == base_order[3]
    assert reconcile.reconcile_project(pid)["train"] is False  # nothing new since


@pytest.mark.slow
def test_rounds_follow_annotations_not_trainings(fake_ls):
    """Budget 4 in 2 rounds of 2 (model.rounds): a train_every training does not end round 1; its
    last pick's annotation (here a skip) does, and the adapter trained on every annotation selects
    round 2 among the rest."""
    ls, pid = fake_ls, fake_ls.project_id
    backend_id = next(iter(ls.backends))
    ls.backends[backend_id]["extra_params"]["rounds"] = 2
    enqueue.enqueue_refresh(pid)
    run_worker()
    st = wiring.store()
    first = st.selection(pid)
    assert first["round"] == 1 and len(first["order"]) == 2 and "|base|" in first["score_key"]
    off_queue = [t["id"] for t in ls.tasks(pid) if t["id"] not in first["order"]][:2]
    for task_id in [first["order"][0]] + off_queue:  # 3 annotations = train_every, round 1 still open
        ls.annotate(pid, task_id, "a short answer")
    assert reconcile.reconcile_project(pid)["train"] is True
    run_worker()
    assert st.adapter(pid) == "v0001" and st.round_adapters(pid) == {}
    assert st.last_training(pid)["started_round"] is None
    assert st.selection(pid)["rounds"] == first["rounds"] and st.queue(pid)["round"] == 1
    assert ls.next_task(pid)["id"] == first["order"][1]  # the rest of round 1 is served first

    # the last pick is skipped: round 1 is complete, with no new annotation to train on, so the
    # (duplicate) training is skipped and the adapter in force selects round 2
    ls.annotate(pid, first["order"][1], "", cancelled=True)
    checked = reconcile.reconcile_project(pid)
    assert checked["round_due"] == 2 and checked["train"] is True
    run_worker()
    assert st.adapter(pid) == "v0001" and st.round_adapters(pid) == {2: "v0001"}
    assert st.training_skips(pid)
    second = st.selection(pid)
    assert second["round"] == 2 and second["rounds"][0] == first["rounds"][0]
    picks = second["rounds"][1]["order"]
    assert len(picks) == 2 and not set(picks) & set(first["order"]) and "|v0001|" in second["score_key"]
    assert second["order"] == first["order"] + picks
    assert "round_due" not in reconcile.reconcile_project(pid)
    # the last round: its end starts nothing, later trainings only move the drafts
    for task_id in picks:
        ls.annotate(pid, task_id, "another answer")
    assert "round_due" not in reconcile.reconcile_project(pid)
    enqueue.enqueue_train(pid)
    run_worker()
    assert st.adapter(pid) == "v0002" and st.round_adapters(pid) == {2: "v0001"}
    assert st.selection(pid)["rounds"] == second["rounds"]


def test_a_lost_pending_job_does_not_block_its_kind_forever(fake_ls):
    pid = fake_ls.project_id
    lost = enqueue.enqueue_refresh(pid)
    assert enqueue.enqueue_refresh(pid) is None
    lost.cancel()  # e.g. removed by hand: it will never start, so it must not hold the flag
    again = enqueue.enqueue_refresh(pid)
    assert again is not None and wiring.store().pending(pid, "refresh")[0] == again.id


def test_reconcile_pass_reschedules_itself_once(fake_ls):
    pid = fake_ls.project_id
    result = reconcile.reconcile_all()  # nothing known yet: no project
    assert result == {}
    wiring.store().add_project(pid)
    assert reconcile.reconcile_all()[pid] == {"unscored": 10, "unqueued": 10, "new_annotations": 0,
                                         "stale_drafts": 0, "stale_versions": 0,
                                         "refresh": True, "train": False}
    assert enqueue.schedule_reconcile() is None  # already scheduled by the pass
    scheduled = ScheduledJobRegistry(queue=Queue(get_settings().score_queue, connection=wiring.redis_conn()))
    assert len(scheduled.get_job_ids()) == 2  # each pass (run by hand here) scheduled exactly one next pass


def _select_unlabelled_families(monkeypatch, **params) -> dict:
    """The stored selection of a 12-prompt project from two very different families, no task labels."""
    from tests.backend.fakes import TEST_PARAMS, FakeLabelStudio

    prompts = [f"translate the sentence number {i} into french please" for i in range(6)] + \
              [f"what is {i} plus {i + 3}? answer with a number" for i in range(6)]
    ls = FakeLabelStudio(extra_params={**TEST_PARAMS, **params})
    pid = ls.add_project(prompts, [{} for _ in prompts])
    monkeypatch.setattr(wiring, "make_client", lambda: ls)
    enqueue.enqueue_refresh(pid)
    run_worker()
    return wiring.store().selection(pid)


@pytest.mark.slow
def test_tasks_are_inferred_when_no_task_has_the_task_field(backend_env, monkeypatch):
    """Prompts from two very different families and no task labels: the queue still covers both clusters."""
    from tests.backend.fakes import TEST_PARAMS

    selection = _select_unlabelled_families(monkeypatch, task_field="task")
    assert all(t.startswith("cluster-") for t in selection["task_sizes"])
    assert len(selection["task_sizes"]) >= 2 and sum(selection["task_sizes"].values()) == 12
    assert len(selection["order"]) == TEST_PARAMS["budget"]


@pytest.mark.slow
def test_k_center_reuses_the_embeddings_that_inferred_the_tasks(backend_env, monkeypatch):
    """The registry says k_center needs embeddings: the ones computed for task inference are reused."""
    import model.embeddings
    from tests.backend.fakes import TEST_PARAMS

    calls = []
    real = model.embeddings.embed
    monkeypatch.setattr(model.embeddings, "embed", lambda texts, **kw: calls.append(len(texts)) or real(texts, **kw))
    selection = _select_unlabelled_families(monkeypatch, strategy="k_center")
    assert calls == [12]  # once, for the clusters and the k-center picks together
    assert len(selection["order"]) == TEST_PARAMS["budget"] == len(set(selection["order"]))


def test_selection_depends_only_on_the_settings_the_strategy_uses():
    from backend.project_config import parse_extra_params
    from backend.selection import SELECTION_SETTINGS, selection_settings

    assert selection_settings(parse_extra_params({"strategy": "task_diversity"})) == SELECTION_SETTINGS
    assert selection_settings(parse_extra_params({"strategy": "random"})) == SELECTION_SETTINGS - {"min_per_task"}
