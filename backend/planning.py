"""Jobs that plan a pass: connect (after /setup), refresh (new tasks, settings, adapter), score a chunk.

Planning reads the project from Label Studio, enqueues ``score_chunk`` jobs for tasks not yet scored
under the needed score keys, and a ``write_queue`` job that depends on all of them.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
from functools import lru_cache

from rq.job import Dependency

from backend import wiring
from backend.enqueue import enqueue_job, job_started, report_progress, schedule_reconcile
from backend.model_cache import score_tasks
from backend.project import Project, load_project
from backend.queue_writer import draft_window
from backend.settings import get_settings
from backend.store import Store

log = logging.getLogger(__name__)

SCORE_CHUNK = "backend.planning.score_chunk"
WRITE_QUEUE = "backend.queue_writer.write_queue"


def connect_project(project: int) -> dict:
    """After /setup: put an auth header on Label Studio's webhook, then score and write the queue."""
    st = job_started(project, "connect")
    schedule_reconcile()  # heals a lost schedule (e.g. Redis flushed while workers kept running)
    client = wiring.make_client()
    secured = secure_webhook(client, project)
    return {"webhook_secured": secured, **plan(client, st, project)}


def webhook_headers() -> dict[str, str] | None:
    """The header Label Studio's webhook must carry to pass this backend's auth; None without auth."""
    s = get_settings()
    if s.webhook_secret is not None:
        return {"X-Webhook-Secret": s.webhook_secret.get_secret_value()}
    if s.basic_auth is not None:
        return {"Authorization": "Basic " + base64.b64encode(":".join(s.basic_auth).encode()).decode()}
    return None


def secure_webhook(client, project: int) -> bool | None:
    """Label Studio creates the webhook without headers: without one, auth would silently drop events."""
    s, headers = get_settings(), webhook_headers()
    if headers is None:
        secured = None  # no auth: nothing to add
    else:
        urls = [s.public_url] if s.public_url else [b.get("url") for b in client.ml_backends(project)]
        secured = any(client.secure_webhook(project, u.rstrip("/"), headers) for u in urls if u)
    if secured is False:
        log.warning("project %s: no webhook for this backend found; training relies on the reconcile pass", project)
    else:  # /setup compares it with the credentials in force and re-secures when they changed
        wiring.store().set_webhook_auth(project, webhook_auth_fingerprint())
    return secured


def refresh(project: int) -> dict:
    st = job_started(project, "refresh")
    return plan(wiring.make_client(), st, project)


def needed_scores(proj: Project) -> dict[str | None, list[dict]]:
    """Rows to score per adapter: each started round's pool under the adapter selecting it (round 1:
    every usable task under the base model; round r: those no earlier round picked), and the draft
    window (the next ``draft_ahead`` unlabeled tasks of the written queue) under the current adapter.

    Scores are kept, so only a new round's adapter or new tasks cost a pass over the pool; drafts cost
    O(draft_ahead) per pass, not O(N): tasks further down keep their last draft.
    """
    st = wiring.store()
    earlier = [r["order"] for r in (st.selection(proj.id) or {}).get("rounds", [])]
    wanted: dict[str | None, dict[int, dict]] = {}
    for r, adapter in enumerate(proj.round_adapters):
        taken = {t for picks in earlier[:r] for t in picks}
        wanted.setdefault(adapter, {}).update({t["id"]: t for t in proj.usable if t["id"] not in taken})
    unlabeled = {t["id"]: t for t in proj.unlabeled}
    window = draft_window(st.all_positions(proj.id), set(unlabeled), proj.config.draft_ahead)
    wanted.setdefault(proj.draft_adapter, {}).update({t: unlabeled[t] for t in window})
    out = {}
    for adapter, tasks in wanted.items():
        done = st.scored_ids(proj.id, proj.score_key(adapter))
        rows = [{"id": t["id"], "prompt": proj.prompt(t)} for tid, t in tasks.items() if tid not in done]
        if rows:
            out[adapter] = rows
    return out


def plan(client, st: Store, project: int) -> dict:
    """Enqueue score chunks for what is missing, and a queue-writing job that depends on all of them."""
    s = get_settings()
    proj = load_project(client, st, project)
    proj.require_adapters()
    st.add_project(project)
    chunks = []
    for adapter, rows in needed_scores(proj).items():
        for start in range(0, len(rows), s.score_chunk_size):
            chunks.append(enqueue_job(
                SCORE_CHUNK, (project, adapter, rows[start:start + s.score_chunk_size], proj.config.max_new_tokens),
                s.score_queue, s.score_job_timeout_s, st.next_job_id(project, "score")))
    # A failed chunk must not block the queue: its tasks stay unscored (served last) until reconcile.
    # Recorded before it is enqueued: an earlier writer that sees a newer one leaves the write to it.
    write_id = st.next_job_id(project, "write")
    st.set_job(project, "write", write_id)
    writer = enqueue_job(WRITE_QUEUE, (project,), s.score_queue, s.score_job_timeout_s, write_id,
                         depends_on=Dependency(jobs=chunks, allow_failure=True) if chunks else None)
    st.set_job(project, "score", json.dumps([j.id for j in chunks]))
    return {"tasks": len(proj.tasks), "score_jobs": len(chunks), "write_job": writer.id}


def score_chunk(project: int, adapter: str | None, rows: list[dict], max_new_tokens: int) -> dict:
    report_progress(done=0, total=len(rows))
    done = score_tasks(project, adapter, rows, max_new_tokens,
                       progress=lambda d, t: report_progress(done=d, total=t))
    return {"scored": len(done)}


def secure_project_webhook(project: int) -> dict:
    """After a /setup that found the webhook's credentials out of date (auth turned on or changed)."""
    job_started(project, "webhook")
    return {"webhook_secured": secure_webhook(wiring.make_client(), project)}


def webhook_auth_fingerprint() -> str:
    """Names the credentials in force without revealing them (a slow salted hash, computed once each)."""
    return _fingerprint(json.dumps(webhook_headers(), sort_keys=True))


@lru_cache(maxsize=4)
def _fingerprint(headers: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", headers.encode(), b"wtd-webhook-auth", 200_000).hex()[:32]
