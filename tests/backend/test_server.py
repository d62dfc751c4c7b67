"""Protocol tests of every endpoint (FastAPI TestClient) against a real Redis and the fake Label Studio."""
import json
import time

import pytest
from fastapi.testclient import TestClient
from rq import Queue

from backend import wiring
from backend.project import score_key
from backend.settings import get_settings
from backend.server import app
from tests.backend.fakes import LABEL_CONFIG, TEST_PARAMS, backend_env, fake_ls, run_worker  # noqa: F401


@pytest.fixture
def client(backend_env):
    return TestClient(app)


def _setup_body(pid=7, extra_params=None):
    return {"project": f"{pid}.1764212345", "schema": LABEL_CONFIG, "hostname": "http://127.0.0.1:8080",
            "access_token": "secret-token", "extra_params": extra_params}


def _queued(name: str) -> int:
    return Queue(name, connection=wiring.redis_conn()).count


def test_health(client):
    t0 = time.perf_counter()
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "UP", "model_class": "WeightedTaskDiversity"}
    assert time.perf_counter() - t0 < 1


def test_setup_saves_config_and_enqueues_one_connect_job(client, backend_env):
    body = _setup_body(extra_params=json.dumps(TEST_PARAMS))
    for _ in range(2):  # Label Studio calls /setup twice on connect
        t0 = time.perf_counter()
        r = client.post("/setup", json=body)
        assert r.status_code == 200 and r.json() == {"model_version": "wtd-7-0"}
        assert time.perf_counter() - t0 < 3
    assert _queued(backend_env.score_queue) == 1
    assert wiring.store().setup(7) == (LABEL_CONFIG, TEST_PARAMS)


@pytest.mark.parametrize("extra,setting", [({"budget": 0}, "budget"), ('{"strategy": "nope"}', "strategy"),
                                           ({"bugdet": 3}, "bugdet")])
def test_setup_rejects_invalid_settings_naming_them(client, extra, setting):
    r = client.post("/setup", json=_setup_body(extra_params=extra))
    assert r.status_code == 400 and f"'{setting}'" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook"])
def test_bad_json_is_400(client, path):
    r = client.post(path, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]


@pytest.mark.parametrize("path,body", [
    ("/setup", [1, 2]), ("/setup", {"schema": LABEL_CONFIG}), ("/setup", {"project": "abc", "schema": ""}),
    ("/predict", {"project": "1.2", "tasks": "nope"}), ("/predict", {"project": "1.2", "tasks": [{"data": {}}]}),
    ("/webhook", {"project": {"id": 1}}), ("/webhook", {"action": "TASKS_CREATED"})])
def test_wrong_shapes_are_422(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_setup_rejects_a_label_config_without_textarea(client):
    body = {**_setup_body(), "schema": '<View><Text name="p" value="$p"/></View>'}
    r = client.post("/setup", json=body)
    assert r.status_code == 400 and "TextArea" in r.json()["detail"]


def test_unknown_webhook_actions_are_ignored(client):
    r = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 3}})
    assert r.status_code == 200 and r.json()["status"] == "ignored"


def test_a_burst_of_webhooks_queues_one_training(client, backend_env):
    client.post("/setup", json=_setup_body(extra_params=TEST_PARAMS))
    payload = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 1, "result": []},
               "task": {"id": 1}, "project": {"id": 7}}
    took = []
    actions = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
    for i in range(100):
        t0 = time.perf_counter()
        r = client.post("/webhook", json={**payload, "action": actions[i % 3], "annotation": {"id": i, "task": i}})
        took.append(time.perf_counter() - t0)
        assert r.status_code == 200
    for _ in range(5):
        assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}}).status_code == 200
    assert _queued(backend_env.train_queue) == 1
    assert sorted(took)[50] < 0.1


def test_the_annotation_of_a_rounds_last_open_pick_forces_a_training(client, backend_env):
    client.post("/setup", json=_setup_body(extra_params={**TEST_PARAMS, "rounds": 2, "train_every": 0}))
    wiring.store().set_round_open(7, [11, 12])
    hook = {"action": "ANNOTATION_CREATED", "project": {"id": 7}}
    assert client.post("/webhook", json={**hook, "annotation": {"id": 1, "task": 11}}).json()["status"] == "coalesced"
    assert client.post("/webhook", json={**hook, "annotation": {"id": 2, "task": 99}}).json()["status"] == "coalesced"
    assert _queued(backend_env.train_queue) == 0  # train_every 0: only a round's end trains
    assert client.post("/webhook", json={**hook, "task": {"id": 12}}).json()["status"] == "queued"
    assert _queued(backend_env.train_queue) == 1


def test_tasks_created_enqueues_one_refresh(client, backend_env):
    client.post("/setup", json=_setup_body(extra_params=TEST_PARAMS))
    before = _queued(backend_env.score_queue)
    for _ in range(3):
        r = client.post("/webhook", json={"action": "TASKS_CREATED", "tasks": [{"id": 1}], "project": {"id": 7}})
        assert r.status_code == 200
    assert _queued(backend_env.score_queue) == before + 1


def test_predict_serves_stored_drafts_and_queue_positions(client, fake_ls):
    pid = fake_ls.project_id
    client.post("/setup", json=_setup_body(pid, TEST_PARAMS))
    run_worker()
    version = wiring.store().queue(pid)["model_version"]
    tasks = fake_ls.tasks(pid)[:3]
    r = client.post("/predict", json={"tasks": tasks, "project": f"{pid}.123", "label_config": LABEL_CONFIG,
                                      "params": {}})
    assert r.status_code == 200
    results = r.json()["results"]
    expected = {p["task"]: p for p in fake_ls.predictions_of(version)}
    assert [res["score"] for res in results] == [expected[t["id"]]["score"] for t in tasks]
    assert [res["result"] for res in results] == [expected[t["id"]]["result"] for t in tasks]
    assert all(res["model_version"] == version for res in results)


