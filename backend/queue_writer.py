"""The job that writes the queue to Label Studio: one draft per unlabeled task, scored by queue position.

Two kinds of pass (issue #8):
- a full write, when the selection changed (first queue, new tasks scored, a new round, changed
  settings) or Label Studio's active version is not ours: every unlabeled task under a NEW
  model_version, O(N) rows, then the older versions are deleted once the new one is active;
- a window pass otherwise (a retraining, annotators advancing): only the next ``draft_ahead`` unlabeled
  tasks in queue order whose drafts are not from the current adapter are re-drafted, in place
  (``PATCH /api/predictions/{id}`` keeps model_version and score), O(draft_ahead) model calls, reads
  and writes. Tasks further down keep their last draft until the window reaches them.
Either way Label Studio holds one prediction per task per version, and about one per task in all.
"""
from __future__ import annotations

import logging
import re
import time

from rq import get_current_job

from backend import wiring
from backend.annotations import textarea_result
from backend.labelstudio import LabelStudioError
from backend.model_cache import score_tasks
from backend.project import Project, load_project
from backend.selection import current_selection, watch_round_end
from backend.settings import get_settings
from backend.store import Store
from model.rounds import queue_order

log = logging.getLogger(__name__)


def write_queue(project: int) -> dict:
    """Write the queue (a full write or a window pass, see the module doc), then drop older versions.

    O(N) Redis reads; Label Studio: O(N) rows on a full write, O(draft_ahead) on a window pass."""
    st, client = wiring.store(), wiring.make_client()
    job = get_current_job()
    latest = st.jobs(project).get("write")
    if job is not None and latest is not None and latest != job.id:
        # A later plan (more tasks of the same import, another event) enqueued its own writer, which
        # runs after its scores: writing now would re-select and write every task once more.
        log.info("project %s: %s superseded by %s; not writing", project, job.id, latest)
        return {"skipped": f"superseded by {latest}"}
    with st.queue_lock(project, get_settings().score_job_timeout_s):
        proj = load_project(client, st, project, sync=False)
        proj.require_adapters()
        sel = current_selection(st, proj)
        watch_round_end(st, proj, sel)  # the webhook ticks off the open round's picks
        prev = st.queue(project)
        positions = st.all_positions(project)
        unlabeled = [t["id"] for t in proj.unlabeled]
        if _needs_full_write(st, proj, sel, prev, positions, unlabeled):
            state = _write_all(st, client, proj, sel, unlabeled)
        else:
            state = _redraft_window(st, client, proj, prev, positions, set(unlabeled))
    state["stale_versions"] = drop_old_versions(client, project, state["model_version"])
    st.save_queue_state(project, state)
    return state


def _needs_full_write(st: Store, proj: Project, sel: dict, prev: dict | None, positions: dict[int, int],
                      unlabeled: list[int]) -> bool:
    if prev is None or prev.get("fingerprint") != sel["fingerprint"]:
        return True
    if prev.get("model_version") != proj.active_version:
        log.warning("project %s: Label Studio follows %r, not our %r; writing a new version", proj.id,
                    proj.active_version, prev.get("model_version"))
        return True
    # An unlabeled task with a draft but no place in the queue (e.g. its annotation was deleted).
    unqueued = [t for t in unlabeled if t not in positions]
    return bool(unqueued and (st.scores(proj.id, sel["score_key"], unqueued)
                              or st.scores(proj.id, proj.draft_key, unqueued)))


def draft_window(positions: dict[int, int], unlabeled: set[int], draft_ahead: int) -> list[int]:
    """The next ``draft_ahead`` unlabeled tasks in queue order (skipped tasks stay unlabeled, so in it)."""
    return sorted((t for t in positions if t in unlabeled), key=positions.get)[:draft_ahead]


def _score_drafts(proj: Project, task_ids: list[int]) -> None:
    """Drafts under the current adapter for ``task_ids`` (usually scored already by the plan's chunks)."""
    by_id = {t["id"]: t for t in proj.usable}
    rows = [{"id": t, "prompt": proj.prompt(by_id[t])} for t in task_ids if t in by_id]
    if rows:
        score_tasks(proj.id, proj.draft_adapter, rows, proj.config.max_new_tokens)


def _draft_texts(st: Store, proj: Project, task_ids: list[int], selection_key: str) -> dict[int, tuple[str, str]]:
    """task id -> (score key, draft): the current adapter's draft, else the task's last written draft,
    else the selection's scoring (the base model's with one round)."""
    out = {t: (proj.draft_key, r["response"]) for t, r in st.scores(proj.id, proj.draft_key, task_ids).items()}
    rest = [t for t in task_ids if t not in out]
    by_key: dict[str, list[int]] = {}
    for t, key in st.drafted(proj.id, rest).items():
        by_key.setdefault(key, []).append(t)
    for key, ids in by_key.items():
        out.update({t: (key, r["response"]) for t, r in st.scores(proj.id, key, ids).items()})
    rest = [t for t in rest if t not in out]
    out.update({t: (selection_key, r["response"]) for t, r in st.scores(proj.id, selection_key, rest).items()})
    return out


