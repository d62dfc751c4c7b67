"""RQ jobs (connect, refresh, score chunk, write queue, train, reconcile) and the enqueue helpers.

Flow: /setup -> ``connect`` (secure the webhook, then plan); TASKS_CREATED, a settings change or a new
adapter -> ``refresh``. Planning reads the tasks from Label Studio, enqueues ``score_chunk`` jobs for
tasks not yet scored under the needed score keys, and a ``write_queue`` job that depends on all of them.
``write_queue`` selects over the whole project (``model.strategies.select``), writes one prediction per
unlabeled task under a new model_version (score = queue position scaled into [0, 1)) and activates it.
Label Studio never retries webhooks, so every job re-reads the truth through its API, and
``reconcile_all`` (rescheduling itself) catches lost events. Failed jobs land in RQ's failed registry.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import cached_property, lru_cache
from pathlib import Path

from rq import Queue, get_current_job
from rq.job import Dependency, Job, JobStatus

from backend.annotations import (Interface, annotation_signature, is_annotated, latest_annotation,
                                 parse_label_config, sft_pairs, textarea_result)
from backend.project_config import ProjectConfig, parse_extra_params
from backend.settings import Settings, get_settings
from backend.store import Store, connect

log = logging.getLogger(__name__)

SCORE_FIELDS = ("response", "sequence_prob", "mean_logprob", "mean_entropy", "min_margin", "n_tokens")
"""What is kept per scored task (token log-probs are not needed after scoring)."""
SELECTION_SETTINGS = {"budget", "strategy", "min_per_task", "metric", "within", "seed", "task_field",
                      "prompt_field", "rounds"}
"""Project settings a selection depends on: changing one re-selects (max_new_tokens is in the score key)."""
UNFINISHED = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


# ------------------------------------------------------------------------------------------ wiring
@lru_cache(maxsize=4)
def _conn(url: str, timeout_s: float):
    return connect(url, timeout_s)


def redis_conn():
    s = get_settings()
    return _conn(s.redis_url, s.redis_timeout_s)


def store() -> Store:
    return Store(redis_conn())


def make_client():
    """The Label Studio client (tests replace this with an in-memory fake)."""
    from backend.labelstudio import LabelStudioClient
    return LabelStudioClient.from_settings(get_settings())


def adapter_store():
    from model.adapters import AdapterStore
    return AdapterStore(get_settings().model_dir)


def valid_adapter(project: int, version: str | None) -> str | None:
    """``version`` if it is a complete stored adapter, else None (the base model)."""
    if version is None:
        return None
    if version in adapter_store().versions(str(project)):
        return version
    log.warning("project %s: adapter %r is not a complete stored version; using the base model", project, version)
    return None


def score_key(adapter: str | None, max_new_tokens: int) -> str:
    """Scores are valid for one (model, adapter, draft length); a change of any of them re-scores."""
    name = get_settings().model_name_or_path or "default"
    tag = f"{Path(name).name}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"{tag}|{adapter or 'base'}|t{max_new_tokens}"


# ------------------------------------------------------------------------------------------ models
class ModelCache:
    """Loaded models of this process keyed by adapter path (None = base), least recently used dropped."""

    def __init__(self, size: int = 2):
        self.size, self._models, self.lock = size, OrderedDict(), threading.RLock()

    def get(self, adapter_path: str | None):
        with self.lock:
            if adapter_path not in self._models:
                from model.loading import load_model
                s = get_settings()
                self.put(adapter_path, load_model(s.model_name_or_path, adapter=adapter_path, device=s.device))
            self._models.move_to_end(adapter_path)
            return self._models[adapter_path]

    def put(self, adapter_path: str | None, lm) -> None:
        with self.lock:
            self._models[adapter_path] = lm
            while len(self._models) > self.size:
                self._models.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self._models.clear()


models = ModelCache()


def score_tasks(project: int, adapter: str | None, rows: list[dict], max_new_tokens: int,
                progress=None) -> dict[int, dict]:
    """Score ``rows`` ({"id", "prompt"}) not yet scored under the key, store them, return all of them."""
    from model.config import ScoringConfig
    from model.scoring import score_rows

    s, st = get_settings(), store()
    key = score_key(adapter, max_new_tokens)
    done = st.scores(project, key, [r["id"] for r in rows])
    todo = [r for r in rows if r["id"] not in done]
    if todo:
        path = str(adapter_store().path(str(project), adapter)) if adapter else None
        cfg = ScoringConfig(max_new_tokens=max_new_tokens, batch_size=s.score_batch_size, device=s.device,
                            progress=False)
        with models.lock:  # one generation at a time per process (the server scores from threads)
            lm = models.get(path)
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start:start + cfg.batch_size]
                scored = {r["id"]: {k: r[k] for k in SCORE_FIELDS if k in r}
                          for r in score_rows(batch, lm, cfg)}
                st.put_scores(project, key, scored)
                done.update(scored)
                if progress:
                    progress(start + len(batch), len(todo))
    return done


# ------------------------------------------------------------------------------------------ project
@dataclass
class Project:
    """What a job needs to know about a project, read from Label Studio (the source of truth)."""
    id: int
    config: ProjectConfig
    iface: Interface
    tasks: list[dict]

    @property
    def prompt_field(self) -> str:
        return self.config.prompt_field or self.iface.prompt_field

    def prompt(self, task: dict) -> str | None:
        p = (task.get("data") or {}).get(self.prompt_field)
        return p if isinstance(p, str) and p.strip() else None

    @cached_property
    def usable(self) -> list[dict]:
        """Tasks with a prompt (others cannot be scored or selected)."""
        return [t for t in self.tasks if self.prompt(t) is not None]

    @cached_property
    def unlabeled(self) -> list[dict]:
        return [t for t in self.usable if not is_annotated(t)]


def our_backend(backends: list[dict], settings: Settings) -> dict | None:
    """This backend's connection among the project's ML backends (by ``PUBLIC_URL``, else the first)."""
    if settings.public_url:
        url = settings.public_url.rstrip("/")
        return next((b for b in backends if str(b.get("url", "")).rstrip("/") == url), None)
    return backends[0] if backends else None


def load_project(client, st: Store, project: int) -> Project:
    raw = client.project(project)
    backend = our_backend(client.ml_backends(project), get_settings())
    if backend is not None:
        extra = backend.get("extra_params")
    else:
        saved = st.setup(project)
        extra = saved[1] if saved else None
    return Project(project, parse_extra_params(extra), parse_label_config(raw.get("label_config", "")),
                   client.tasks(project))


def selection_adapter(st: Store, proj: Project) -> str | None:
    """The adapter whose scores drive selection: always the base model with one round."""
    return valid_adapter(proj.id, st.selection_adapter(proj.id)) if proj.config.rounds > 1 else None


def needed_scores(st: Store, proj: Project) -> dict[str | None, list[dict]]:
    """Rows to score per adapter: the selection pool under the selection adapter, drafts under the current one.

    rounds == 1 selects over the whole project with the base model, so its queue survives retraining;
    rounds > 1 selects over the unlabeled tasks with the adapter of the latest round.
    """
    cfg = proj.config
    sel_adapter = selection_adapter(st, proj)
    draft_adapter = valid_adapter(proj.id, st.adapter(proj.id))
    wanted = {sel_adapter: proj.usable if cfg.rounds == 1 else proj.unlabeled}
    wanted[draft_adapter] = wanted.get(draft_adapter, []) + proj.unlabeled
    out = {}
    for adapter, tasks in wanted.items():
        have = st.scored_ids(proj.id, score_key(adapter, cfg.max_new_tokens))
        rows = {t["id"]: {"id": t["id"], "prompt": proj.prompt(t)} for t in tasks if t["id"] not in have}
        if rows:
            out[adapter] = list(rows.values())
    return out


# ------------------------------------------------------------------------------------------ enqueue
def _queue(name: str) -> Queue:
    return Queue(name, connection=redis_conn())


def _enqueue_once(project: int, kind: str, func, queue: str, timeout: int, depends_on=None) -> Job | None:
    """Enqueue ``func(project)`` unless a ``kind`` job for the project is already waiting to start.

    The job clears the flag when it starts, so events during a run queue exactly one more.
    """
    s, st = get_settings(), store()
    job_id, ttl = st.next_job_id(project, kind), 2 * timeout
    if not st.claim_pending(project, kind, job_id, ttl):
        if not _heal_stale_flag(st, project, kind, ttl) or not st.claim_pending(project, kind, job_id, ttl):
            return None
    try:
        job = _queue(queue).enqueue_call(func, args=(project,), job_id=job_id, timeout=timeout,
                                         result_ttl=s.job_result_ttl_s, failure_ttl=s.failure_ttl_s,
                                         depends_on=depends_on)
    except BaseException:
        st.clear_pending(project, kind, job_id)
        raise
    st.set_job(project, kind, job_id)
    return job


STALE_AFTER_S = 60
"""A flagged job still missing after this long was lost (enqueue died, queue emptied by hand)."""


def _heal_stale_flag(st: Store, project: int, kind: str, ttl: int) -> bool:
    """Clear a flag whose job can no longer start (ended, cancelled or lost); True if cleared."""
    pending = st.pending(project, kind)
    if pending is None:
        return True
    job_id, left = pending
    job = Job.fetch_many([job_id], connection=st.conn)[0]
    stale = job.get_status() not in UNFINISHED if job is not None else ttl - left > STALE_AFTER_S
    return stale and st.clear_pending(project, kind, job_id)


def connected(project: int) -> bool:
    """A connect job was enqueued and has not failed (or expired: then connecting again is cheap)."""
    st = store()
    job_id = st.jobs(project).get("connect")
    job = Job.fetch_many([job_id], connection=st.conn)[0] if job_id else None
    return job is not None and job.get_status() not in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED)


def enqueue_connect(project: int) -> Job | None:
    s = get_settings()
    return _enqueue_once(project, "connect", connect_project, s.score_queue, s.score_job_timeout_s)


def enqueue_refresh(project: int) -> Job | None:
    s = get_settings()
    return _enqueue_once(project, "refresh", refresh, s.score_queue, s.score_job_timeout_s)


def enqueue_train(project: int) -> Job | None:
    """At most one queued and one running training per project: a new one waits for the running one."""
    s, st = get_settings(), store()
    prev = st.jobs(project).get("train")
    dep = None
    if prev:
        job = Job.fetch_many([prev], connection=st.conn)[0]
        if job is not None and job.get_status() in UNFINISHED:
            dep = Dependency(jobs=[job], allow_failure=True)
    return _enqueue_once(project, "train", train, s.train_queue, s.train_job_timeout_s, depends_on=dep)


def _started(project: int, kind: str) -> Store:
    st, job = store(), get_current_job()
    if job is not None:
        st.clear_pending(project, kind, job.id)
    return st


def _progress(**meta) -> None:
    job = get_current_job()
    if job is not None:
        job.meta.update(meta)
        job.save_meta()


# ------------------------------------------------------------------------------------------ jobs
def connect_project(project: int) -> dict:
    """After /setup: put an auth header on Label Studio's webhook, then score and write the queue."""
    st = _started(project, "connect")
    schedule_reconcile()  # heals a lost schedule (e.g. Redis flushed while workers kept running)
    client = make_client()
    secured = secure_webhook(client, project)
    return {"webhook_secured": secured, **plan(client, st, project)}


