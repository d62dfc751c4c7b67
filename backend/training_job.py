"""The training job: LoRA on every current annotation, a new adapter version, then a re-plan."""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from backend import adapter_sync, quality, wiring
from backend.annotations import annotation_signature, is_annotated, latest_annotation
from backend.enqueue import enqueue_refresh, job_started, report_progress
from backend.model_cache import models
from backend.project import load_project
from backend.selection import start_next_round

log = logging.getLogger(__name__)


def train(project: int) -> dict:
    """Retrain on every current annotation (re-read from Label Studio), save the adapter, re-plan."""
    from model.training import train_lora

    st = job_started(project, "train")
    st.reset_changes(project)
    proj = load_project(wiring.make_client(), st, project)
    pairs, heldout = quality.split(proj)  # held-out tasks are never trained on
    signatures = [annotation_signature(latest_annotation(t)) for t in proj.tasks if is_annotated(t)]
    if not pairs:
        log.info("project %s: no annotations with a response yet; nothing to train", project)
        return {"skipped": "no annotated prompts"}
    if proj.draft_adapter is not None and set(signatures) == st.trained_on(project):
        # A round ended by a skip adds no annotation: the adapter in force was trained on all of them.
        if start_next_round(st, proj, proj.draft_adapter) is not None:
            enqueue_refresh(project)
        return _skip(st, project, f"same {len(signatures)} annotations as adapter {proj.draft_adapter}")
    report_progress(step=0, total=None, loss=None)
    base = models.get(None)
    result = train_lora(base, pairs, proj.config.training(),
                        progress=lambda step, total, loss: report_progress(step=step, total=total, loss=loss))
    adapters = wiring.adapter_store()
    version = adapters.save(str(project), result.peft_model, {**result.meta(), "annotations": len(signatures)})
    adapter_sync.publish(project, version)  # before anyone is told to use it: other hosts fetch it
    # The freshly trained model scores the drafts: no reload from disk.
    path = str(adapters.path(str(project), version))
    models.put(path, replace(base, model=result.peft_model, adapter=path))
    quality.after_training(st, proj, version, base, models.get(path), heldout, len(pairs))
    st.set_adapter(project, version)
    # A round ends when its picks are annotated, not at every training (model.rounds).
    started = start_next_round(st, proj, version)
    record = {**result.meta(), "version": version, "finished_at": time.time(), "started_round": started}
    st.save_training(project, record, signatures)
    enqueue_refresh(project)
    adapter_sync.prune(project)
    log.info("project %s: adapter %s trained on %d examples, loss %.4f", project, version, result.n_examples,
             result.loss)
    return record


def _skip(st, project: int, reason: str) -> dict:
    """A duplicate training (repeated events, a retry after the set was trained): counted in /metrics."""
    log.info("project %s: training skipped: %s", project, reason)
    st.record_training_skip(project, reason, time.time())
    return {"skipped": reason}
