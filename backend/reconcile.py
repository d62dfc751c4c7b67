"""The reconcile pass: catches lost webhooks (Label Studio never retries them) and reschedules itself."""
from __future__ import annotations

import logging

from backend import wiring
from backend.annotations import annotation_signature, is_annotated, latest_annotation
from backend.enqueue import enqueue_refresh, enqueue_train, schedule_reconcile
from backend.labelstudio import LabelStudioError
from backend.planning import needed_scores
from backend.project import load_project
from backend.selection import round_due
from backend.queue_writer import draft_window
from backend.store import valid_project_id

log = logging.getLogger(__name__)


def reconcile_all() -> dict:
    """Catch lost webhooks for every known project, then schedule the next pass."""
    st = wiring.store()
    st.clear_reconcile()
    out = {}
    try:
        for project in st.projects():
            try:
                out[project] = reconcile_project(project) if valid_project_id(project) else \
                    _forget(st, project, "not a Label Studio project id")
            except Exception as e:  # one broken project must not stop the others
                if isinstance(e, LabelStudioError) and e.status == 404:
                    out[project] = _forget(st, project, "Label Studio has no such project")
                    continue
                log.exception("project %s: reconcile failed", project)
                out[project] = {"error": str(e)}
    finally:
        schedule_reconcile()
    return out


def _forget(st, project: int, why: str) -> dict:
    """Logged once, then the project's state is gone (deleted in Label Studio, or an id that never existed)."""
    log.warning("project %s: %s; forgetting its state", project, why)
    st.forget_project(project)
    return {"forgotten": why}


def reconcile_project(project: int) -> dict:
    st = wiring.store()
    proj = load_project(wiring.make_client(), st, project)
    unscored = sum(len(rows) for rows in needed_scores(proj).values())
    queued = st.positions(project, [t["id"] for t in proj.unlabeled])
    unqueued = len(proj.unlabeled) - len(queued)
    trained_on = st.trained_on(project)
    new = sum(annotation_signature(latest_annotation(t)) not in trained_on for t in proj.tasks if is_annotated(t))
    window = draft_window(st.all_positions(project), {t["id"] for t in proj.unlabeled}, proj.config.draft_ahead)
    drafted = st.drafted(project, window)
    stale = sum(drafted.get(t) != proj.draft_key for t in window)
    leftover = max(0, (st.queue(project) or {}).get("stale_versions", 0))
    due = round_due(proj, st.selection(project))
    out = {"unscored": unscored, "unqueued": unqueued, "new_annotations": new, "stale_drafts": stale,
           "stale_versions": leftover, "refresh": False, "train": False}
    if due is not None:
        out["round_due"] = due
    if unscored or unqueued or stale or leftover:
        out["refresh"] = enqueue_refresh(project) is not None
    if (proj.config.train_every and new >= proj.config.train_every) or due is not None:
        out["train"] = enqueue_train(project) is not None
    return out
