"""Jobs of dead workers (backend.watchdog), duplicate trainings and unknown projects, on a real Redis and RQ.

A worker that dies is played here by taking a job exactly as a worker does (dequeue, execution, STARTED)
and then doing nothing; ``reap_abandoned(at=...)`` looks past the 4 missed beats instead of sleeping.
tests/backend/test_worker_death.py kills real worker processes.
"""
import time

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

from backend import enqueue, reconcile, watchdog, wiring
from backend.metrics import all_metrics
from backend.settings import READ_BY, Settings, get_settings
from backend.worker import BEATS_TO_DEATH, BackendWorker
from tests.backend.fakes import backend_env, fake_ls, run_worker  # noqa: F401 (fixtures)
from tests.e2e.labelstudio_server import label_studio  # noqa: F401 (fixture)

HEARTBEAT_S = 10


def _after_death() -> float:
    """When the reaper looks: 4 missed beats and a second from now."""
    return time.time() + BEATS_TO_DEATH * HEARTBEAT_S + 1


def _taken_by_a_worker_that_dies(queue_name: str) -> Job:
    """The next job of the queue, taken as a worker takes it (announced for 4 beats); then no beat comes."""
    conn = wiring.redis_conn()
    worker = BackendWorker([queue_name], connection=conn, heartbeat_s=HEARTBEAT_S)
    job, _ = Queue.dequeue_any([wiring.queue(queue_name)], None, connection=conn)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    return job


def test_a_training_whose_worker_died_is_failed_and_the_one_deferred_behind_it_runs(fake_ls):
    pid, st, s = fake_ls.project_id, wiring.store(), get_settings()
    first = enqueue.enqueue_train(pid)
    assert _taken_by_a_worker_that_dies(s.train_queue).id == first.id
    st.clear_pending(pid, "train", first.id)  # the job's first act (job_started)
    second = enqueue.enqueue_train(pid)  # a webhook while it "runs": waits behind it
    assert first.get_status() == JobStatus.STARTED and second.get_status() == JobStatus.DEFERRED
    assert watchdog.reap_abandoned() == []  # its beats are not overdue yet
    assert watchdog.reap_abandoned(at=_after_death()) == [first.id]
    assert first.get_status() == JobStatus.FAILED
    assert "AbandonedJobError" in first.latest_result().exc_string
    assert second.get_status() == JobStatus.QUEUED  # no longer waits behind the dead one
    assert wiring.queue(s.train_queue).job_ids == [second.id]  # the retry coalesced into it


def test_a_dead_training_with_nothing_behind_it_is_enqueued_again(fake_ls):
    pid, st, s = fake_ls.project_id, wiring.store(), get_settings()
    first = enqueue.enqueue_train(pid)
    _taken_by_a_worker_that_dies(s.train_queue)
    st.clear_pending(pid, "train", first.id)
    assert watchdog.reap_abandoned(at=_after_death()) == [first.id]
    again = Job.fetch(st.jobs(pid)["train"], connection=st.conn)
    assert again.id != first.id and again.get_status() == JobStatus.QUEUED
    assert again.func_name == enqueue.TRAIN and again.args == (pid,)


def test_a_dead_reconcile_pass_is_scheduled_again(fake_ls):
    s, st = get_settings(), wiring.store()
    wiring.queue(s.score_queue).enqueue_call(enqueue.RECONCILE)
    job = _taken_by_a_worker_that_dies(s.score_queue)
    st.clear_reconcile()  # the pass's first act; it would have scheduled the next one at its end
    assert watchdog.reap_abandoned(at=_after_death()) == [job.id]
    scheduled = ScheduledJobRegistry(queue=wiring.queue(s.score_queue)).get_job_ids()
    assert [Job.fetch(j, connection=st.conn).func_name for j in scheduled] == [enqueue.RECONCILE]


def test_a_live_worker_beats_its_running_job_forward(fake_ls):
    s = get_settings()
    enqueue.enqueue_refresh(fake_ls.project_id)
    conn = wiring.redis_conn()
    worker = BackendWorker([s.score_queue], connection=conn, heartbeat_s=HEARTBEAT_S)
    job, _ = Queue.dequeue_any([wiring.queue(s.score_queue)], None, connection=conn)
    execution = worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    worker._running = (job, execution)  # what execute_job sets while perform_job runs
    registry = job.started_job_registry
    before = registry.connection.zscore(registry.key, execution.composite_key)
    time.sleep(1.1)  # the expiry has one-second resolution
    worker.beat()
    after = registry.connection.zscore(registry.key, execution.composite_key)
    assert after > before and watchdog.reap_abandoned(at=before + 0.5) == []


