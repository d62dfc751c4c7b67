"""The job that writes the queue to Label Studio: one draft per unlabeled task, scored by queue position."""
from __future__ import annotations

import logging
import time

from backend import wiring
from backend.annotations import textarea_result
from backend.project import load_project
from backend.selection import current_selection, watch_round_end
from backend.settings import get_settings
from model.rounds import queue_order

log = logging.getLogger(__name__)


def write_queue(project: int) -> dict:
    """Select over the project, write every unlabeled task's draft with score = queue position, activate."""
    st, client = wiring.store(), wiring.make_client()
    with st.queue_lock(project, get_settings().score_job_timeout_s):
        proj = load_project(client, st, project)
        proj.require_adapters()
        sel = current_selection(st, proj)
        unlabeled = {t["id"] for t in proj.unlabeled}
        drafts = st.scores(project, proj.draft_key, unlabeled)
        chosen = [t for t in sel["order"] if t in unlabeled]
        order = [t for t in queue_order([sel["order"]], unlabeled) if t in drafts]  # model.rounds' queue
        watch_round_end(st, proj, sel)
        version = f"wtd-{project}-{st.next_pass(project)}"
        preds = [{"task": t, "model_version": version, "score": queue_score(pos, len(order)),
                  "result": textarea_result(proj.iface, drafts[t]["response"])} for pos, t in enumerate(order)]
        written = client.import_predictions(project, preds) if preds else 0
        client.activate_queue(project, version)
        state = {"model_version": version, "budget": sel["budget"], "round": sel["round"], "selected": len(chosen),
                 "predictions": written, "unscored": len(unlabeled) - len(order), "tasks": len(proj.tasks),
                 "annotated": len(proj.usable) - len(unlabeled), "score_key": proj.draft_key,
                 "selection_key": sel["score_key"], "head": order[:10], "written_at": time.time()}
        st.save_queue(project, state, {t: i for i, t in enumerate(order)})
    log.info("project %s: wrote %d predictions under %s (%d selected)", project, written, version, len(chosen))
    return state


def queue_score(position: int, length: int) -> float:
    """The prediction score of a queue position: lower is served sooner. Label Studio drops
    predictions scored outside [0, 1], so positions are scaled into [0, 1); 1.0 = not queued."""
    return position / length if 0 <= position < length else 1.0
