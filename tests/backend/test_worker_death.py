"""Workers killed with SIGKILL: real worker processes (tests.backend.fake_ls_worker), a real Redis and RQ.

Each wait has a deadline so a broken recovery fails the test instead of hanging it; the deadlines are
generous bounds for a loaded machine, not speed targets. Workers beat every 2 s here (dead after 8 s).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry

from backend import enqueue, wiring
from backend.settings import get_settings
from tests.backend.fake_ls_worker import PROJECT
from tests.backend.fakes import backend_env  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 240


@pytest.fixture
def workers(backend_env, tmp_path):
    """start(extra_params) -> a worker process on the fake Label Studio; all of them are killed at the end."""
    procs = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKER_HEARTBEAT_S": "2", "OMP_NUM_THREADS": "1",
           "REDIS_URL": os.environ["REDIS_URL"], "MODEL_NAME_OR_PATH": os.environ["MODEL_NAME_OR_PATH"],
           "MODEL_DIR": os.environ["MODEL_DIR"], "DEVICE": "cpu"}

    def start(extra_params: dict | None = None, **more_env) -> subprocess.Popen:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tests.backend.fake_ls_worker"], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**env, **more_env, "FAKE_LS_EXTRA_PARAMS": json.dumps(extra_params or {})})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for log in sorted(tmp_path.glob("worker-*.log")):  # shown by pytest when the test failed
        print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def wait_for(what: str, check, bound_s: float = BOUND_S):
    deadline = time.monotonic() + bound_s
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {bound_s} s: {what}")
        time.sleep(0.5)
    return result


def kill_9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the worker and anything it started, like a lost host
    proc.wait()


@pytest.mark.slow
def test_a_worker_killed_mid_training_is_replaced_and_the_project_trains_again(workers):
    st = wiring.store()
    first = enqueue.enqueue_train(PROJECT)
    doomed = workers({"epochs": 1_000_000})  # trains until killed
    wait_for("the first training is under way",
             lambda: (first.refresh() or True) and (first.meta.get("step") or 0) >= 2)
    second = enqueue.enqueue_train(PROJECT)  # a webhook meanwhile: deferred behind the running one
    assert second.get_status() == JobStatus.DEFERRED
    kill_9(doomed)
    workers({"epochs": 1})
    wait_for("a new worker trains and stores an adapter", lambda: st.adapter(PROJECT) == "v0001")
    assert first.get_status() == JobStatus.FAILED
    assert "AbandonedJobError" in first.latest_result().exc_string
    assert second.get_status() == JobStatus.FINISHED and st.last_training(PROJECT)["version"] == "v0001"
    assert (get_settings().model_dir / str(PROJECT) / "v0001" / "adapter_config.json").exists()


@pytest.mark.slow
def test_the_reconcile_schedule_survives_a_worker_killed_while_holding_the_scheduler_lock(workers):
    conn, s = wiring.redis_conn(), get_settings()
    lock = f"rq:scheduler-lock:{s.score_queue}"
    doomed = workers(RECONCILE_INTERVAL_S="1")
    dead_name = wait_for("the first worker holds the scheduler lock", lambda: conn.get(lock))
    kill_9(doomed)
    killed_at = time.time()
    workers(RECONCILE_INTERVAL_S="1")

    def pass_by_the_new_worker():
        owner = conn.get(lock)
        if owner in (None, dead_name):
            return None
        finished = FinishedJobRegistry(queue=wiring.queue(s.score_queue)).get_job_ids()
        return [j for j in Job.fetch_many(finished, connection=conn) if j is not None and
                j.func_name == enqueue.RECONCILE and j.worker_name == owner.decode() and
                j.ended_at.timestamp() > killed_at]

    assert wait_for("the new worker takes the lock and runs a reconcile pass", pass_by_the_new_worker)
