"""The Label Studio API calls the backend, the demo and the tests make, with retries.

Built on label-studio-sdk 2.1.2: its typed methods where they exist, its authenticated HTTP client
for the endpoints it lacks (``/api/projects/{id}`` as raw JSON, ``/next``). The SDK picks the auth
scheme from the key: a legacy token goes out as ``Token <key>``, a personal access token (a JWT
refresh token) is exchanged for short-lived ``Bearer`` access tokens.

Retries are ours, not the SDK's (its own are switched off), so that every call fails the same way:
``LabelStudioError`` naming the HTTP status and path, never the key.
"""
from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any, Callable, TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

log = logging.getLogger(__name__)

T = TypeVar("T")

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
PREDICTION_CHUNK = 500
TASK_PAGE_SIZE = 500
TASK_IMPORT_CHUNK = 1000
# Statuses that mean "the server did not process the request": safe to resend even a POST.
_NOT_PROCESSED = {429, 502, 503, 504}


class LabelStudioError(RuntimeError):
    """A Label Studio call failed for good (after retries, or at once on a 4xx)."""

    def __init__(self, message: str, status: int | None = None, path: str = ""):
        super().__init__(message)
        self.status = status
        self.path = path


def _secret_value(value: Any) -> str:
    """Accept a pydantic SecretStr or a plain string."""
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value or "")


