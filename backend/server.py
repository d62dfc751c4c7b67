"""FastAPI app speaking the label-studio-ml protocol: /health, /setup, /predict, /webhook, /metrics.

Requests never load a model except /predict for tasks without current stored scores, and never wait
on Label Studio: /setup and /webhook only write Redis and enqueue jobs. Redis is connected lazily, so a
dead Redis gives 503 on the routes that need it and the server recovers when it is back.
"""
from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import redis
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from backend import enqueue, wiring
from backend.metrics import all_metrics
from backend.model_cache import score_tasks
from backend.project import current_adapters
from backend.queue_writer import queue_score
from backend.annotations import LabelConfigError, parse_label_config, textarea_result
from backend.project_config import ProjectConfig, ProjectConfigError, extra_params_dict, parse_extra_params
from backend.settings import get_settings

log = logging.getLogger(__name__)

TRAIN_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
HANDLED_EVENTS = TRAIN_EVENTS | {"START_TRAINING", "TASKS_CREATED"}


# ------------------------------------------------------------------------------------------ auth
_basic = HTTPBasic(auto_error=False)


def _basic_ok(creds: HTTPBasicCredentials | None) -> bool:
    expected = get_settings().basic_auth
    return creds is not None and expected is not None and \
        secrets.compare_digest(creds.username.encode(), expected[0].encode()) and \
        secrets.compare_digest(creds.password.encode(), expected[1].encode())


def _unauthorized() -> HTTPException:
    return HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Basic"})


def require_auth(creds: HTTPBasicCredentials | None = Depends(_basic)) -> None:
    if get_settings().basic_auth is not None and not _basic_ok(creds):
        raise _unauthorized()


def require_webhook_auth(request: Request, creds: HTTPBasicCredentials | None = Depends(_basic)) -> None:
    """Basic auth or, when WEBHOOK_SECRET is set, a matching X-Webhook-Secret header."""
    s = get_settings()
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    if s.basic_auth is None and secret is None:
        return
    given = request.headers.get("x-webhook-secret")
    if secret is not None and given is not None and secrets.compare_digest(given.encode(), secret.encode()):
        return
    if not _basic_ok(creds):
        raise _unauthorized()


# ------------------------------------------------------------------------------------------ bodies
def _project_id(v: Any) -> int:
    """Label Studio sends "<id>.<timestamp>" in /setup and /predict, and {"id": ...} in webhooks."""
    if isinstance(v, dict):
        v = v.get("id")
    if isinstance(v, bool) or v is None:
        raise ValueError("project id missing")
    try:
        return int(str(v).split(".")[0])
    except ValueError:
        raise ValueError(f"not a project id: {v!r}") from None


class SetupBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: int
    label_config: str = Field("", alias="schema")
    extra_params: Any = None

    _project = field_validator("project", mode="before")(_project_id)


class PredictTask(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    data: dict = {}


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[PredictTask]
    project: int
    label_config: str | None = None

    _project = field_validator("project", mode="before")(_project_id)


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: str
    project: int | None = None

    @field_validator("project", mode="before")
    @classmethod
    def _project(cls, v):
        return None if v is None else _project_id(v)


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"request body is not valid JSON: {e}") from None