def test_predict_scores_unscored_tasks_on_the_spot(client, backend_env):
    client.post("/setup", json=_setup_body(extra_params=TEST_PARAMS))
    tasks = [{"id": 101, "data": {"prompt": "translate this sentence into french"}},
             {"id": 102, "data": {"other": "no prompt"}}]
    r = client.post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": LABEL_CONFIG})
    assert r.status_code == 200
    first, second = r.json()["results"]
    assert first["result"][0]["to_name"] == "prompt" and first["result"][0]["type"] == "textarea"
    assert second["result"] == [] and first["score"] == second["score"] == 1.0  # after every queued task
    key = score_key(get_settings().model_name_or_path, None, TEST_PARAMS["max_new_tokens"])
    assert wiring.store().scored_ids(7, key) == {101}  # kept for the queue job


def test_metrics_show_queue_scoring_and_jobs(client, fake_ls):
    pid = fake_ls.project_id
    client.post("/setup", json=_setup_body(pid, TEST_PARAMS))
    run_worker()
    m = client.get("/metrics").json()["projects"][str(pid)]
    assert m["queue"]["model_version"] == f"wtd-{pid}-1" and m["queue"]["selected"] == 4
    assert m["scoring"]["done"] == m["scoring"]["total"] == 10
    assert m["jobs"]["write"]["status"] == "finished" and m["adapter"] is None
    sel = m["selection"]  # the selection per task, for reports (the demo's) that must not read Redis keys
    assert sel["budget"] == sel["selected"] == sum(sel["allocation"].values()) == 4
    assert set(sel["allocation"]) == set(sel["task_sizes"]) == set(sel["task_confidence"])
    assert sum(sel["task_sizes"].values()) == 10


@pytest.fixture
def auth_env(backend_env, monkeypatch):
    from backend.settings import get_settings
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "pw")
    monkeypatch.setenv("WEBHOOK_SECRET", "hook-secret")
    get_settings.cache_clear()


def test_basic_auth_on_every_route(client, auth_env):
    for method, path in [("get", "/health"), ("get", "/metrics"), ("post", "/setup"), ("post", "/predict"),
                         ("post", "/webhook")]:
        r = getattr(client, method)(path)
        assert r.status_code == 401, path
        assert getattr(client, method)(path, auth=("ls", "wrong")).status_code == 401
    assert client.get("/health", auth=("ls", "pw")).status_code == 200
    hook = {"action": "START_TRAINING", "project": {"id": 7}}
    assert client.post("/webhook", json=hook, auth=("ls", "pw")).status_code == 200
    assert client.post("/webhook", json=hook, headers={"X-Webhook-Secret": "hook-secret"}).status_code == 200
    assert client.post("/webhook", json=hook, headers={"X-Webhook-Secret": "nope"}).status_code == 401


def test_redis_down_is_503_and_recovers(client, backend_env, monkeypatch):
    from backend.settings import get_settings
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    assert client.get("/health").status_code == 200
    for path, body in [("/setup", _setup_body()), ("/webhook", {"action": "TASKS_CREATED", "project": {"id": 7}}),
                       ("/predict", {"tasks": [], "project": "7.1"})]:
        r = client.post(path, json=body)
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
    assert client.get("/metrics").status_code == 503
    monkeypatch.setenv("REDIS_URL", backend_env.redis_url)
    get_settings.cache_clear()
    assert client.post("/setup", json=_setup_body()).status_code == 200


def test_secrets_never_reach_the_logs(client, fake_ls, monkeypatch, caplog):
    from backend.settings import get_settings
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "ls-key-0123456789")
    monkeypatch.setenv("WEBHOOK_SECRET", "hook-secret-0123")
    get_settings.cache_clear()
    caplog.set_level("DEBUG")
    body = {**_setup_body(fake_ls.project_id, TEST_PARAMS), "access_token": "access-token-0123"}
    assert client.post("/setup", json=body).status_code == 200
    run_worker()
    assert fake_ls.webhooks[fake_ls.project_id]["headers"] == {"X-Webhook-Secret": "hook-secret-0123"}
    assert "ls-key-0123456789" not in repr(get_settings())
    for secret in ("ls-key-0123456789", "hook-secret-0123", "access-token-0123"):
        assert secret not in caplog.text


def test_setup_replans_only_when_the_settings_change(client, fake_ls, backend_env):
    pid = fake_ls.project_id
    client.post("/setup", json=_setup_body(pid, TEST_PARAMS))
    wiring.store().clear_pending(pid, "connect", wiring.store().jobs(pid)["connect"])  # as if it started
    # Label Studio calls /setup again after every project update, our queue activation included
    client.post("/setup", json=_setup_body(pid, TEST_PARAMS))
    assert _queued(backend_env.score_queue) == 1
    run_worker()
    assert client.post("/setup", json=_setup_body(pid, TEST_PARAMS)).json() == {"model_version": f"wtd-{pid}-1"}
    assert _queued(backend_env.score_queue) == 0
    client.post("/setup", json=_setup_body(pid, {**TEST_PARAMS, "budget": 5}))
    assert _queued(backend_env.score_queue) == 1