def secure_webhook(client, project: int) -> bool | None:
    """Label Studio creates the webhook without headers: without one, auth would silently drop events."""
    s = get_settings()
    if s.webhook_secret is not None:
        headers = {"X-Webhook-Secret": s.webhook_secret.get_secret_value()}
    elif s.basic_auth is not None:
        headers = {"Authorization": "Basic " + base64.b64encode(":".join(s.basic_auth).encode()).decode()}
    else:
        return None  # no auth: nothing to add
    urls = [s.public_url] if s.public_url else [b.get("url") for b in client.ml_backends(project)]
    if any(client.secure_webhook(project, u.rstrip("/"), headers) for u in urls if u):
        return True
    log.warning("project %s: no webhook for this backend found; training relies on the reconcile pass", project)
    return False


def refresh(project: int) -> dict:
    st = _started(project, "refresh")
    return plan(make_client(), st, project)


def plan(client, st: Store, project: int) -> dict:
    """Enqueue score chunks for what is missing, and a queue-writing job that depends on all of them."""
    s = get_settings()
    proj = load_project(client, st, project)
    st.add_project(project)
    q = _queue(s.score_queue)
    chunks = []
    for adapter, rows in needed_scores(st, proj).items():
        for start in range(0, len(rows), s.score_chunk_size):
            chunks.append(q.enqueue_call(
                score_chunk, args=(project, adapter, rows[start:start + s.score_chunk_size],
                                   proj.config.max_new_tokens),
                job_id=st.next_job_id(project, "score"), timeout=s.score_job_timeout_s,
                result_ttl=s.job_result_ttl_s, failure_ttl=s.failure_ttl_s))
    # A failed chunk must not block the queue: its tasks stay unscored (served last) until reconcile.
    writer = q.enqueue_call(write_queue, args=(project,), job_id=st.next_job_id(project, "write"),
                            depends_on=Dependency(jobs=chunks, allow_failure=True) if chunks else None,
                            timeout=s.score_job_timeout_s, result_ttl=s.job_result_ttl_s,
                            failure_ttl=s.failure_ttl_s)
    st.set_job(project, "score", json.dumps([j.id for j in chunks]))
    st.set_job(project, "write", writer.id)
    return {"tasks": len(proj.tasks), "score_jobs": len(chunks), "write_job": writer.id}


