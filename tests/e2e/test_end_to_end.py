"""Acceptance test: real Label Studio + ``python -m backend serve`` + ``worker --burst`` + a real Redis.

A project of 40 prompts in 4 tasks gets its queue from the backend; Label Studio's own "next task"
endpoint must serve exactly the Weighted-Task-Diversity order recomputed here from the stored scores.
Annotations then train a LoRA adapter (through the webhook), whose drafts replace, in place, those of
the next ``draft_ahead`` tasks while the queue keeps its order and Label Studio keeps about one
prediction per task (issue #8).
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from backend.labelstudio import LabelStudioClient
from backend.settings import Settings
from backend.store import Store
from model.config import SelectionConfig
from model.strategies import select
from scripts.local_labelstudio import REPO, free_port, stop_process_group, wait_for_http
from tests.support import empty_redis

pytestmark = pytest.mark.e2e

REDIS_URL = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/14")
LABEL_CONFIG = ('<View><Text name="prompt" value="$prompt"/>'
                '<TextArea name="response" toName="prompt"/></View>')
BUDGET, MIN_PER_TASK, TRAIN_EVERY, DRAFT_AHEAD = 20, 2, 4, 5
EXTRA_PARAMS = {"budget": BUDGET, "min_per_task": MIN_PER_TASK, "train_every": TRAIN_EVERY, "draft_ahead": DRAFT_AHEAD,
                "task_field": "task", "max_new_tokens": 8, "epochs": 1, "batch_size": 4, "r": 4}
AUTH = ("ls-backend", "e2e-basic-pass")
TEMPLATES = {
    "sentiment": "Classify the sentiment of this review as positive or negative: {}",
    "translate": "Translate this sentence into French: {}",
    "summary": "Summarize the following text in one sentence: {}",
    "count": "Count the number of words in the sentence: {}",
}
SUBJECTS = ["the quick brown fox jumps over the lazy dog", "annotators write responses to prompts",
            "label studio sends webhooks to the backend", "a b c d e f", "yes no true false",
            "the order of the letters", "one two three", "a question about the passage",
            "the lazy dog sleeps", "0 1 2 3 4 5 6 7 8 9"]


@pytest.fixture
def e2e_redis():
    with empty_redis(REDIS_URL) as conn:
        yield conn


def backend_env(label_studio, model_dir: Path, adapters: Path) -> dict[str, str]:
    url, token = label_studio
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "BASIC_AUTH_"))}
    env.update({"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token, "REDIS_URL": REDIS_URL,
                "MODEL_NAME_OR_PATH": str(model_dir), "MODEL_DIR": str(adapters), "DEVICE": "cpu",
                "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1], "PYTHONPATH": str(REPO),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


@pytest.fixture
def backend(label_studio, tiny_model_dir, tmp_path, e2e_redis):
    """``python -m backend serve`` on a free 127.0.0.1 port: (url, env, adapters dir, log path)."""
    adapters = tmp_path / "adapters"
    env = backend_env(label_studio, tiny_model_dir, adapters)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "backend.log"
    with open(log_path, "wb") as log:
        argv = [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(url, proc, log_path)
        yield url, env, adapters, log_path
    finally:
        stop_process_group(proc)


def wait_for_health(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 120) -> None:
    try:
        wait_for_http(f"{url}/health", proc, log_path, timeout_s, what="the backend", auth=AUTH)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def run_worker(env: dict, tmp_path: Path, conn: redis.Redis, timeout_s: float = 300) -> None:
    """Run a burst worker until the queues are empty; fail on a hang or on any failed job."""
    from rq import Queue
    from rq.registry import FailedJobRegistry

    log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "worker", "--burst"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        pytest.fail(f"burst worker still running after {timeout_s}s:\n{log_path.read_text()[-4000:]}")
    assert rc == 0, f"worker exited with {rc}:\n{log_path.read_text()[-4000:]}"
    failed = []
    for name in Settings().queues:
        queue = Queue(name, connection=conn)
        jobs = (queue.fetch_job(i) for i in FailedJobRegistry(queue=queue).get_job_ids())
        failed += [job.latest_result().exc_string for job in jobs if job]
    assert not failed, "failed jobs:\n" + "\n".join(failed)


def textarea(text: str) -> list[dict]:
    return [{"from_name": "response", "to_name": "prompt", "type": "textarea", "value": {"text": [text]}}]


def expected_queue(st: Store, project: int, tasks: list[dict]) -> tuple[list[int], dict]:
    """The queue recomputed from the stored base-model scores: selected prompts, then the rest by id."""
    key = st.queue(project)["selection_key"]
    scores = st.scores(project, key)
    assert sorted(scores) == sorted(t["id"] for t in tasks), "every prompt must be scored"
    rows = [{"id": t["id"], "task": t["data"]["task"], "prompt": t["data"]["prompt"], **scores[t["id"]]}
            for t in sorted(tasks, key=lambda t: t["id"])]
    sel = select(rows, SelectionConfig(budget=BUDGET, min_per_task=MIN_PER_TASK))
    chosen = [rows[i]["id"] for i in sel.order]
    return chosen + sorted({r["id"] for r in rows} - set(chosen)), sel.allocation


def serve_and_annotate(client: LabelStudioClient, project: int, n: int) -> list[int]:
    served = []
    for _ in range(n):
        task = client.next_task(project)
        if task is None:
            break
        served.append(task["id"])
        client.create_annotation(task["id"], textarea(f"reference answer {len(served)}"))
    return served


def connected_project(client: LabelStudioClient, backend_url: str, prefix: str, extra_params: dict) -> int:
    """A new project of the 40 TEMPLATES x SUBJECTS prompts, connected to the backend (with basic auth)."""
    project = client.create_project(f"{prefix}-{uuid.uuid4().hex[:8]}", LABEL_CONFIG)["id"]
    data = [{"prompt": template.format(subject), "task": task}
            for task, template in TEMPLATES.items() for subject in SUBJECTS]
    assert client.import_tasks(project, [{"data": d} for d in data]) == 40
    client.connect_ml_backend(project, backend_url, extra_params, basic_auth=AUTH)
    return project


def active_predictions(client: LabelStudioClient, project: int) -> tuple[str, list[dict]]:
    version = client.project(project)["model_version"]
    return version, [p for p in client.predictions(project) if p["model_version"] == version]


def test_queue_served_in_order_and_retrained_from_annotations(label_studio, backend, e2e_redis, tmp_path):
    backend_url, env, adapters, backend_log = backend
    client = LabelStudioClient(*label_studio)
    st = Store(e2e_redis)

    project = connected_project(client, backend_url, "e2e", EXTRA_PARAMS)
    run_worker(env, tmp_path, e2e_redis)

    # The first queue: Weighted Task Diversity over the base model's scores.
    tasks = client.tasks(project)
    queue, allocation = expected_queue(st, project, tasks)
    assert sum(allocation.values()) == BUDGET and min(allocation.values()) >= MIN_PER_TASK
    first_version, preds = active_predictions(client, project)
    assert len(preds) == 40 and client.project(project)["sampling"] == "Uncertainty sampling"
    assert [p["task"] for p in sorted(preds, key=lambda p: p["score"])] == queue
    # The webhook Label Studio created got the backend's credentials (else events would be 401s).
    [hook] = [w for w in client.webhooks(project) if w["url"].startswith(backend_url)]
    assert hook["headers"]["Authorization"] == "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()

    # Annotators follow Label Studio's own queue; the 4th annotation's webhook enqueues a training.
    assert serve_and_annotate(client, project, TRAIN_EVERY) == queue[:TRAIN_EVERY]
    assert st.last_training(project) is None
    run_worker(env, tmp_path, e2e_redis)

    training = st.last_training(project)
    assert training is not None, f"no training ran; backend log:\n{backend_log.read_text()[-3000:]}"
    version = training["version"]
    assert (adapters / str(project) / version).is_dir() and st.adapter(project) == version

    # The window's drafts now come from the new adapter, in place: same version, same order; the tasks
    # further down keep the base model's drafts.
    rest = queue[TRAIN_EVERY:]
    check_window(client, st, project, first_version, version, rest, queue)

    # A second pass: the window has moved on with the annotators.
    assert serve_and_annotate(client, project, TRAIN_EVERY) == rest[:TRAIN_EVERY]
    run_worker(env, tmp_path, e2e_redis)
    second = st.last_training(project)["version"]
    assert second != version
    rest = rest[TRAIN_EVERY:]
    check_window(client, st, project, first_version, second, rest, queue)

    assert serve_and_annotate(client, project, len(rest) + 1) == rest


def check_window(client, st, project, version, adapter, rest, queue):
    """The active version is ``version``; the next DRAFT_AHEAD tasks of ``rest`` carry ``adapter``'s
    drafts, the others the base model's; Label Studio holds at most 1.2 predictions per task."""
    active, preds = active_predictions(client, project)
    state = st.queue(project)
    assert active == version == state["model_version"] and adapter in state["score_key"]
    assert [p["task"] for p in sorted(preds, key=lambda p: p["score"])] == queue
    drafts = {p["task"]: p["result"] for p in preds}
    new = st.scores(project, state["score_key"], rest[:DRAFT_AHEAD])
    base = st.scores(project, state["selection_key"], rest[DRAFT_AHEAD:])
    assert {t: drafts[t] for t in rest[:DRAFT_AHEAD]} == {t: textarea(new[t]["response"]) for t in new}
    assert {t: drafts[t] for t in rest[DRAFT_AHEAD:]} == {t: textarea(base[t]["response"]) for t in base}
    rows = client.model_versions(project)
    assert rows == {version: len(queue)} and sum(rows.values()) <= 1.2 * len(queue)
