"""Adapters across hosts that share only Redis: copied into Redis after a save, fetched where missing,
pruned, and never silently replaced by the base model.

A "host" is a MODEL_DIR: switching ``MODEL_DIR`` (and clearing the settings and model caches) is what a
worker on another machine sees. The job-chain test runs both hosts' workers in this process (the
in-memory Label Studio cannot be shared with another process); the worker-process test runs the second
host as a real ``python -m backend worker --burst`` with its own MODEL_DIR against the same Redis.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry

from backend import adapter_sync, enqueue, wiring
from backend.adapter_sync import AdapterUnavailable
from backend.metrics import project_metrics
from backend.model_cache import models
from backend.project import current_adapters, missing_adapters, score_key
from backend.settings import get_settings
from tests.backend.fakes import TEST_PARAMS, backend_env, fake_ls, run_worker  # noqa: F401 (fixtures)
from tests.model.test_adapters import FakeAdapter

REPO = Path(__file__).resolve().parents[2]


class BigAdapter(FakeAdapter):
    """An adapter of ``size`` bytes (random, so it neither compresses nor repeats)."""

    def __init__(self, tag="big", size=0):
        super().__init__(tag)
        self.size = size

    def save_pretrained(self, folder):
        super().save_pretrained(folder)
        (folder / "adapter_model.safetensors").write_bytes(os.urandom(self.size))


def on_host(monkeypatch, model_dir) -> Path:
    """Become a worker on another host: its own MODEL_DIR, no model loaded."""
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
    get_settings.cache_clear()
    models.clear()
    return Path(model_dir)


def files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def save(project: int, adapter=None) -> str:
    """Save and publish on the current host, as the training job does."""
    version = wiring.adapter_store().save(str(project), adapter or FakeAdapter(), {})
    adapter_sync.publish(project, version)
    return version


@pytest.fixture
def hosts(redis_url, tmp_path, monkeypatch):
    """Host A's and host B's MODEL_DIR (A's is in force), one Redis."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    for name in ("ADAPTER_KEEP", "ADAPTER_REDIS_MAX_MB"):
        monkeypatch.delenv(name, raising=False)
    a = on_host(monkeypatch, tmp_path / "host-a")
    yield a, tmp_path / "host-b"
    get_settings.cache_clear()
    models.clear()


def test_a_published_version_is_fetched_once_by_a_host_without_it(hosts, monkeypatch):
    a, b = hosts
    version = save(7, BigAdapter("trained on a", size=(5 << 20) // 2))  # 2.5 MB: three chunks in Redis
    assert wiring.store().adapter_files_info(7, version)["chunks"] == 3
    on_host(monkeypatch, b)
    assert adapter_sync.available(7, version) and not (b / "7").exists()
    path = adapter_sync.ensure_local(7, version)
    assert path == b / "7" / version and files(path) == files(a / "7" / version)
    assert wiring.adapter_store().meta(7, version)["version"] == version
    assert not [p for p in (b / "7").iterdir() if p.name.startswith(".")]  # no temp left
    wiring.store().delete_adapter_files(7, [version])  # from now on the host's own copy serves
    assert adapter_sync.ensure_local(7, version) == path


def _in_force(st) -> tuple:
    draft, selecting = current_adapters(st, 7, rounds=1)  # one round: selected by the base model
    return (draft, *selecting)


def test_a_version_in_neither_place_is_reported_never_replaced_by_the_base_model(hosts, monkeypatch):
    a, b = hosts
    st = wiring.store()
    version = save(7)
    st.set_adapter(7, version)
    on_host(monkeypatch, b)
    assert missing_adapters(7, _in_force(st)) == []
    st.delete_adapter_files(7, [version])  # the copy lost (say, Redis restored from an old dump)
    assert current_adapters(st, 7, rounds=1) == (version, [None])  # still the version, not None (base)
    assert missing_adapters(7, _in_force(st)) == [version]
    assert project_metrics(st, 7)["adapters_missing"] == [version]
    with pytest.raises(AdapterUnavailable, match=f"adapter {version} is neither"):
        adapter_sync.ensure_local(7, version)
    assert not (b / "7" / version).exists()
    on_host(monkeypatch, a)  # the training host still has its copy
    assert project_metrics(st, 7)["adapters_missing"] == []


def test_a_corrupt_copy_is_refused(hosts, monkeypatch):
    a, b = hosts
    st = wiring.store()
    version = save(7)
    st.conn.hset(f"wtd:p:7:adapter_files:{version}", "c0", b"not the tar that was published")
    on_host(monkeypatch, b)
    with pytest.raises(RuntimeError, match="corrupt"):
        adapter_sync.ensure_local(7, version)
    assert wiring.adapter_store().versions(7) == []


def test_version_numbers_are_global_and_a_clash_is_dropped(hosts, monkeypatch):
    from model.adapters import AdapterStore
    a, b = hosts
    assert [save(7) for _ in range(2)] == ["v0001", "v0002"]
    on_host(monkeypatch, b)
    assert save(7) == "v0003"  # host B has nothing on disk, yet does not reuse A's numbers
    # A host that numbered on its own (an older backend) clashes with A's v0001: its copy is dropped.
    c = on_host(monkeypatch, b.parent / "host-c")
    assert AdapterStore(c).save("7", FakeAdapter("other"), {}) == "v0001"
    with pytest.raises(RuntimeError, match="published by another host"):
        adapter_sync.publish(7, "v0001")
    assert wiring.adapter_store().versions(7) == []
    on_host(monkeypatch, a)
    assert files(adapter_sync.ensure_local(7, "v0001")) == files(a / "7" / "v0001")
    # Pruning the copies never lowers the numbering.
    wiring.store().delete_adapter_files(7, ["v0001", "v0002", "v0003"])
    assert save(7) == "v0004"


def test_too_big_for_redis_fails_before_use_and_zero_means_shared_model_dir(hosts, monkeypatch):
    a, b = hosts
    st = wiring.store()
    monkeypatch.setenv("ADAPTER_REDIS_MAX_MB", "1")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="ADAPTER_REDIS_MAX_MB=1"):
        save(7, BigAdapter(size=3 << 19))  # 1.5 MB
    assert wiring.adapter_store().versions(7) == [] and st.published_adapters(7) == []
    monkeypatch.setenv("ADAPTER_REDIS_MAX_MB", "0")
    get_settings.cache_clear()
    version = save(7, BigAdapter(size=3 << 19))
    assert wiring.adapter_store().versions(7) == [version] and st.published_adapters(7) == []


def test_prune_keeps_the_newest_and_those_in_use_on_disk_and_in_redis(hosts, monkeypatch):
    a, b = hosts
    st = wiring.store()
    monkeypatch.setenv("ADAPTER_KEEP", "2")
    get_settings.cache_clear()
    versions = [save(7) for _ in range(6)]
    st.set_round_adapter(7, 2, versions[0])  # selects round 2
    st.set_adapter(7, versions[2])  # rolled back
    assert adapter_sync.prune(7) == {"disk": ["v0002", "v0004"], "redis": ["v0002", "v0004"]}
    kept = ["v0001", "v0003", "v0005", "v0006"]
    assert wiring.adapter_store().versions(7) == kept and st.published_adapters(7) == kept
    assert st.conn.keys("wtd:p:7:adapter_files:v0002") == []
    # Host B's cache of fetched versions is pruned the same way as it fills.
    on_host(monkeypatch, b)
    for version in kept:
        adapter_sync.ensure_local(7, version)
    assert wiring.adapter_store().versions(7) == kept
    st.set_adapter(7, "v0006")
    adapter_sync.ensure_local(7, "v0006")
    adapter_sync.prune(7)
    assert wiring.adapter_store().versions(7) == ["v0001", "v0005", "v0006"]


@pytest.mark.slow
def test_a_worker_on_another_host_drafts_with_the_new_adapter(fake_ls, tmp_path, monkeypatch):
    ls, pid = fake_ls, fake_ls.project_id
    st, s = wiring.store(), get_settings()
    a = s.model_dir
    # Host A runs the training queue only.
    for task in ls.tasks_by_project[pid][:3]:
        ls.annotate(pid, task["id"], "a short answer")
    enqueue.enqueue_train(pid)
    SimpleWorker([s.train_queue], connection=wiring.redis_conn()).work(burst=True)
    version = st.adapter(pid)
    assert version == "v0001" and (a / str(pid) / version).is_dir()

    # Host B (its own MODEL_DIR) runs what the training enqueued: re-plan, score chunks, queue.
    b = on_host(monkeypatch, tmp_path / "host-b")
    run_worker()
    assert files(b / str(pid) / version) == files(a / str(pid) / version)
    draft_key = score_key(s.model_name_or_path, version, TEST_PARAMS["max_new_tokens"])
    state = st.queue(pid)
    unlabeled = {t["id"] for t in ls.tasks_by_project[pid] if not t["annotations"]}
    assert state["score_key"] == draft_key and state["predictions"] == len(unlabeled) == 7
    drafts = st.scores(pid, draft_key)
    assert set(drafts) == unlabeled  # only host B scored: host A trained and nothing else
    preds = ls.predictions_of(state["model_version"])
    assert sorted(p["task"] for p in preds) == sorted(unlabeled)
    assert all(p["result"][0]["value"]["text"] == [drafts[p["task"]]["response"]] for p in preds)

    # Host C has no copy and Redis lost its: no drafts at all rather than the base model's.
    st.delete_adapter_files(pid, [version])
    on_host(monkeypatch, tmp_path / "host-c")
    [new] = ls.add_tasks(pid, ["describe sentence number 99"], [{"task": "summarize"}])
    enqueue.enqueue_refresh(pid)
    run_worker()
    queue = Queue(s.score_queue, connection=st.conn)
    [failed] = [queue.fetch_job(i) for i in FailedJobRegistry(queue=queue).get_job_ids()]
    assert "AdapterUnavailable" in failed.latest_result().exc_string and version in failed.latest_result().exc_string
    assert st.queue(pid) == state  # the last good queue stays in Label Studio
    base_key = score_key(s.model_name_or_path, None, TEST_PARAMS["max_new_tokens"])
    assert st.scores(pid, draft_key, [new]) == {} and st.scores(pid, base_key, [new]) == {}
    assert project_metrics(st, pid)["adapters_missing"] == [version]
    from backend.server import app
    r = TestClient(app).post("/predict", json={"project": str(pid), "tasks": [{"id": new, "data": {"prompt": "hi"}}],
                                               "label_config": ls.label_config})
    assert r.status_code == 503 and version in r.json()["detail"]
    assert not [k for k in st.conn.keys(f"wtd:p:{pid}:scores:*") if st.conn.hexists(k, str(new))]

    # Training does not need the lost adapter: the next one, on host C, heals the project.
    for task in ls.tasks_by_project[pid][3:6]:
        ls.annotate(pid, task["id"], "another answer")
    enqueue.enqueue_train(pid)
    run_worker()
    assert st.adapter(pid) == "v0002" and project_metrics(st, pid)["adapters_missing"] == []
    assert "|v0002|" in st.queue(pid)["score_key"] and new in st.scores(pid, st.queue(pid)["score_key"])


@pytest.mark.slow
def test_a_second_worker_process_with_its_own_model_dir_fetches_the_adapter(backend_env, tmp_path):
    from model.config import TrainConfig
    from model.training import train_lora
    st, s = wiring.store(), backend_env
    result = train_lora(models.get(None), [("answer the question briefly", "yes")],
                        TrainConfig(r=2, lora_alpha=4, epochs=1, batch_size=1, seed=1))
    version = wiring.adapter_store().save("7", result.peft_model, result.meta())
    adapter_sync.publish(7, version)
    st.set_adapter(7, version)
    rows = [{"id": 1, "prompt": "count the number of words"}, {"id": 2, "prompt": "say yes"}]
    draft_key, base_key = (score_key(s.model_name_or_path, v, 4) for v in (version, None))

    b = tmp_path / "host-b"
    failed = worker_process(b, [(7, version, rows, 4)])
    assert failed == [] and set(st.scores(7, draft_key)) == {1, 2}
    assert files(b / "7" / version) == files(s.model_dir / "7" / version)

    st.delete_adapter_files(7, [version])
    failed = worker_process(tmp_path / "host-c", [(7, version, [{"id": 3, "prompt": "say no"}], 4)])
    assert len(failed) == 1 and "AdapterUnavailable" in failed[0]
    assert st.scores(7, draft_key, [3]) == {} and st.scores(7, base_key) == {}


def worker_process(model_dir: Path, chunks: list[tuple]) -> list[str]:
    """Enqueue score chunks, run ``python -m backend worker --burst`` with ``model_dir``; failed jobs' errors."""
    s, st = get_settings(), wiring.store()
    queue = Queue(s.score_queue, connection=st.conn)
    for args in chunks:
        enqueue.enqueue_job("backend.planning.score_chunk", args, s.score_queue, 600, st.next_job_id(7, "score"))
    env = {**os.environ, "MODEL_DIR": str(model_dir), "REDIS_URL": s.redis_url, "DEVICE": "cpu",
           "MODEL_NAME_OR_PATH": s.model_name_or_path, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "backend", "worker", "--burst", "--queue", s.score_queue],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    registry = FailedJobRegistry(queue=queue)
    errors = [queue.fetch_job(i).latest_result().exc_string for i in registry.get_job_ids()]
    for i in registry.get_job_ids():
        registry.remove(i, delete_job=True)
    return errors