def score_chunk(project: int, adapter: str | None, rows: list[dict], max_new_tokens: int) -> dict:
    _progress(done=0, total=len(rows))
    done = score_tasks(project, adapter, rows, max_new_tokens, progress=lambda d, t: _progress(done=d, total=t))
    return {"scored": len(done)}


def write_queue(project: int) -> dict:
    """Select over the project, write every unlabeled task's draft with score = queue position, activate."""
    st, client = store(), make_client()
    with st.queue_lock(project, get_settings().score_job_timeout_s):
        proj = load_project(client, st, project)
        sel = current_selection(st, proj)
        unlabeled = {t["id"] for t in proj.unlabeled}
        draft_key = score_key(valid_adapter(project, st.adapter(project)), proj.config.max_new_tokens)
        drafts = st.scores(project, draft_key, unlabeled)
        chosen = [t for t in sel["order"] if t in unlabeled]
        order = chosen + sorted(unlabeled - set(chosen))  # outside the budget: after every selected task
        order = [t for t in order if t in drafts]
        version = f"wtd-{project}-{st.next_pass(project)}"
        preds = [{"task": t, "model_version": version, "score": queue_score(pos, len(order)),
                  "result": textarea_result(proj.iface, drafts[t]["response"])} for pos, t in enumerate(order)]
        written = client.import_predictions(project, preds) if preds else 0
        client.activate_queue(project, version)
        state = {"model_version": version, "budget": sel["budget"], "selected": len(chosen),
                 "predictions": written, "unscored": len(unlabeled) - len(order), "tasks": len(proj.tasks),
                 "annotated": len(proj.usable) - len(unlabeled), "score_key": draft_key,
                 "selection_key": sel["score_key"], "head": order[:10], "written_at": time.time()}
        st.save_queue(project, state, {t: i for i, t in enumerate(order)})
    log.info("project %s: wrote %d predictions under %s (%d selected)", project, written, version, len(chosen))
    return state


