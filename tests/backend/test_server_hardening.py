"""Malformed input never gives a 5xx nor creates state; /predict is bounded; webhooks stay authenticated.

Real Redis, the tiny model and the fake Label Studio; one test runs a real uvicorn server to show that
a large body is refused before it is sent.
"""
import json
import socket
import threading
import time

import anyio
import pytest
import uvicorn
from fastapi.testclient import TestClient
from rq import Queue

from backend import server, wiring
from backend.model_cache import models
from backend.project import score_key
from backend.settings import get_settings
from backend.server import app, clip_prompt
from tests.backend.fakes import LABEL_CONFIG, TEST_PARAMS, backend_env, fake_ls, run_worker  # noqa: F401

POSTS = ["/setup", "/predict", "/webhook"]


@pytest.fixture
def client(backend_env):
    return TestClient(app)


def _env(monkeypatch, **values):
    for k, v in values.items():
        monkeypatch.setenv(k, str(v))
    get_settings.cache_clear()


def _setup_body(pid=7, extra_params=None, schema=LABEL_CONFIG):
    return {"project": f"{pid}.1764212345", "schema": schema, "extra_params": extra_params}


def _valid_body(path: str, pid=7) -> dict:
    return {"/setup": _setup_body(pid, TEST_PARAMS),
            "/predict": {"project": f"{pid}.1", "tasks": [{"id": 1, "data": {"prompt": "hi"}}]},
            "/webhook": {"action": "START_TRAINING", "project": {"id": pid}}}[path]


def _keys() -> list[bytes]:
    return wiring.redis_conn().keys("*")


def _queued(name: str) -> int:
    return Queue(name, connection=wiring.redis_conn()).count