def _as_dict(obj: Any) -> Any:
    """SDK models -> plain JSON-like dicts (what the rest of the backend consumes)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(obj, list):
        return [_as_dict(o) for o in obj]
    return obj


def _body_snippet(body: Any, limit: int = 300) -> str:
    text = body if isinstance(body, str) else repr(body)
    return text[:limit]


def _retryable(exc: Exception, idempotent: bool) -> bool:
    """Connection trouble and 5xx/429 are worth another try; a 4xx is our mistake and is not.

    A POST is resent only when the server provably did not act on it (refused connection,
    429, gateway errors): resending a half-done prediction import would write the same
    model_version twice on a task, which breaks Label Studio's ordering.
    """
    if isinstance(exc, ApiError):
        status = exc.status_code or 0
        if idempotent:
            return status >= 500 or status == 429
        return status in _NOT_PROCESSED
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    return idempotent and isinstance(exc, httpx.TransportError)


class LabelStudioClient:
    def __init__(self, url: str, api_key: str, *, retries: int = 4, backoff_s: float = 0.5,
                 timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        key = _secret_value(api_key)
        if not key:
            raise LabelStudioError("no Label Studio API key configured (LABEL_STUDIO_API_KEY)")
        try:
            self._sdk = LabelStudio(base_url=self.url, api_key=key, timeout=timeout_s, max_retries=0)
        except ApiError as e:  # an expired or malformed personal access token is rejected up front
            raise LabelStudioError(f"Label Studio API key rejected: HTTP {e.status_code}",
                                   e.status_code) from None
        self._http = self._sdk._client_wrapper.httpx_client

    @classmethod
    def from_settings(cls, settings) -> "LabelStudioClient":
        return cls(settings.label_studio_url, _secret_value(settings.label_studio_api_key))

    def __repr__(self) -> str:  # the default repr would reach the key through the SDK object
        return f"LabelStudioClient({self.url!r})"

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, method: str, path: str, fn: Callable[[], T], *, idempotent: bool = True) -> T:
        """Run one API call with exponential backoff; raise LabelStudioError when it gives up."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (ApiError, httpx.TransportError) as exc:
                last = attempt == self.retries
                if last or not _retryable(exc, idempotent):
                    raise self._error(method, path, exc, attempt + 1) from None
                delay = self.backoff_s * 2 ** attempt
                log.warning("Label Studio %s %s failed (%s); retry %d/%d in %.1fs", method, path,
                            self._reason(exc), attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _reason(exc: Exception) -> str:
        if isinstance(exc, ApiError):
            return f"HTTP {exc.status_code}"
        return type(exc).__name__

    def _error(self, method: str, path: str, exc: Exception, tries: int) -> LabelStudioError:
        status = exc.status_code if isinstance(exc, ApiError) else None
        detail = f": {_body_snippet(exc.body)}" if isinstance(exc, ApiError) and exc.body else ""
        return LabelStudioError(
            f"Label Studio {method} {path} failed after {tries} tr{'y' if tries == 1 else 'ies'}: "
            f"{self._reason(exc)}{detail}", status, path)

    def _request(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
                 missing_ok: bool = False, label: str | None = None) -> Any:
        """A call the SDK has no typed method for, through the SDK's authenticated client, with our
        retries; the JSON reply, or None for a 404 when ``missing_ok``. ``label`` names it in errors."""
        def send():
            resp = self._http.request(path.lstrip("/"), method=method, params=params, json=body)
            if missing_ok and resp.status_code == 404:
                return None
            if resp.status_code >= 400:
                raise ApiError(status_code=resp.status_code, headers=dict(resp.headers), body=resp.text)
            return resp.json()
        return self._call(method, label or path, send)

    def _get(self, path: str, *, missing_ok: bool = False) -> Any:
        return self._request("GET", path, missing_ok=missing_ok)

    # -- the contract the backend codes against ------------------------------------------

    def project(self, project_id: int) -> dict:
        return self._get(f"/api/projects/{project_id}")

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project with its annotations (all pages)."""
        def fetch():
            pager = self._sdk.tasks.list(project=project_id, page_size=TASK_PAGE_SIZE, fields="all")
            return [self._task_dict(t) for t in pager]
        return self._call("GET", f"/api/tasks?project={project_id}", fetch)

    @staticmethod
    def _task_dict(task) -> dict:
        raw = _as_dict(task)
        keep = ("id", "result", "was_cancelled", "created_at", "updated_at", "completed_by")
        return {"id": raw["id"], "data": raw.get("data") or {},
                "annotations": [{k: a.get(k) for k in keep} for a in raw.get("annotations") or []]}

    def import_predictions(self, project_id: int, predictions: list[dict]) -> int:
        """Bulk-create predictions in chunks; returns how many Label Studio created.

        Label Studio 1.23 answers 201 even when it drops invalid items (a score outside [0, 1],
        a result that does not fit the label config) and only logs them, so a short count is
        raised here instead of surfacing later as a queue in the wrong order.
        """
        bad = [p for p in predictions if not 0.0 <= float(p.get("score", 0.0)) <= 1.0]
        if bad:
            raise ValueError(f"{len(bad)} prediction scores outside [0, 1] (Label Studio drops them), "
                             f"e.g. task {bad[0].get('task')} score {bad[0].get('score')}")
        created = 0
        path = f"/api/projects/{project_id}/import/predictions"
        send = lambda chunk: self._sdk.projects.import_predictions(project_id, request=chunk)  # noqa: E731
        for chunk, resp in self._post_in_chunks(path, predictions, PREDICTION_CHUNK, send):
            n = resp.get("created", 0)
            if n != len(chunk):
                raise LabelStudioError(
                    f"Label Studio POST {path} created {n} of {len(chunk)} predictions; it drops "
                    "predictions that do not validate against the label config (see its log)", 201, path)
            created += n
        return created

    def activate_queue(self, project_id: int, model_version: str) -> None:
        """Make the "Label All Tasks" queue follow the predictions of ``model_version``, lowest score first."""
        self._call("PATCH", f"/api/projects/{project_id}", lambda: self._sdk.projects.update(
            project_id, model_version=model_version, sampling=UNCERTAINTY_SAMPLING))

    def ml_backends(self, project_id: int) -> list[dict]:
        return _as_dict(self._call("GET", f"/api/ml?project={project_id}",
                                   lambda: self._sdk.ml.list(project=project_id)))

    def set_extra_params(self, ml_backend_id: int, extra_params: dict) -> None:
        """Replace the backend's extra_params; Label Studio re-runs /health and /setup with them.

        Label Studio 1.23 validates a PATCH by calling the backend with only the fields sent (a
        PATCH without url and project is a 500), so they are re-sent, with the stored basic-auth
        user; an empty password tells Label Studio to keep the stored one.
        """
        path = f"/api/ml/{ml_backend_id}"
        ml = self._call("GET", path, lambda: self._sdk.ml.get(ml_backend_id))
        auth = {}
        if ml.auth_method == "BASIC_AUTH":
            auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": ml.basic_auth_user, "basic_auth_pass": ""}
        self._call("PATCH", path, lambda: self._sdk.ml.update(
            ml_backend_id, url=ml.url, project=ml.project, extra_params=extra_params, **auth))

    def secure_webhook(self, project_id: int, backend_url: str, headers: dict[str, str]) -> bool:
        """Add auth headers to the webhook Label Studio created when the backend was connected.

        Label Studio creates ``{backend_url}/webhook`` without headers, so a backend that demands
        auth would get every event as a silent 401.
        """
        target = backend_url.rstrip("/") + "/webhook"
        hooks = self._call("GET", f"/api/webhooks?project={project_id}",
                           lambda: self._sdk.webhooks.list(project=str(project_id)))
        found = False
        for hook in hooks:
            if (hook.url or "").rstrip("/") == target:
                self._call("PATCH", f"/api/webhooks/{hook.id}",
                           lambda h=hook: self._sdk.webhooks.update(h.id, url=h.url, headers=headers))
                found = True
        return found

    def next_task(self, project_id: int) -> dict | None:
        """The task Label Studio serves this user next, or None when the queue is empty."""
        return self._get(f"/api/projects/{project_id}/next", missing_ok=True)

    # -- lean reads and version clean-up (issue #8: nothing a pass reads or keeps grows with N) --

    def _task_pages(self, project_id: int, *, fields: str = "task_only", include: str | None = None,
                    query: dict | None = None) -> list[dict]:
        """Every page of ``/api/tasks`` for a Data Manager ``query`` (filters / selectedItems), raw JSON.

        ``include`` names the task fields Label Studio serializes (``id,data``: about 40 bytes a task
        instead of about 600)."""
        params = {"project": project_id, "page_size": TASK_PAGE_SIZE, "fields": fields}
        if include:
            params["include"] = include
        if query:
            params["query"] = json.dumps(query)
        out: list[dict] = []
        for page in itertools.count(1):
            # A page past the last one is a 404 ("Invalid page.").
            body = self._request("GET", "/api/tasks", params={**params, "page": page}, missing_ok=True,
                                 label=f"/api/tasks?project={project_id}&page={page}")
            tasks = (body or {}).get("tasks") or []
            out += tasks
            if len(tasks) < TASK_PAGE_SIZE or len(out) >= (body or {}).get("total", 0):
                return out

    def task_index(self, project_id: int, after_id: int = 0) -> list[dict]:
        """``{"id", "data"}`` of the tasks with an id above ``after_id`` (imports only add higher ids)."""
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after_id}]}}
        return [{"id": t["id"], "data": t.get("data") or {}}
                for t in self._task_pages(project_id, include="id,data", query=query if after_id else None)]

    def task_ids(self, project_id: int) -> list[int]:
        """Every task id of the project (about 10 bytes a task)."""
        return [t["id"] for t in self._task_pages(project_id, include="id")]

    def annotated_tasks(self, project_id: int) -> list[dict]:
        """Tasks with at least one annotation (cancelled ones included), as ``tasks()`` shapes them."""
        query = {"filters": {"conjunction": "or", "items": [
            {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0},
            {"filter": "filter:tasks:cancelled_annotations", "operator": "greater", "type": "Number", "value": 0}]}}
        return [self._task_dict(t) for t in self._task_pages(project_id, fields="all", query=query)]

    def task_predictions(self, project_id: int, task_ids: list[int]) -> dict[int, list[dict]]:
        """task id -> its predictions ``{"id", "model_version", "score"}``, for these tasks only."""
        if not task_ids:
            return {}
        query = {"selectedItems": {"all": False, "included": list(task_ids)}}
        tasks = self._task_pages(project_id, fields="all", include="id,predictions", query=query)
        return {t["id"]: [{k: p.get(k) for k in ("id", "model_version", "score")} for p in t.get("predictions") or []]
                for t in tasks}

    def update_prediction(self, prediction_id: int, result: list[dict]) -> None:
        """Replace a prediction's result in place; Label Studio keeps its model_version and score."""
        self._call("PATCH", f"/api/predictions/{prediction_id}",
                   lambda: self._sdk.predictions.update(prediction_id, result=result))

    def model_versions(self, project_id: int) -> dict[str, int]:
        """model_version -> number of predictions Label Studio holds under it."""
        return self._get(f"/api/projects/{project_id}/model-versions/") or {}

    def delete_model_version(self, project_id: int, model_version: str) -> int:
        """Delete every prediction of ``model_version``; returns how many (0 when there were none)."""
        reply = self._request("DELETE", f"/api/projects/{project_id}/model-versions/",
                              body={"model_version": model_version})
        return int(reply.get("deleted_predictions", 0))

    # -- helpers for the demo, the tests and operators ------------------------------------

    def find_project(self, title: str) -> dict | None:
        projects = self._call("GET", "/api/projects", lambda: list(self._sdk.projects.list(title=title)))
        exact = [p for p in projects if p.title == title]
        return self.project(exact[0].id) if exact else None

    def create_project(self, title: str, label_config: str, **fields) -> dict:
        created = self._call("POST", "/api/projects", lambda: self._sdk.projects.create(
            title=title, label_config=label_config, **fields), idempotent=False)
        return self.project(created.id)

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        """Import tasks (``{"data": {...}}`` or bare data dicts) in chunks; returns the count."""
        path = f"/api/projects/{project_id}/import"
        send = lambda chunk: self._sdk.projects.import_tasks(project_id, request=chunk)  # noqa: E731
        return sum(resp.get("task_count", 0)
                   for _, resp in self._post_in_chunks(path, tasks, TASK_IMPORT_CHUNK, send))

    def _post_in_chunks(self, path: str, items: list, size: int, send):
        """POST ``items`` ``size`` at a time (a POST is not re-sent once it may have acted); yields
        each chunk with its reply as a dict."""
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            yield chunk, _as_dict(self._call("POST", path, lambda: send(chunk), idempotent=False))

    def connect_ml_backend(self, project_id: int, url: str, extra_params: dict | None = None,
                           title: str = "wtd-backend", basic_auth: tuple[str, str] | None = None) -> int:
        """Connect an ML backend; Label Studio calls its /health and /setup before answering."""
        auth = {}
        if basic_auth:
            auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0],
                    "basic_auth_pass": basic_auth[1]}
        ml = self._call("POST", "/api/ml", lambda: self._sdk.ml.create(
            project=project_id, url=url, title=title, extra_params=extra_params or {}, **auth),
            idempotent=False)
        return ml.id

    def create_annotation(self, task_id: int, result: list[dict], *, was_cancelled: bool = False) -> dict:
        created = self._call("POST", f"/api/tasks/{task_id}/annotations", lambda: self._sdk.annotations.create(
            task_id, result=result, was_cancelled=was_cancelled), idempotent=False)
        return _as_dict(created)

    def predictions(self, project_id: int) -> list[dict]:
        return _as_dict(self._call("GET", f"/api/predictions?project={project_id}",
                                   lambda: self._sdk.predictions.list(project=project_id)))

    def webhooks(self, project_id: int) -> list[dict]:
        return _as_dict(self._call("GET", f"/api/webhooks?project={project_id}",
                                   lambda: self._sdk.webhooks.list(project=str(project_id))))
