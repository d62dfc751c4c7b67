"""An in-memory stand-in for ``backend.labelstudio.LabelStudioClient`` (same methods, same shapes).

Unit and job tests run against this fake; the e2e test covers the real Label Studio server.
``import_predictions`` refuses scores outside [0, 1] (Label Studio 1.23 silently drops those);
``next_task`` mimics Uncertainty sampling as verified on Label Studio 1.23.2: unannotated tasks with a
prediction under ``project.model_version``, lowest score first; then the others.
"""
from __future__ import annotations

import itertools
from datetime import datetime, timezone

LABEL_CONFIG = """<View>
  <Text name="prompt" value="$prompt"/>
  <TextArea name="response" toName="prompt" rows="4" editable="true"/>
</View>"""


class FakeLabelStudio:
    def __init__(self, label_config: str = LABEL_CONFIG, extra_params=None, backend_url="http://127.0.0.1:9090"):
        self._ids = itertools.count(1)
        self.projects: dict[int, dict] = {}
        self.tasks_by_project: dict[int, list[dict]] = {}
        self.predictions: list[dict] = []
        self.activations: list[tuple[int, str]] = []
        self.backends: dict[int, dict] = {}
        self.webhooks: dict[int, dict] = {}
        self.calls: list[str] = []
        self.tasks_read = 0
        """Tasks returned by the lean reads (the real client's bytes grow with this)."""
        self.label_config, self.extra_params, self.backend_url = label_config, extra_params, backend_url

    # --- test helpers -------------------------------------------------------------------------
    def add_project(self, prompts: list[str], data_extra=None) -> int:
        pid = next(self._ids)
        self.projects[pid] = {"id": pid, "title": f"p{pid}", "label_config": self.label_config,
                              "model_version": "", "sampling": "Sequential sampling"}
        self.tasks_by_project[pid] = []
        self.add_tasks(pid, prompts, data_extra)
        bid = next(self._ids)
        self.backends[bid] = {"id": bid, "project": pid, "url": self.backend_url, "title": "wtd",
                              "extra_params": self.extra_params}
        self.webhooks[pid] = {"url": self.backend_url + "/webhook", "headers": {}}
        return pid

    def add_tasks(self, project: int, prompts: list[str], data_extra=None) -> list[int]:
        ids = []
        for i, p in enumerate(prompts):
            tid = next(self._ids)
            data = {"prompt": p, **((data_extra or [{}] * len(prompts))[i])}
            self.tasks_by_project[project].append({"id": tid, "data": data, "annotations": []})
            ids.append(tid)
        return ids

    def annotate(self, project: int, task_id: int, text: str, cancelled: bool = False,
                 completed_by: int | None = None) -> dict:
        now = datetime.now(timezone.utc).isoformat()
        ann = {"id": next(self._ids), "was_cancelled": cancelled, "created_at": now, "updated_at": now,
               "completed_by": completed_by,
               "result": [{"from_name": "response", "to_name": "prompt", "type": "textarea",
                           "value": {"text": [text]}}]}
        self._task(project, task_id)["annotations"].append(ann)
        return ann

    def _task(self, project: int, task_id: int) -> dict:
        return next(t for t in self.tasks_by_project[project] if t["id"] == task_id)

    # --- the client contract ------------------------------------------------------------------
    def project(self, project_id: int) -> dict:
        self.calls.append("project")
        if project_id not in self.projects:  # what the real client raises for Label Studio's 404
            from backend.labelstudio import LabelStudioError
            raise LabelStudioError(f"Label Studio API GET /api/projects/{project_id}: 404", 404)
        return {**self.projects[project_id], "task_number": len(self.tasks_by_project[project_id])}

    def tasks(self, project_id: int) -> list[dict]:
        self.calls.append("tasks")
        return [{**t, "annotations": [dict(a) for a in t["annotations"]]}
                for t in self.tasks_by_project[project_id]]

    def import_predictions(self, project_id: int, predictions: list[dict]) -> int:
        self.calls.append("import_predictions")
        task_ids = {t["id"] for t in self.tasks_by_project[project_id]}
        for p in predictions:
            assert p["task"] in task_ids and set(p) == {"task", "model_version", "score", "result"}
            assert 0 <= p["score"] <= 1, "Label Studio drops predictions scored outside [0, 1]"
            self.predictions.append({**p, "project": project_id, "id": next(self._ids)})
        return len(predictions)

    def activate_queue(self, project_id: int, model_version: str) -> None:
        self.calls.append("activate_queue")
        self.projects[project_id].update(model_version=model_version, sampling="Uncertainty sampling")
        self.activations.append((project_id, model_version))

    def ml_backends(self, project_id: int) -> list[dict]:
        self.calls.append("ml_backends")
        return [dict(b) for b in self.backends.values() if b["project"] == project_id]

    def set_extra_params(self, ml_backend_id: int, extra_params: dict) -> None:
        self.calls.append("set_extra_params")
        self.backends[ml_backend_id]["extra_params"] = extra_params

    def secure_webhook(self, project_id: int, backend_url: str, headers: dict[str, str]) -> bool:
        self.calls.append("secure_webhook")
        hook = self.webhooks.get(project_id)
        if hook is None or hook["url"] != backend_url + "/webhook":
            return False
        hook["headers"] = dict(headers)
        return True

    def next_task(self, project_id: int) -> dict | None:
        self.calls.append("next_task")
        version = self.projects[project_id]["model_version"]
        open_tasks = [t for t in self.tasks_by_project[project_id] if not t["annotations"]]
        scores = {}
        for p in self.predictions:
            if p["project"] == project_id and p["model_version"] == version:
                assert p["task"] not in scores, f"two predictions of {version} on task {p['task']}"
                scores[p["task"]] = p["score"]
        ranked = sorted((t for t in open_tasks if t["id"] in scores), key=lambda t: scores[t["id"]])
        rest = [t for t in open_tasks if t["id"] not in scores]
        return (ranked + rest or [None])[0]

    # --- lean reads and version clean-up (real: Data Manager filters, include=, model-versions) -----
    def task_index(self, project_id: int, after_id: int = 0) -> list[dict]:
        self.calls.append("task_index")
        out = [{"id": t["id"], "data": dict(t["data"])}
               for t in self.tasks_by_project[project_id] if t["id"] > after_id]
        self.tasks_read += len(out)
        return out

    def task_ids(self, project_id: int) -> list[int]:
        self.calls.append("task_ids")
        return [t["id"] for t in self.tasks_by_project[project_id]]

    def annotated_tasks(self, project_id: int) -> list[dict]:
        self.calls.append("annotated_tasks")
        out = [{**t, "annotations": [dict(a) for a in t["annotations"]]}
               for t in self.tasks_by_project[project_id] if t["annotations"]]
        self.tasks_read += len(out)
        return out

    def task_predictions(self, project_id: int, task_ids: list[int]) -> dict[int, list[dict]]:
        self.calls.append("task_predictions")
        wanted = set(task_ids)
        out = {t["id"]: [] for t in self.tasks_by_project[project_id] if t["id"] in wanted}
        for p in self.predictions:
            if p["project"] == project_id and p["task"] in out:
                out[p["task"]].append({k: p[k] for k in ("id", "model_version", "score")})
        self.tasks_read += len(out)
        return out

    def update_prediction(self, prediction_id: int, result: list[dict]) -> None:
        self.calls.append("update_prediction")
        next(p for p in self.predictions if p["id"] == prediction_id)["result"] = result

    def model_versions(self, project_id: int) -> dict[str, int]:
        self.calls.append("model_versions")
        out: dict[str, int] = {}
        for p in self.predictions:
            if p["project"] == project_id:
                out[p["model_version"]] = out.get(p["model_version"], 0) + 1
        return out

    def delete_model_version(self, project_id: int, model_version: str) -> int:
        self.calls.append("delete_model_version")
        keep = [p for p in self.predictions if p["project"] != project_id or p["model_version"] != model_version]
        n, self.predictions = len(self.predictions) - len(keep), keep
        return n

    def delete_annotations(self, project: int, task_id: int) -> None:
        """Test helper: the annotator deletes the task's annotations (ANNOTATIONS_DELETED)."""
        self._task(project, task_id)["annotations"].clear()

    def predictions_of(self, version: str) -> list[dict]:
        return [p for p in self.predictions if p["model_version"] == version]