def _validated(model: type[BaseModel], payload: Any):
    if not isinstance(payload, dict):
        raise HTTPException(422, f"request body must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


# ------------------------------------------------------------------------------------------ app
app = FastAPI(title="Weighted Task Diversity ML backend")


@app.exception_handler(redis.exceptions.ConnectionError)
@app.exception_handler(redis.exceptions.TimeoutError)
async def _redis_down(request: Request, exc: Exception):
    log.error("Redis unavailable on %s: %s", request.url.path, exc)
    return JSONResponse({"detail": "Redis is unavailable; retry when it is back"}, status_code=503)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


@app.get("/health", dependencies=[Depends(require_auth)])
@app.get("/", dependencies=[Depends(require_auth)])
def health() -> dict:
    return {"status": "UP", "model_class": get_settings().model_class}


def _model_version(queue: dict | None, project: int) -> str:
    """The version of the queue last written (Label Studio keeps it as the backend's version)."""
    return queue["model_version"] if queue else f"wtd-{project}-0"


@app.post("/setup", dependencies=[Depends(require_auth)])
async def setup(request: Request) -> dict:
    body = _validated(SetupBody, await _json(request))
    try:
        params = extra_params_dict(body.extra_params)
        parse_extra_params(params)
        parse_label_config(body.label_config)
    except (ProjectConfigError, LabelConfigError) as e:
        raise HTTPException(400, str(e)) from None
    st = wiring.store()
    # Label Studio re-runs /setup whenever the project changes - including our own queue activation -
    # so only changed settings or a project not connected yet start a connect, else each pass loops.
    if st.save_setup(body.project, body.label_config, params) or not enqueue.connected(body.project):
        enqueue.enqueue_connect(body.project)
    return {"model_version": _model_version(st.queue(body.project), body.project)}


def _project_config(st, project: int) -> tuple[ProjectConfig, str | None]:
    """The settings and label config saved by the last /setup (validated there); defaults before it."""
    saved = st.setup(project)
    return (parse_extra_params(saved[1]), saved[0]) if saved else (ProjectConfig(), None)


@app.post("/predict", dependencies=[Depends(require_auth)])
async def predict(request: Request) -> dict:
    body = _validated(PredictBody, await _json(request))
    st = wiring.store()
    config, saved_label_config = _project_config(st, body.project)
    try:
        iface = parse_label_config(body.label_config or saved_label_config or "")
    except LabelConfigError as e:
        raise HTTPException(400, str(e)) from None
    field = config.prompt_field or iface.prompt_field
    rows = [{"id": t.id, "prompt": t.data.get(field)} for t in body.tasks]
    rows = [r for r in rows if isinstance(r["prompt"], str) and r["prompt"].strip()]
    adapter, _ = current_adapters(st, body.project, config.rounds)
    drafts = await run_in_threadpool(score_tasks, body.project, adapter, rows, config.max_new_tokens)
    positions = st.positions(body.project, [t.id for t in body.tasks])
    queue = st.queue(body.project)
    version, length = _model_version(queue, body.project), (queue or {}).get("predictions", 0)
    # Tasks not in the written queue (new, not yet planned) rank after every queued one.
    return {"results": [
        {"result": textarea_result(iface, drafts[t.id]["response"]) if t.id in drafts else [],
         "score": queue_score(positions.get(t.id, -1), length), "model_version": version}
        for t in body.tasks]}


@app.post("/webhook", dependencies=[Depends(require_webhook_auth)])
async def webhook(request: Request) -> dict:
    body = _validated(WebhookBody, await _json(request))
    if body.action not in HANDLED_EVENTS:
        return {"status": "ignored", "action": body.action}
    if body.project is None:
        raise HTTPException(422, f"{body.action}: payload has no project id")
    st, p = wiring.store(), body.project
    st.add_project(p)
    job = None
    if body.action == "TASKS_CREATED":
        job = enqueue.enqueue_refresh(p)
    elif body.action == "START_TRAINING":
        job = enqueue.enqueue_train(p)
    else:
        config, _ = _project_config(st, p)
        if st.add_change(p) >= config.train_every > 0:
            job = enqueue.enqueue_train(p)
        if _moves_window(st, p, body):
            enqueue.enqueue_refresh(p)
    return {"status": "queued" if job else "coalesced", "action": body.action}


def _moves_window(st, project: int, body: WebhookBody) -> bool:
    """An annotation saved on a task inside the draft window moves the window on (O(1) Redis reads);
    counts it for live progress. Skips and deletions leave the window to the reconcile pass."""
    ann = (body.model_extra or {}).get("annotation")
    task = ann.get("task") if isinstance(ann, dict) else None
    task = task.get("id") if isinstance(task, dict) else task
    if body.action == "ANNOTATIONS_DELETED" or not isinstance(task, int) or ann.get("was_cancelled"):
        return False
    st.mark_annotated(project, task)
    pos = st.positions(project, [task]).get(task)
    return pos is not None and pos <= (st.queue(project) or {}).get("window_end", -1)


@app.get("/metrics", dependencies=[Depends(require_auth)])
def metrics() -> dict:
    return all_metrics(wiring.store())
