"""Several hosts: real Label Studio, ``python -m backend serve``, and burst workers as separate processes,
each with its own MODEL_DIR, sharing only Redis and Label Studio.

Host A trains (``--queue wtd-train``); host B drafts with A's adapter, fetched through Redis; host C,
with no copy anywhere, drafts nothing rather than base-model drafts.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from rq import Queue
from rq.registry import FailedJobRegistry

from backend.labelstudio import LabelStudioClient
from backend.settings import Settings
from backend.store import Store
from scripts.local_labelstudio import REPO, stop_process_group
from tests.e2e.test_end_to_end import (AUTH, LABEL_CONFIG, active_predictions, backend, e2e_redis,  # noqa: F401
                                       run_worker, serve_and_annotate, textarea)

pytestmark = pytest.mark.e2e

PARAMS = {"budget": 4, "min_per_task": 1, "train_every": 2, "task_field": "task", "max_new_tokens": 4,
          "epochs": 1, "batch_size": 2, "r": 4}
PROMPTS = [("count", f"Count the words in: {s}") for s in ("a b c", "one two", "x y z w")] + \
          [("translate", f"Translate into French: {s}") for s in ("good morning", "thank you", "the cat")]


def files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def on_host(env: dict, model_dir: Path) -> dict:
    return {**env, "MODEL_DIR": str(model_dir)}


def failed_jobs(env: dict, tmp_path: Path, conn, *queues: str) -> list[str]:
    """Run a burst worker (on ``queues``, default all) to the end; the errors of the jobs that failed."""
    argv = [sys.executable, "-m", "backend", "worker", "--burst"] + [a for q in queues for a in ("--queue", q)]
    log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.wait(300) == 0, log_path.read_text()[-4000:]
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        pytest.fail(f"burst worker still running after 300s:\n{log_path.read_text()[-4000:]}")
    errors = []
    for name in Settings().queues:
        queue = Queue(name, connection=conn)
        errors += [queue.fetch_job(i).latest_result().exc_string for i in FailedJobRegistry(queue=queue).get_job_ids()]
    return errors


def test_a_host_without_the_adapter_fetches_it_and_never_drafts_with_base(label_studio, backend, e2e_redis,
                                                                          tmp_path):
    backend_url, env, server_adapters, backend_log = backend
    client, st = LabelStudioClient(*label_studio), Store(e2e_redis)
    host_a, host_b, host_c = (tmp_path / f"host-{h}" for h in "abc")

    project = client.create_project(f"hosts-{uuid.uuid4().hex[:8]}", LABEL_CONFIG)["id"]
    assert client.import_tasks(project, [{"data": {"prompt": p, "task": t}} for t, p in PROMPTS]) == len(PROMPTS)
    client.connect_ml_backend(project, backend_url, PARAMS, basic_auth=AUTH)
    run_worker(on_host(env, host_b), tmp_path, e2e_redis)  # host B: the base model's queue
    first_version, _ = active_predictions(client, project)

    serve_and_annotate(client, project, PARAMS["train_every"])  # the webhook enqueues a training
    assert failed_jobs(on_host(env, host_a), tmp_path, e2e_redis, "wtd-train") == []  # host A: training only
    version = st.adapter(project)
    assert version == st.last_training(project)["version"] == "v0001", backend_log.read_text()[-3000:]
    assert not (host_b / str(project)).exists()

    run_worker(on_host(env, host_b), tmp_path, e2e_redis)  # host B: the re-plan the training enqueued
    assert files(host_b / str(project) / version) == files(host_a / str(project) / version)
    state = st.queue(project)
    assert f"|{version}|" in state["score_key"]
    # The window re-drafted in place with the fetched adapter (same version, issue #8).
    new_version, preds = active_predictions(client, project)
    assert new_version == state["model_version"] == first_version and state["pass"] == "window"
    drafts = st.scores(project, state["score_key"])
    assert state["redrafted"] > 0 and len(drafts) >= state["redrafted"]
    assert all(p["result"] == textarea(drafts[p["task"]]["response"]) for p in preds if p["task"] in drafts)

    # Redis loses its copy; host C has none: a new task gets no draft at all, not the base model's.
    st.delete_adapter_files(project, [version])
    assert client.import_tasks(project, [{"data": {"prompt": "Count the words in: p q", "task": "count"}}]) == 1
    # What Label Studio's TASKS_CREATED webhook does (sent here too, in case its webhook omits that event).
    r = httpx.post(f"{backend_url}/webhook", auth=AUTH, timeout=10,
                   json={"action": "TASKS_CREATED", "project": {"id": project}})
    assert r.status_code == 200
    errors = failed_jobs(on_host(env, host_c), tmp_path, e2e_redis)
    assert len(errors) == 1 and "AdapterUnavailable" in errors[0] and version in errors[0]
    assert active_predictions(client, project)[0] == new_version and st.queue(project) == state
    metrics = httpx.get(f"{backend_url}/metrics", auth=AUTH, timeout=10).json()["projects"][str(project)]
    assert metrics["adapters_missing"] == [version]