# ------------------------------------------------------------------------------------------ bodies
@pytest.mark.parametrize("path", POSTS)
def test_a_body_over_the_limit_is_413_and_changes_nothing(client, monkeypatch, path):
    _env(monkeypatch, MAX_BODY_BYTES=2000)
    body = {**_valid_body(path), "padding": "x" * 3000}
    r = client.post(path, json=body)
    assert r.status_code == 413 and "MAX_BODY_BYTES" in r.json()["detail"]
    chunks = (json.dumps(body).encode()[i:i + 500] for i in range(0, 4000, 500))  # chunked: no Content-Length
    r = client.post(path, content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert _keys() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_server_refuses_a_large_body_before_it_is_sent(backend_env):
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if srv.started:
                break
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            # Declares 300 MB and sends none of it: the answer must come without waiting for the body.
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 300000000\r\n\r\n")
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 413"), head
    finally:
        srv.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_bodies_not_sent_as_json_are_415(client, path, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post(path, content=json.dumps(_valid_body(path)).encode(), headers=headers)
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    assert _keys() == []


def test_json_with_a_charset_or_a_json_suffix_is_accepted(client):
    for ct in ["application/json; charset=utf-8", "application/vnd.api+json"]:
        r = client.post("/webhook", content=b'{"action": "PROJECT_UPDATED"}', headers={"content-type": ct})
        assert r.status_code == 200, ct


BAD_JSON = {
    "too deep": "[" * 1000 + "]" * 1000,
    "deep object": '{"project": 7, "x": ' + '{"a": ' * 65 + "1" + "}" * 65 + "}",
    "huge int": '{"project": 7, "action": "START_TRAINING", "n": ' + "9" * 5000 + "}",
    "huge float": '{"project": 7, "x": 1e999}',
    "NaN": '{"project": 7, "x": NaN}',
    "surrogate in action": '{"action": "\\ud800", "project": {"id": 7}}',
    "surrogate in schema": '{"project": "7.1", "schema": "<View>\\udfff</View>"}',
    "surrogate in prompt": '{"project": "7.1", "tasks": [{"id": 1, "data": {"prompt": "a\\ud83d"}}]}',
    "surrogate in a key": '{"\\udc00": 1}',
    "not JSON": "{not json",
    "empty": "",
}


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("case", list(BAD_JSON))
def test_unparseable_bodies_are_400_with_a_message(client, path, case):
    r = client.post(path, content=BAD_JSON[case].encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("request body: ")
    assert _keys() == []


def test_invalid_utf8_is_400(client):
    r = client.post("/webhook", content=b'{"action": "\xff"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "UTF-8" in r.json()["detail"]


def test_a_surrogate_pair_is_a_character_not_an_error(client):
    r = client.post("/webhook", content=b'{"action": "smile \\ud83d\\ude00"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["action"] == "smile \U0001F600"


# ------------------------------------------------------------------------------------------ project ids
@pytest.mark.parametrize("pid", [0, -1, -2 ** 63, 10 ** 50, 2 ** 63, "0.17", "-5.1", "7e3", 1.5e300])
def test_invalid_project_ids_are_422_and_create_nothing(client, pid):
    bodies = {"/setup": {**_setup_body(), "project": pid},
              "/predict": {"project": pid, "tasks": [{"id": 1, "data": {"prompt": "hi"}}]},
              "/webhook": {"action": "ANNOTATION_CREATED", "project": {"id": pid}}}
    for path, body in bodies.items():
        r = client.post(path, json=body)
        assert r.status_code == 422, (path, r.text)
        assert "project" in json.dumps(r.json()["detail"])
    assert _keys() == []


def test_the_largest_project_id_is_accepted(client):
    assert client.post("/setup", json=_setup_body(2 ** 63 - 1)).status_code == 200


def test_webhooks_and_predict_for_a_project_never_set_up_create_nothing(client):
    events = [{"action": a, "project": {"id": 8}, "annotation": {"id": 1, "updated_at": "t"}}
              for a in ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING",
                        "TASKS_CREATED"]]
    for event in events:
        r = client.post("/webhook", json=event)
        assert r.status_code == 200 and r.json()["status"] == "ignored" and "never set up" in r.json()["reason"]
    tasks = [{"id": 1, "data": {"prompt": "translate this"}}, {"id": 2, "data": {}}]
    r = client.post("/predict", json={"project": "8.1", "tasks": tasks, "label_config": LABEL_CONFIG})
    assert r.status_code == 200
    assert r.json()["results"] == [{"result": [], "score": 1.0, "model_version": "wtd-8-0"}] * 2
    assert _keys() == []
    assert models._models == {}  # and no model was loaded for it


@pytest.mark.parametrize("change", [
    {"extra_params": {"budget": 0}}, {"extra_params": '{"strategy": "nope"}'},
    {"extra_params": "[" * 500 + "]" * 500}, {"extra_params": '{"seed": ' + "1" * 5000 + "}"},
    {"extra_params": '{"prompt_field": "\\ud800"}'}, {"schema": "<View><Text name='p' value='$p'/></View>"},
    {"schema": "<View"}, {"project": "-7.1"}])
def test_a_failing_setup_never_overwrites_the_stored_settings(client, backend_env, change):
    assert client.post("/setup", json=_setup_body(extra_params=TEST_PARAMS)).status_code == 200
    before, queued = wiring.store().setup(7), _queued(backend_env.score_queue)
    r = client.post("/setup", json={**_setup_body(extra_params={**TEST_PARAMS, "budget": 9}), **change})
    assert 400 <= r.status_code < 500 and r.json()["detail"]
    assert wiring.store().setup(7) == before == (LABEL_CONFIG, TEST_PARAMS)
    assert _queued(backend_env.score_queue) == queued


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_no_api_docs_are_served(client, path):
    assert client.get(path).status_code == 404


# ------------------------------------------------------------------------------------------ /predict
def test_clip_prompt_keeps_the_start_and_the_end():
    assert clip_prompt("abcdefghij", 20) == "abcdefghij"
    assert clip_prompt("abcdefghij", 5) == "abcij"
    assert clip_prompt("abcdefghij", 4) == "abij"
    assert clip_prompt("abcdefghij", 1) == "a"


def test_predict_cuts_prompts_and_caps_the_tasks_scored_per_call(client, backend_env, monkeypatch):
    _env(monkeypatch, PREDICT_MAX_TASKS=2, PREDICT_MAX_PROMPT_CHARS=300)
    client.post("/setup", json=_setup_body(extra_params=TEST_PARAMS))
    seen = []
    real = server.score_tasks

    def spy(project, adapter, rows, max_new_tokens):  # records what reaches the model, then scores it
        seen.extend(rows)
        return real(project, adapter, rows, max_new_tokens)

    monkeypatch.setattr(server, "score_tasks", spy)
    long_prompt = "start " + "filler words " * 20_000 + " the end"
    tasks = [{"id": 100 + i, "data": {"prompt": long_prompt if i == 0 else f"prompt {i}"}} for i in range(5)]
    r = client.post("/predict", json={"project": "7.1", "tasks": tasks, "label_config": LABEL_CONFIG})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [row["id"] for row in seen] == [100, 101]
    assert len(seen[0]["prompt"]) == 300 and seen[0]["prompt"].startswith("start ")
    assert seen[0]["prompt"].endswith(" the end")
    assert [bool(res["result"]) for res in results] == [True, True, False, False, False]
    key = score_key(backend_env.model_name_or_path, None, TEST_PARAMS["max_new_tokens"])
    assert wiring.store().scored_ids(7, key) == {100, 101}
    # the next call serves those two from Redis and scores the next two
    seen.clear()
    r = client.post("/predict", json={"project": "7.1", "tasks": tasks, "label_config": LABEL_CONFIG})
    assert [row["id"] for row in seen] == [102, 103]
    assert [bool(res["result"]) for res in r.json()["results"]] == [True, True, True, True, False]


def _wait_for(condition, what: str):
    for _ in range(600):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _answer_within(seconds: float, call):
    """``call()``'s answer, failing (instead of hanging) when it has none after a generous ``seconds``."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(answer=call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert "answer" in out, f"no answer in {seconds} s: the call waits for a thread the scoring calls hold"
    return out["answer"]


def test_predict_answers_503_beyond_the_waiting_bound_and_health_stays_free(backend_env, monkeypatch):
    _env(monkeypatch, PREDICT_MAX_WAITING=2)
    body = lambda tid: {"project": "7.1", "tasks": [{"id": tid, "data": {"prompt": f"prompt {tid}"}}],  # noqa: E731
                        "label_config": LABEL_CONFIG}
    with TestClient(app) as c:
        assert c.post("/setup", json=_setup_body(extra_params=TEST_PARAMS)).status_code == 200
        assert c.post("/predict", json=body(1)).status_code == 200  # task 1 stored; the model is loaded

        async def two_threads():  # the whole pool is what the two waiting calls hold
            anyio.to_thread.current_default_thread_limiter().total_tokens = 2
        c.portal.call(two_threads)
        answers = {}
        with models.lock:  # the model is busy: scoring calls wait for it
            waiting = [threading.Thread(target=lambda t=t: answers.update({t: c.post("/predict", json=body(t))}))
                       for t in (2, 3)]
            for t in waiting:
                t.start()
            _wait_for(lambda: server.model_gate.busy == 2, "two /predict calls waiting for the model")
            r = c.post("/predict", json=body(4))
            assert r.status_code == 503 and r.headers["retry-after"] == str(server.RETRY_AFTER_S)
            assert "busy" in r.json()["detail"]
            assert _answer_within(30, lambda: c.get("/health")).status_code == 200  # not in the full pool
            stored = c.post("/predict", json=body(1))  # a stored draft needs no model
            assert stored.status_code == 200 and stored.json()["results"][0]["result"]
        for t in waiting:
            t.join(60)
        assert [answers[t].status_code for t in (2, 3)] == [200, 200]
        assert server.model_gate.busy == 0


# ------------------------------------------------------------------------------------------ webhook auth
def test_every_setup_puts_the_current_credentials_on_the_webhook(client, fake_ls, backend_env, monkeypatch):
    pid = fake_ls.project_id
    assert client.post("/setup", json=_setup_body(pid, TEST_PARAMS)).status_code == 200
    run_worker()
    assert fake_ls.webhooks[pid]["headers"] == {}  # no auth yet: nothing to add
    assert client.post("/setup", json=_setup_body(pid, TEST_PARAMS)).status_code == 200
    assert _queued(backend_env.score_queue) == 0  # nothing changed: no job at all

    _env(monkeypatch, WEBHOOK_SECRET="turned-on-later")  # auth turned on; Label Studio's settings unchanged
    fake_ls.calls.clear()
    assert client.post("/setup", json=_setup_body(pid, TEST_PARAMS)).status_code == 200
    hook = {"action": "ANNOTATION_CREATED", "project": {"id": pid}, "annotation": {"id": 1, "updated_at": "t"}}
    run_worker()
    assert fake_ls.webhooks[pid]["headers"] == {"X-Webhook-Secret": "turned-on-later"}
    assert "tasks" not in fake_ls.calls  # a cheap job: no re-plan
    assert client.post("/webhook", json=hook, headers=fake_ls.webhooks[pid]["headers"]).status_code == 200
    assert client.post("/setup", json=_setup_body(pid, TEST_PARAMS)).status_code == 200
    assert _queued(backend_env.score_queue) == 0  # already secured with these credentials

    _env(monkeypatch, WEBHOOK_SECRET="rotated")
    client.post("/setup", json=_setup_body(pid, TEST_PARAMS))
    run_worker()
    assert fake_ls.webhooks[pid]["headers"] == {"X-Webhook-Secret": "rotated"}
    conn = wiring.redis_conn()
    assert not any(b"rotated" in (conn.dump(k) or b"") for k in conn.keys("*"))  # no secret in Redis


# ------------------------------------------------------------------------------------------ duplicate events
def _annotation_event(ann_id: int, updated_at: str = "2026-11-27T10:00:00Z", action="ANNOTATION_CREATED"):
    return {"action": action, "project": {"id": 7}, "task": {"id": ann_id},
            "annotation": {"id": ann_id, "task": ann_id, "updated_at": updated_at, "result": []}}


def test_copies_of_one_event_count_once_toward_train_every(client, backend_env):
    client.post("/setup", json=_setup_body(extra_params={**TEST_PARAMS, "train_every": 3}))
    for _ in range(200):
        assert client.post("/webhook", json=_annotation_event(1)).json()["status"] == "coalesced"
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 7}, "annotations": [{"id": 50}]}
    for _ in range(20):
        assert client.post("/webhook", json=deleted).json()["status"] == "coalesced"
    assert _queued(backend_env.train_queue) == 0  # two distinct changes so far
    r = client.post("/webhook", json=_annotation_event(1, "2026-11-27T10:05:00Z", "ANNOTATION_UPDATED"))
    assert r.json()["status"] == "queued"  # an edit is a new change
    assert _queued(backend_env.train_queue) == 1


def test_an_event_the_last_training_already_read_does_not_count(client, backend_env):
    client.post("/setup", json=_setup_body(extra_params={**TEST_PARAMS, "train_every": 1}))
    st = wiring.store()
    st.reset_changes(7)  # what a training does when it starts ...
    st.save_training(7, {"version": "v1"}, ["1@2026-11-27T10:00:00Z"])  # ... and records when it ends
    assert client.post("/webhook", json=_annotation_event(1)).json()["status"] == "coalesced"
    assert _queued(backend_env.train_queue) == 0
    assert client.post("/webhook", json=_annotation_event(2)).json()["status"] == "queued"


def test_train_every_zero_counts_nothing(client, backend_env):
    client.post("/setup", json=_setup_body(extra_params={**TEST_PARAMS, "train_every": 0}))
    for i in range(5):
        assert client.post("/webhook", json=_annotation_event(i)).json()["status"] == "coalesced"
    assert not wiring.redis_conn().exists("wtd:p:7:changed") and _queued(backend_env.train_queue) == 0