def queue_score(position: int, length: int) -> float:
    """The prediction score of a queue position: lower is served sooner. Label Studio drops
    predictions scored outside [0, 1], so positions are scaled into [0, 1); 1.0 = not queued."""
    return position / length if 0 <= position < length else 1.0


def current_selection(st: Store, proj: Project) -> dict:
    """The frozen selection if nothing it depends on changed, else a new one (stored, then frozen)."""
    cfg = proj.config
    key = score_key(selection_adapter(st, proj), cfg.max_new_tokens)
    usable = sorted(t["id"] for t in proj.usable)
    # Annotations do not enter the fingerprint: between retrainings the queue stays put.
    fp_src = [key, cfg.model_dump(include=SELECTION_SETTINGS), usable,
              sorted(st.scored_ids(proj.id, key).intersection(usable))]
    fingerprint = hashlib.sha1(json.dumps(fp_src, sort_keys=True, default=str).encode()).hexdigest()
    frozen = st.selection(proj.id)
    if frozen and frozen["fingerprint"] == fingerprint:
        return frozen
    budget = cfg.budget_for(len(proj.usable))
    if cfg.rounds > 1:
        budget = max(0, budget - (len(proj.usable) - len(proj.unlabeled)))
    pool = proj.usable if cfg.rounds == 1 else proj.unlabeled
    scores = st.scores(proj.id, key, [t["id"] for t in pool])
    rows = [{"id": t["id"], "prompt": proj.prompt(t), **scores[t["id"]]} for t in pool if t["id"] in scores]
    sel = _select(rows, proj, min(budget, len(rows)))
    frozen = {"fingerprint": fingerprint, "score_key": key, "budget": budget,
              "order": [rows[i]["id"] for i in sel.order], "allocation": _str_keys(sel.allocation),
              "task_confidence": _str_keys(sel.task_confidence or {}), "task_sizes": _str_keys(sel.task_sizes)}
    st.save_selection(proj.id, frozen)
    return frozen


