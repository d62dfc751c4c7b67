"""FastAPI app speaking the label-studio-ml protocol: /health, /setup, /predict, /webhook, /metrics;
and /dashboard (backend/dashboard.py) for admins.

Requests never load a model except /predict for tasks without current stored scores, and never wait
on Label Studio: /setup and /webhook only write Redis and enqueue jobs. Redis is connected lazily, so a
dead Redis gives 503 on the routes that need it and the server recovers when it is back.

No input gives a 5xx: bodies are read and checked by ``request_body`` (413/415/400), ids and shapes by
pydantic (422). Only /setup creates a project's state: /webhook and /predict for a project never set
up answer without writing anything. /predict scores at most ``PREDICT_MAX_TASKS`` tasks on the spot
and lets at most ``PREDICT_MAX_WAITING`` calls wait for the model (503 beyond); /health never waits.
"""
from __future__ import annotations

import logging
import re
import secrets
import uuid
from typing import Any

import redis
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from backend import dashboard, enqueue, wiring
from backend.adapter_sync import AdapterUnavailable
from backend.annotations import LabelConfigError, annotation_signature, parse_label_config, textarea_result
from backend.label_config import record_draft_warnings
from backend.metrics import all_metrics
from backend.model_cache import score_tasks, stored_scores
from backend.planning import webhook_auth_fingerprint
from backend.project import current_adapters
from backend.queue_writer import queue_score
from backend.project_config import ProjectConfig, ProjectConfigError, extra_params_dict, parse_extra_params
from backend.request_body import parse_json, read_json
from backend.settings import get_settings
from backend.store import valid_project_id

log = logging.getLogger(__name__)

TRAIN_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
HANDLED_EVENTS = TRAIN_EVENTS | {"START_TRAINING", "TASKS_CREATED"}
_PROJECT_REF = re.compile(r"([0-9]{1,19})(?:\.[0-9]*)?")
MAX_DELETED_COUNTED = 10_000
"""Annotation ids of one ANNOTATIONS_DELETED event counted toward train_every (the rest add nothing)."""
RETRY_AFTER_S = 5


# ------------------------------------------------------------------------------------------ auth
_basic = HTTPBasic(auto_error=False)


def _basic_ok(creds: HTTPBasicCredentials | None) -> bool:
    expected = get_settings().basic_auth
    return creds is not None and expected is not None and \
        secrets.compare_digest(creds.username.encode(), expected[0].encode()) and \
        secrets.compare_digest(creds.password.encode(), expected[1].encode())


def _unauthorized() -> HTTPException:
    return HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Basic"})


async def require_auth(creds: HTTPBasicCredentials | None = Depends(_basic)) -> None:
    # async (like every dependency here): a sync one would run in the thread pool that scoring fills
    if get_settings().basic_auth is not None and not _basic_ok(creds):
        raise _unauthorized()


async def require_webhook_auth(request: Request, creds: HTTPBasicCredentials | None = Depends(_basic)) -> None:
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
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int):
        project = v
    elif isinstance(v, str) and (m := _PROJECT_REF.fullmatch(v.strip())):
        project = int(m.group(1))
    else:
        raise ValueError(f"not a project id: {str(v)[:40]!r}")
    if not valid_project_id(project):
        raise ValueError(f"project id must be an integer from 1 to 2^63-1, got {str(project)[:40]}")
    return project


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
    return await read_json(request, get_settings().max_body_bytes)