def test_the_worker_takes_a_free_scheduler_lock_and_keeps_a_reconcile_pass_scheduled(fake_ls):
    s, conn = get_settings(), wiring.redis_conn()
    worker = BackendWorker(s.queues, connection=conn, heartbeat_s=HEARTBEAT_S)
    conn.set(f"rq:scheduler-lock:{s.train_queue}", "a-live-worker", ex=60)
    worker.beat()
    assert conn.get(f"rq:scheduler-lock:{s.score_queue}").decode() == worker.name
    assert conn.get(f"rq:scheduler-lock:{s.train_queue}").decode() == "a-live-worker"
    assert 0 < conn.ttl(f"rq:scheduler-lock:{s.score_queue}") <= BEATS_TO_DEATH * HEARTBEAT_S
    assert len(ScheduledJobRegistry(queue=wiring.queue(s.score_queue)).get_job_ids()) == 1
    worker.beat()
    assert len(ScheduledJobRegistry(queue=wiring.queue(s.score_queue)).get_job_ids()) == 1


@pytest.mark.slow
def test_a_training_on_the_annotations_already_trained_on_is_skipped(fake_ls):
    ls, pid, st = fake_ls, fake_ls.project_id, wiring.store()
    for task in ls.tasks(pid)[:3]:
        ls.annotate(pid, task["id"], "a short answer")
    enqueue.enqueue_train(pid)
    run_worker()
    trained = st.last_training(pid)
    assert trained["version"] == "v0001"
    assert all_metrics(st)["projects"][str(pid)]["training_skips"] == \
        {"count": 0, "last_reason": None, "last_at": None}
    enqueue.enqueue_train(pid)  # the same event again, or a load run
    run_worker()
    job = Job.fetch(st.jobs(pid)["train"], connection=st.conn)
    assert job.return_value() == {"skipped": "same 3 annotations as adapter v0001"}
    assert st.last_training(pid) == trained and st.adapter(pid) == "v0001"
    skips = all_metrics(st)["projects"][str(pid)]["training_skips"]
    assert skips["count"] == 1 and skips["last_reason"] == "same 3 annotations as adapter v0001"
    ls.annotate(pid, ls.tasks(pid)[3]["id"], "one more")  # a new annotation trains again
    enqueue.enqueue_train(pid)
    run_worker()
    assert st.adapter(pid) == "v0002" and st.training_skips(pid)["count"] == 1


def test_reconcile_forgets_a_project_label_studio_does_not_know(fake_ls, caplog):
    st, pid = wiring.store(), fake_ls.project_id
    st.save_setup(999, "<View/>", {})  # deleted in Label Studio since
    st.conn.sadd("wtd:projects", 0, -1, -2**63, 10**50)  # registered before ids were checked
    st.add_project(pid)
    out = reconcile.reconcile_all()
    assert out[999] == {"forgotten": "Label Studio has no such project"}
    assert all(out[p] == {"forgotten": "not a Label Studio project id"} for p in (0, -1, -2**63, 10**50))
    assert out[pid]["refresh"] is True and st.projects() == [pid]
    assert not list(st.conn.scan_iter(match="wtd:p:999:*"))
    assert "Traceback" not in caplog.text and caplog.text.count("forgetting its state") == 5
    caplog.clear()
    assert set(reconcile.reconcile_all()) == {pid}  # said once: the next pass does not see them


def test_store_refuses_invalid_project_ids(backend_env):
    st = wiring.store()
    for bad in (0, -1, -2**63, 2**63, 10**50, True, "7"):
        with pytest.raises(ValueError):
            st.add_project(bad)
    assert st.projects() == []


def test_every_setting_names_the_process_that_reads_it():
    assert set(READ_BY) == set(Settings.model_fields), "add the new setting to settings.READ_BY"
    assert set(READ_BY.values()) <= {"server", "worker", "both"}


@pytest.mark.e2e
def test_reconcile_forgets_a_project_a_real_label_studio_answers_404_for(backend_env, label_studio, monkeypatch,
                                                                         caplog):
    from backend.labelstudio import LabelStudioClient
    url, token = label_studio
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    get_settings.cache_clear()
    real = LabelStudioClient(url, token).create_project("reconcile-404", (
        '<View><Text name="prompt" value="$prompt"/><TextArea name="response" toName="prompt"/></View>'))
    st = wiring.store()
    st.add_project(real["id"])
    st.save_setup(10**9, "<View/>", {})
    st.conn.sadd("wtd:projects", 2**63)  # past Label Studio's ids: not asked
    out = reconcile.reconcile_all()
    assert out[10**9] == {"forgotten": "Label Studio has no such project"}
    assert out[2**63] == {"forgotten": "not a Label Studio project id"}
    assert "error" not in out[real["id"]] and st.projects() == [real["id"]]
    assert "Traceback" not in caplog.text
