"""LabelStudioClient against a real Label Studio 1.23.2 (e2e), and its retry rules against stub servers."""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from backend import labelstudio
from backend.labelstudio import LabelStudioClient, LabelStudioError
from scripts.local_labelstudio import free_port
from tests.e2e.labelstudio_server import label_studio  # noqa: F401  (the fixture)

LABEL_CONFIG = ('<View><Text name="prompt" value="$prompt"/>'
                '<TextArea name="response" toName="prompt"/></View>')
SECRET_KEY = "never-log-this-key-0123456789"


def textarea(text: str) -> list[dict]:
    return [{"from_name": "response", "to_name": "prompt", "type": "textarea", "value": {"text": [text]}}]


class StubServer:
    """A tiny HTTP server on 127.0.0.1; ``reply(method, path, body)`` -> (status, json)."""

    def __init__(self, reply):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests.append((self.command, self.path, dict(self.headers), body))
                status, payload = reply(self.command, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def ml_backend_stub(basic_auth: tuple[str, str] | None = None) -> StubServer:
    """Answers Label Studio's /health and /setup (401 without the right basic auth, if given)."""
    expected = "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode() if basic_auth else None
    server: StubServer

    def reply(method, path, body):
        if expected and server.requests[-1][2].get("Authorization") != expected:
            return 401, {"detail": "auth"}
        if path.startswith("/health"):
            return 200, {"status": "UP", "model_class": "Stub"}
        if path.startswith("/setup"):
            return 200, {"model_version": "stub-0"}
        return 200, {}
    server = StubServer(reply)
    return server


@pytest.fixture
def stub_ml_backend():
    server = ml_backend_stub()
    yield server
    server.close()


def setup_params(stub: StubServer) -> list:
    return [json.loads(b).get("extra_params") for m, p, h, b in stub.requests if p == "/setup"]


@pytest.fixture
def client(label_studio):
    url, token = label_studio
    return LabelStudioClient(url, token)


@pytest.fixture
def project(client):
    return client.create_project(f"client-test-{uuid.uuid4().hex[:8]}", LABEL_CONFIG)


def import_prompts(client, project_id: int, n: int) -> list[int]:
    client.import_tasks(project_id, [{"data": {"prompt": f"prompt {i}", "task": f"t{i % 3}"}} for i in range(n)])
    return sorted(t["id"] for t in client.tasks(project_id))


# -- against the real server ----------------------------------------------------------------

@pytest.mark.e2e
def test_project_returns_raw_json(client, project):
    raw = client.project(project["id"])
    assert raw["id"] == project["id"] and raw["label_config"] == LABEL_CONFIG
    assert {"title", "model_version", "sampling"} <= raw.keys()
    assert client.find_project(raw["title"])["id"] == raw["id"]
    assert client.find_project(raw["title"] + "-missing") is None


@pytest.mark.e2e
def test_tasks_reads_every_page_with_annotations(client, project, monkeypatch):
    monkeypatch.setattr(labelstudio, "TASK_PAGE_SIZE", 3)  # 10 tasks -> 4 pages, the last one partial
    ids = import_prompts(client, project["id"], 10)
    assert len(ids) == 10
    annotation = client.create_annotation(ids[4], textarea("an answer"))

    tasks = {t["id"]: t for t in client.tasks(project["id"])}
    assert sorted(tasks) == ids
    assert tasks[ids[0]]["data"] == {"prompt": "prompt 0", "task": "t0"}
    assert tasks[ids[0]]["annotations"] == []
    [ann] = tasks[ids[4]]["annotations"]
    assert ann["id"] == annotation["id"] and ann["result"] == textarea("an answer")
    assert ann["was_cancelled"] is False and ann["created_at"] and ann["updated_at"]
    assert isinstance(ann["completed_by"], int) and ann["completed_by"] == annotation["completed_by"]


@pytest.mark.e2e
def test_lean_reads_by_difference(client, project, monkeypatch):
    """Issue #8: the reads a pass makes carry only what they name (new tasks, annotated tasks, the
    predictions of a few tasks), across pages."""
    monkeypatch.setattr(labelstudio, "TASK_PAGE_SIZE", 3)
    pid = project["id"]
    ids = import_prompts(client, pid, 10)
    assert client.task_index(pid) == [{"id": t, "data": {"prompt": f"prompt {i}", "task": f"t{i % 3}"}}
                                       for i, t in enumerate(ids)]
    assert [t["id"] for t in client.task_index(pid, after_id=ids[6])] == ids[7:]
    assert client.task_index(pid, after_id=ids[-1]) == []
    assert client.task_ids(pid) == ids and client.project(pid)["task_number"] == 10
    kept = client.create_annotation(ids[2], textarea("an answer"))
    client.create_annotation(ids[5], textarea("skipped"), was_cancelled=True)
    annotated = {t["id"]: t for t in client.annotated_tasks(pid)}
    assert sorted(annotated) == [ids[2], ids[5]]
    assert annotated[ids[2]]["annotations"][0]["id"] == kept["id"]
    assert annotated[ids[5]]["annotations"][0]["was_cancelled"] is True
    client.import_predictions(pid, [{"task": t, "model_version": v, "score": 0.5, "result": textarea(v)}
                                    for v in ("a", "b") for t in ids])
    preds = client.task_predictions(pid, ids[3:5])
    assert sorted(preds) == ids[3:5] and sorted(p["model_version"] for p in preds[ids[3]]) == ["a", "b"]
    assert client.task_predictions(pid, []) == {}


@pytest.mark.e2e
def test_redraft_in_place_and_delete_old_versions(client, project):
    """PATCH keeps a prediction's version and score (the queue order); deleting a version leaves the others."""
    pid = project["id"]
    ids = import_prompts(client, pid, 4)
    for v, score in (("old", 0.5), ("new", 0.25)):
        client.import_predictions(pid, [{"task": t, "model_version": v, "score": score, "result": textarea(v)}
                                        for t in ids])
    assert client.model_versions(pid) == {"old": 4, "new": 4}
    [pred] = [p for p in client.task_predictions(pid, [ids[1]])[ids[1]] if p["model_version"] == "new"]
    client.update_prediction(pred["id"], textarea("re-drafted"))
    assert client.delete_model_version(pid, "old") == 4
    assert client.delete_model_version(pid, "old") == 0
    assert client.model_versions(pid) == {"new": 4}
    [after] = [p for p in client.predictions(pid) if p["id"] == pred["id"]]
    assert after["result"] == textarea("re-drafted") and after["model_version"] == "new" and after["score"] == 0.25


@pytest.mark.e2e
def test_next_task_serves_the_prediction_score_order(client, project, monkeypatch):
    monkeypatch.setattr(labelstudio, "PREDICTION_CHUNK", 4)  # 10 predictions -> 3 POSTs
    ids = import_prompts(client, project["id"], 10)
    order = [ids[i] for i in (6, 2, 8, 0, 4, 9, 1, 7, 3, 5)]
    version = f"queue-{uuid.uuid4().hex[:6]}"
    preds = [{"task": task, "model_version": version, "score": pos / len(order), "result": textarea("draft")}
             for pos, task in enumerate(order)]
    assert client.import_predictions(project["id"], preds) == 10

    client.activate_queue(project["id"], version)
    raw = client.project(project["id"])
    assert raw["model_version"] == version and raw["sampling"] == "Uncertainty sampling"

    served = []
    while (task := client.next_task(project["id"])) is not None:
        served.append(task["id"])
        client.create_annotation(task["id"], textarea(f"answer {len(served)}"))
        assert len(served) <= len(order), "Label Studio kept serving annotated tasks"
    assert served == order


@pytest.mark.e2e
def test_import_predictions_refuses_scores_label_studio_would_drop(client, project):
    [task] = import_prompts(client, project["id"], 1)
    with pytest.raises(ValueError, match="outside"):
        client.import_predictions(project["id"], [{"task": task, "model_version": "v", "score": 3.0,
                                                   "result": textarea("x")}])
    assert client.predictions(project["id"]) == []


@pytest.mark.e2e
def test_import_predictions_raises_when_label_studio_drops_items(client, project):
    [task] = import_prompts(client, project["id"], 1)
    bad = [{"from_name": "nope", "to_name": "prompt", "type": "textarea", "value": {"text": ["x"]}}]
    with pytest.raises(LabelStudioError, match="created 0 of 1"):
        client.import_predictions(project["id"], [{"task": task, "model_version": "v", "score": 0.5,
                                                   "result": bad}])


@pytest.mark.e2e
def test_ml_backend_extra_params_and_secured_webhook(client, project, stub_ml_backend):
    ml_id = client.connect_ml_backend(project["id"], stub_ml_backend.url, {"budget": 5})
    [ml] = client.ml_backends(project["id"])
    assert ml["id"] == ml_id and ml["url"] == stub_ml_backend.url and ml["extra_params"] == {"budget": 5}

    client.set_extra_params(ml_id, {"budget": 7, "train_every": 2})
    assert client.ml_backends(project["id"])[0]["extra_params"] == {"budget": 7, "train_every": 2}
    assert setup_params(stub_ml_backend)[-1] == {"budget": 7, "train_every": 2}

    assert client.secure_webhook(project["id"], "http://127.0.0.1:1", {"X-Webhook-Secret": "s"}) is False
    assert client.secure_webhook(project["id"], stub_ml_backend.url + "/", {"X-Webhook-Secret": "s3cret"})
    # The header must reach the backend on a real event, not only sit in the webhook's settings.
    [task] = import_prompts(client, project["id"], 1)
    client.create_annotation(task, textarea("answer"))
    events = [(h, json.loads(b)) for m, p, h, b in stub_ml_backend.requests if p == "/webhook"]
    created = [h for h, e in events if e.get("action") == "ANNOTATION_CREATED"]
    assert created and all(h.get("X-Webhook-Secret") == "s3cret" for h in created)
    # The backend answers 415 to a body not sent as JSON: Label Studio sends every POST as JSON.
    posts = [(p, {k.lower(): v for k, v in h.items()}) for m, p, h, b in stub_ml_backend.requests if m == "POST"]
    assert {p for p, _ in posts} >= {"/setup", "/webhook"}
    assert all(h.get("content-type", "").startswith("application/json") for _, h in posts), posts


@pytest.mark.e2e
def test_extra_params_update_on_a_basic_auth_backend(client, project):
    stub = ml_backend_stub(basic_auth=("ls", "pw"))
    try:
        ml_id = client.connect_ml_backend(project["id"], stub.url, {"budget": 5}, basic_auth=("ls", "pw"))
        client.set_extra_params(ml_id, {"budget": 9})
    finally:
        stub.close()
    assert client.ml_backends(project["id"])[0]["extra_params"] == {"budget": 9}
    # Label Studio re-runs /setup with the new parameters, authenticated with the stored password.
    assert setup_params(stub)[-1] == {"budget": 9}
    assert all(h.get("Authorization") for m, p, h, b in stub.requests)


@pytest.mark.e2e
def test_personal_access_token_works(label_studio, client, project):
    url, token = label_studio
    r = httpx.post(f"{url}/api/token/", headers={"Authorization": f"Token {token}"}, timeout=30)
    r.raise_for_status()
    pat_client = LabelStudioClient(url, r.json()["token"])
    assert pat_client.project(project["id"])["id"] == project["id"]


@pytest.mark.e2e
def test_client_errors_are_not_retried_and_hide_the_key(label_studio, caplog):
    url, _ = label_studio
    with caplog.at_level(logging.WARNING, logger="backend.labelstudio"):
        with pytest.raises(LabelStudioError) as bad_key:
            LabelStudioClient(url, SECRET_KEY, backoff_s=5).project(1)
    assert bad_key.value.status == 401 and "/api/projects/1" in str(bad_key.value)
    assert SECRET_KEY not in str(bad_key.value) and SECRET_KEY not in caplog.text
    assert "retry" not in caplog.text


# -- retry rules, against stub servers (no Label Studio needed) ------------------------------

def test_connection_errors_retry_with_backoff_then_raise(caplog):
    dead = LabelStudioClient(f"http://127.0.0.1:{free_port()}", SECRET_KEY, retries=3, backoff_s=0.05)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="backend.labelstudio"):
        with pytest.raises(LabelStudioError, match=r"GET /api/projects/7 failed after 4 tries: ConnectError"):
            dead.project(7)
    elapsed = time.monotonic() - start
    assert 0.05 + 0.1 + 0.2 <= elapsed < 5  # three backoff sleeps, doubling
    assert caplog.text.count("retry") == 3
    assert SECRET_KEY not in caplog.text and SECRET_KEY not in repr(dead)


def test_server_errors_are_retried_until_success():
    calls = []

    def reply(method, path, body):
        calls.append(path)
        return (503, {"detail": "busy"}) if len(calls) < 3 else (200, {"id": 7, "title": "t"})
    server = StubServer(reply)
    try:
        assert LabelStudioClient(server.url, SECRET_KEY, backoff_s=0.01).project(7) == {"id": 7, "title": "t"}
    finally:
        server.close()
    assert calls == ["/api/projects/7"] * 3
    assert all(h["Authorization"] == f"Token {SECRET_KEY}" for _, _, h, _ in server.requests)


def test_failed_posts_are_resent_only_when_not_processed():
    statuses = iter([429, 500])
    server = StubServer(lambda m, p, b: (next(statuses), {"detail": "x"}))
    try:
        with pytest.raises(LabelStudioError) as err:
            LabelStudioClient(server.url, SECRET_KEY, backoff_s=0.01).create_annotation(
                3, textarea("x"))
    finally:
        server.close()
    # 429 means "not processed": resent. A 500 on a POST may have written: not resent.
    assert err.value.status == 500 and len(server.requests) == 2