def _validated(model: type[BaseModel], payload: Any):
    if not isinstance(payload, dict):
        raise HTTPException(422, f"request body must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


# ------------------------------------------------------------------------------------------ app
# No /docs, /redoc or /openapi.json: they would be the only routes open without auth.
app = FastAPI(title="Weighted Task Diversity ML backend", docs_url=None, redoc_url=None, openapi_url=None)
app.include_router(dashboard.router, dependencies=[Depends(require_auth)])


@app.exception_handler(redis.exceptions.ConnectionError)
@app.exception_handler(redis.exceptions.TimeoutError)
async def _redis_down(request: Request, exc: Exception):
    log.error("Redis unavailable on %s: %s", request.url.path, exc)
    return JSONResponse({"detail": "Redis is unavailable; retry when it is back"}, status_code=503)


@app.exception_handler(AdapterUnavailable)
async def _adapter_missing(request: Request, exc: AdapterUnavailable):
    # No draft rather than a base-model draft passed off as the adapter's (see backend.adapter_sync).
    return JSONResponse({"detail": str(exc)}, status_code=503)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


@app.get("/health", dependencies=[Depends(require_auth)])
@app.get("/", dependencies=[Depends(require_auth)])
async def health() -> dict:  # async: answers on the event loop even when every thread is scoring
    return {"status": "UP", "model_class": get_settings().model_class}


def _model_version(queue: dict | None, project: int) -> str:
    """The version of the queue last written (Label Studio keeps it as the backend's version)."""
    return queue["model_version"] if queue else f"wtd-{project}-0"


@app.post("/setup", dependencies=[Depends(require_auth)])
async def setup(request: Request) -> dict:
    body = _validated(SetupBody, await _json(request))
    raw = body.extra_params
    if isinstance(raw, str) and raw.strip():  # the same checks as a body: depth, numbers, surrogates
        raw = parse_json(raw.encode(), what="extra_params")
    try:
        params = extra_params_dict(raw)
        parse_extra_params(params)
        parse_label_config(body.label_config)
    except (ProjectConfigError, LabelConfigError) as e:
        raise HTTPException(400, str(e)) from None
    st = wiring.store()  # everything is validated: only now is anything written
    record_draft_warnings(st, body.project, body.label_config)
    # Label Studio re-runs /setup whenever the project changes - including our own queue activation -
    # so only changed settings or a project not connected yet start a connect, else each pass loops.
    if st.save_setup(body.project, body.label_config, params) or not enqueue.connected(body.project):
        enqueue.enqueue_connect(body.project)  # it secures the webhook too
    elif st.webhook_auth(body.project) != webhook_auth_fingerprint() and not enqueue.connecting(body.project):
        enqueue.enqueue_secure_webhook(body.project)  # auth turned on or changed since the webhook was set
    return {"model_version": _model_version(st.queue(body.project), body.project)}


def _known_project(st, project: int) -> tuple[ProjectConfig, str | None] | None:
    """The settings and label config of the last /setup (validated there; defaults for a project the
    jobs know without one), or None for a project never set up: its requests create no state."""
    saved = st.setup(project)
    if saved is not None:
        return parse_extra_params(saved[1]), saved[0]
    return (ProjectConfig(), None) if st.has_project(project) else None


def clip_prompt(prompt: str, limit: int) -> str:
    """At most ``limit`` characters: the start and the end of a longer prompt (its middle is cut)."""
    if len(prompt) <= limit:
        return prompt
    head = (limit + 1) // 2
    return prompt[:head] + prompt[len(prompt) - (limit - head):]


class ModelGate:
    """Lets at most ``limit`` /predict calls use the model at once (one generates, the rest wait on its
    lock); beyond that 503 at once, so waiting calls never fill the thread pool. Event-loop only."""

    def __init__(self):
        self.busy = 0

    async def run(self, limit: int, func, *args):
        if self.busy >= limit:
            raise HTTPException(503, f"the model is busy ({self.busy} /predict calls are scoring or waiting); "
                                     f"retry later", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.busy += 1
        try:
            return await run_in_threadpool(func, *args)
        finally:
            self.busy -= 1


model_gate = ModelGate()


@app.post("/predict", dependencies=[Depends(require_auth)])
async def predict(request: Request) -> dict:
    s = get_settings()
    body = _validated(PredictBody, await _json(request))
    st = wiring.store()
    known = _known_project(st, body.project)
    if known is None:  # never set up (or its state was lost): answer, but create nothing for it
        log.warning("project %s: /predict before any /setup; answering without drafts", body.project)
        unplanned = {"result": [], "score": queue_score(-1, 0), "model_version": _model_version(None, body.project)}
        return {"results": [unplanned for _ in body.tasks]}
    config, saved_label_config = known
    try:
        iface = parse_label_config(body.label_config or saved_label_config or "")
    except LabelConfigError as e:
        raise HTTPException(400, str(e)) from None
    field = config.prompt_field or iface.prompt_field
    rows = [{"id": t.id, "prompt": t.data.get(field)} for t in body.tasks]
    rows = [{**r, "prompt": clip_prompt(r["prompt"], s.predict_max_prompt_chars)} for r in rows
            if isinstance(r["prompt"], str) and r["prompt"].strip()]
    adapter, _ = current_adapters(st, body.project, config.rounds)
    drafts = stored_scores(body.project, adapter, rows, config.max_new_tokens)
    todo = [r for r in rows if r["id"] not in drafts][:s.predict_max_tasks]  # the rest: the scoring jobs
    if todo:
        drafts.update(await model_gate.run(s.predict_max_waiting, score_tasks, body.project, adapter, todo,
                                           config.max_new_tokens))
    positions = st.positions(body.project, [t.id for t in body.tasks])
    queue = st.queue(body.project)
    version, length = _model_version(queue, body.project), (queue or {}).get("predictions", 0)
    # Tasks not in the written queue (new, not yet planned) rank after every queued one.
    return {"results": [
        {"result": textarea_result(iface, drafts[t.id]["response"]) if t.id in drafts else [],
         "score": queue_score(positions.get(t.id, -1), length), "model_version": version}
        for t in body.tasks]}


def change_signatures(action: str, payload: dict) -> list[str]:
    """What tells an annotation change from a copy of the same event: the annotation's id and
    updated_at (as the training records them), or the deleted ids. An event without them counts once."""
    if action == "ANNOTATIONS_DELETED":
        deleted = payload.get("annotations")
        ids = [a.get("id") for a in deleted if isinstance(a, dict)] if isinstance(deleted, list) else []
        sigs = [f"deleted:{i}" for i in ids if i is not None][:MAX_DELETED_COUNTED]
    else:
        annotation = payload.get("annotation")
        known = isinstance(annotation, dict) and annotation.get("id") is not None
        sigs = [annotation_signature(annotation)] if known else []
    return sigs or [f"event:{uuid.uuid4().hex}"]


@app.post("/webhook", dependencies=[Depends(require_webhook_auth)])
async def webhook(request: Request) -> dict:
    payload = await _json(request)
    body = _validated(WebhookBody, payload)
    if body.action not in HANDLED_EVENTS:
        return {"status": "ignored", "action": body.action}
    if body.project is None:
        raise HTTPException(422, f"{body.action}: payload has no project id")
    st, p = wiring.store(), body.project
    known = _known_project(st, p)
    if known is None:  # unknown (or a fuzzer's) id: registering it would only give reconcile work
        return {"status": "ignored", "action": body.action, "reason": f"project {p} was never set up"}
    job = None
    if body.action == "TASKS_CREATED":
        job = enqueue.enqueue_refresh(p)
    elif body.action == "START_TRAINING":
        job = enqueue.enqueue_train(p)
    else:
        train_every = known[0].train_every
        # A round ends when its last pick is annotated (or skipped): that forces a training.
        task = _annotated_task(payload) if body.action != "ANNOTATIONS_DELETED" else None
        round_ended = task is not None and st.close_pick(p, task)
        if (train_every > 0 and st.add_changes(p, change_signatures(body.action, payload)) >= train_every) \
                or round_ended:
            job = enqueue.enqueue_train(p)
        annotation = payload.get("annotation")
        skipped = isinstance(annotation, dict) and bool(annotation.get("was_cancelled"))
        if task is not None and not skipped and _moves_window(st, p, task):
            enqueue.enqueue_refresh(p)
    return {"status": "queued" if job else "coalesced", "action": body.action}


def _moves_window(st, project: int, task: int) -> bool:
    """An annotation saved on a task inside the draft window moves the window on (O(1) Redis reads);
    counts it for live progress. Skips and deletions leave the window to the reconcile pass."""
    st.mark_annotated(project, task)
    pos = st.positions(project, [task]).get(task)
    return pos is not None and pos <= (st.queue(project) or {}).get("window_end", -1)


def _annotated_task(payload: dict) -> int | None:
    """The task id of an ANNOTATION_CREATED/UPDATED payload (``annotation.task``, else ``task.id``)."""
    for holder, field in ((payload.get("annotation"), "task"), (payload.get("task"), "id")):
        value = holder.get(field) if isinstance(holder, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@app.get("/metrics", dependencies=[Depends(require_auth)])
def metrics() -> dict:
    return all_metrics(wiring.store())