def _write_all(st: Store, client, proj: Project, sel: dict, unlabeled: list[int]) -> dict:
    """Every unlabeled task's draft under a new version, scored by queue position; activate it."""
    project, n = proj.id, proj.config.draft_ahead
    pending = set(unlabeled)
    chosen = [t for t in sel["order"] if t in pending]
    candidates = queue_order([sel["order"]], pending)  # model.rounds' queue: the picks, then the rest by id
    _score_drafts(proj, candidates[:n])
    texts = _draft_texts(st, proj, candidates, sel["score_key"])
    order = [t for t in candidates if t in texts]
    window = [t for t in order[:n] if texts[t][0] == proj.draft_key]
    version = f"wtd-{project}-{st.next_pass(project)}"
    preds = [{"task": t, "model_version": version, "score": queue_score(pos, len(order)),
              "result": textarea_result(proj.iface, texts[t][1])} for pos, t in enumerate(order)]
    written = client.import_predictions(project, preds) if preds else 0
    client.activate_queue(project, version)
    state = {"model_version": version, "pass": "full", "fingerprint": sel["fingerprint"], "budget": sel["budget"],
             "round": sel["round"], "selected": len(chosen), "predictions": written, "written": written, "redrafted": len(window),
             "unscored": len(unlabeled) - len(order), "tasks": len(proj.tasks),
             "annotated": len(proj.usable) - len(unlabeled), "score_key": proj.draft_key,
             "selection_key": sel["score_key"], "head": order[:10], "window_end": min(n, len(order)) - 1,
             "written_at": time.time()}
    st.save_queue(project, state, {t: i for i, t in enumerate(order)})
    st.set_drafted(project, {t: texts[t][0] for t in order}, replace=True)
    log.info("project %s: wrote %d predictions under %s (%d selected)", project, written, version, len(chosen))
    return state


def _redraft_window(st: Store, client, proj: Project, prev: dict, positions: dict[int, int],
                    unlabeled: set[int]) -> dict:
    """Re-draft, in place, the window's tasks whose drafts are not from the current adapter."""
    project, version = proj.id, prev["model_version"]
    window = draft_window(positions, unlabeled, proj.config.draft_ahead)
    drafted = st.drafted(project, window)
    stale = [t for t in window if drafted.get(t) != proj.draft_key]
    _score_drafts(proj, stale)
    texts = st.scores(project, proj.draft_key, stale)
    stale = [t for t in stale if t in texts]  # a task that failed to score keeps its last draft
    preds = client.task_predictions(project, stale)
    missing = []
    for t in stale:
        result = textarea_result(proj.iface, texts[t]["response"])
        ours = [p["id"] for p in preds.get(t, []) if p["model_version"] == version]
        for pred_id in ours:  # one, by the one-prediction-per-task-per-version rule
            client.update_prediction(pred_id, result)
        if not ours:  # lost (deleted by hand, a half-done import): the task's place, same version
            missing.append({"task": t, "model_version": version, "result": result,
                            "score": queue_score(positions[t], prev["predictions"])})
    if missing:
        client.import_predictions(project, missing)
    st.set_drafted(project, {t: proj.draft_key for t in stale})
    state = {**prev, "pass": "window", "written": len(stale), "redrafted": len(stale),
             "annotated": len(proj.usable) - len(unlabeled), "tasks": len(proj.tasks),
             "score_key": proj.draft_key, "window_end": positions[window[-1]] if window else -1,
             "head": window[:10], "written_at": time.time()}
    log.info("project %s: re-drafted %d of the next %d tasks under %s", project, len(stale), len(window), version)
    return state


def drop_old_versions(client, project: int, keep: str) -> int:
    """Delete this backend's older versions' predictions (call after ``keep`` is active); returns how
    many versions are left to delete (a failure leaves them for the next pass)."""
    ours = re.compile(rf"^wtd-{project}-\d+$")
    try:
        old = [v for v in client.model_versions(project) if v != keep and ours.match(v)]
    except LabelStudioError as e:
        log.warning("project %s: could not list model versions (%s); the next pass retries", project, e)
        return -1
    for i, version in enumerate(old):
        try:
            n = client.delete_model_version(project, version)
        except LabelStudioError as e:
            log.warning("project %s: deleting %s failed (%s); the next pass retries", project, version, e)
            return len(old) - i
        log.info("project %s: deleted %d predictions of %s", project, n, version)
    return 0


def queue_score(position: int, length: int) -> float:
    """The prediction score of a queue position: lower is served sooner. Label Studio drops
    predictions scored outside [0, 1], so positions are scaled into [0, 1); 1.0 = not queued."""
    return position / length if 0 <= position < length else 1.0