def _select(rows: list[dict], proj: Project, budget: int):
    from model.strategies import Selection, select

    if not rows or budget == 0:
        return Selection(order=[], allocation={}, task_confidence={}, task_sizes={})
    field = proj.config.task_field
    data = {t["id"]: t.get("data") or {} for t in proj.tasks}
    if field and any(field in data[r["id"]] for r in rows):
        for r in rows:
            r["task"] = str(data[r["id"]].get(field, ""))
    else:
        if field:
            log.warning("project %s: no task has the field %r; inferring tasks from prompt embeddings",
                        proj.id, field)
        from model.embeddings import embed
        from model.tasks import infer_tasks
        labels = infer_tasks(embed([r["prompt"] for r in rows]), seed=proj.config.seed)
        for r, label in zip(rows, labels):
            r["task"] = f"cluster-{int(label)}"
    return select(rows, proj.config.selection(budget))


def _str_keys(d: dict) -> dict:
    return {str(k): v for k, v in d.items()}


def train(project: int) -> dict:
    """Retrain on every current annotation (re-read from Label Studio), save the adapter, re-score."""
    from model.training import train_lora

    st = _started(project, "train")
    st.reset_changes(project)
    proj = load_project(make_client(), st, project)
    pairs = sft_pairs(proj.tasks, proj.iface, proj.prompt_field)
    signatures = [annotation_signature(latest_annotation(t)) for t in proj.tasks if is_annotated(t)]
    if not pairs:
        log.info("project %s: no annotations with a response yet; nothing to train", project)
        return {"skipped": "no annotated prompts"}
    _progress(step=0, total=None, loss=None)
    base = models.get(None)
    result = train_lora(base, pairs, proj.config.training(),
                        progress=lambda step, total, loss: _progress(step=step, total=total, loss=loss))
    adapters = adapter_store()
    version = adapters.save(str(project), result.peft_model, {**result.meta(), "annotations": len(signatures)})
    # The freshly trained model scores the drafts: no reload from disk.
    path = str(adapters.path(str(project), version))
    models.put(path, replace(base, model=result.peft_model, adapter=path))
    st.set_adapter(project, version)
    if proj.config.rounds > st.rounds_done(project):
        st.set_selection_adapter(project, version)
        st.set_rounds_done(project, st.rounds_done(project) + 1)
    record = {**result.meta(), "version": version, "finished_at": time.time(), "rounds_done": st.rounds_done(project)}
    st.save_training(project, record, signatures)
    enqueue_refresh(project)
    log.info("project %s: adapter %s trained on %d examples, loss %.4f", project, version, result.n_examples,
             result.loss)
    return record


# ------------------------------------------------------------------------------------------ reconcile
def reconcile_all() -> dict:
    """Catch lost webhooks for every known project, then schedule the next pass."""
    st = store()
    st.clear_reconcile()
    out = {}
    try:
        for project in st.projects():
            try:
                out[project] = reconcile_project(project)
            except Exception as e:  # one broken project must not stop the others
                log.exception("project %s: reconcile failed", project)
                out[project] = {"error": str(e)}
    finally:
        schedule_reconcile()
    return out


def reconcile_project(project: int) -> dict:
    st = store()
    proj = load_project(make_client(), st, project)
    unscored = sum(len(rows) for rows in needed_scores(st, proj).values())
    queued = st.positions(project, [t["id"] for t in proj.unlabeled])
    unqueued = len(proj.unlabeled) - len(queued)
    trained_on = st.trained_on(project)
    new = sum(annotation_signature(latest_annotation(t)) not in trained_on for t in proj.tasks if is_annotated(t))
    out = {"unscored": unscored, "unqueued": unqueued, "new_annotations": new, "refresh": False, "train": False}
    if unscored or unqueued:
        out["refresh"] = enqueue_refresh(project) is not None
    if proj.config.train_every and new >= proj.config.train_every:
        out["train"] = enqueue_train(project) is not None
    return out


def schedule_reconcile() -> Job | None:
    """Schedule one reconcile pass (workers run with the scheduler); no-op if one is already scheduled."""
    s, st = get_settings(), store()
    if not st.claim_reconcile(ttl_s=3 * s.reconcile_interval_s):
        return None
    return _queue(s.score_queue).enqueue_in(timedelta(seconds=s.reconcile_interval_s), reconcile_all,
                                            result_ttl=s.job_result_ttl_s, failure_ttl=s.failure_ttl_s)