# ------------------------------------------------------------------------------------------ fixtures
# Imported by the test modules that need them (kept here rather than in a conftest shared with the
# Label Studio client's own tests).
import pytest  # noqa: E402

TEST_PARAMS = {"budget": 4, "min_per_task": 1, "task_field": "task", "max_new_tokens": 4, "train_every": 3,
               "epochs": 1, "batch_size": 4, "r": 4, "lora_alpha": 8}
PROMPTS = [f"{verb} sentence number {i}" for i, verb in
           enumerate(["summarize", "translate", "classify", "reverse", "count"] * 2)]
TASK_LABELS = [{"task": ["summarize", "translate"][i % 2]} for i in range(len(PROMPTS))]


@pytest.fixture
def backend_env(redis_url, tiny_model_dir, tmp_path, monkeypatch):
    """The backend's settings pointed at the test Redis (db 15), the tiny model and a temp adapter root."""
    from backend.model_cache import models
    from backend.settings import get_settings

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("MODEL_NAME_OR_PATH", str(tiny_model_dir))
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "adapters"))
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("SCORE_CHUNK_SIZE", "4")
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "WEBHOOK_SECRET", "PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    models.clear()
    yield get_settings()
    get_settings.cache_clear()
    models.clear()


@pytest.fixture
def fake_ls(backend_env, monkeypatch):
    """A fake Label Studio with one 10-task project (two labelled tasks kinds), wired into the backend."""
    from backend import wiring

    ls = FakeLabelStudio(extra_params=dict(TEST_PARAMS))
    ls.project_id = ls.add_project(PROMPTS, TASK_LABELS)
    monkeypatch.setattr(wiring, "make_client", lambda: ls)
    return ls


def run_worker() -> None:
    """Run every queued job (and what they enqueue) in this process, like ``python -m backend worker --burst``."""
    from rq import SimpleWorker

    from backend import wiring
    from backend.settings import get_settings
    SimpleWorker(get_settings().queues, connection=wiring.redis_conn()).work(burst=True)
