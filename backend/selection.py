"""The project's selection: which tasks the budget buys and in what order, frozen until an input changes."""
from __future__ import annotations

import hashlib
import json
import logging

from backend.project import Project
from backend.store import Store

log = logging.getLogger(__name__)

SELECTION_SETTINGS = {"budget", "strategy", "min_per_task", "metric", "within", "seed", "task_field",
                      "prompt_field", "rounds"}
"""Project settings a selection may depend on: changing one re-selects (max_new_tokens is in the score
key). ``selection_settings`` drops those the configured strategy ignores."""


def selection_settings(cfg) -> set[str]:
    """The settings this project's selection depends on, as the strategy registry says: ``min_per_task``
    only for a strategy that uses it (``metric`` stays: the reported task confidence is under it)."""
    from model.strategies import get_strategy
    return SELECTION_SETTINGS - (set() if get_strategy(cfg.strategy).uses_min_per_task else {"min_per_task"})


def current_selection(st: Store, proj: Project) -> dict:
    """The frozen selection if nothing it depends on changed, else a new one (stored, then frozen)."""
    cfg = proj.config
    key = proj.selection_key
    usable = sorted(t["id"] for t in proj.usable)
    # Annotations do not enter the fingerprint: between retrainings the queue stays put.
    fp_src = [key, cfg.model_dump(include=selection_settings(cfg)), usable,
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
    st.save_task_labels(proj.id, {r["id"]: r["task"] for r in rows if "task" in r})  # live progress
    frozen = {"fingerprint": fingerprint, "score_key": key, "budget": budget,
              "order": [rows[i]["id"] for i in sel.order], "allocation": _str_keys(sel.allocation),
              "task_confidence": _str_keys(sel.task_confidence or {}), "task_sizes": _str_keys(sel.task_sizes)}
    st.save_selection(proj.id, frozen)
    return frozen


def _select(rows: list[dict], proj: Project, budget: int):
    """Label the rows' tasks (the task field, or clusters of prompt embeddings) and run the strategy.
    The embeddings computed to infer tasks are handed to the strategy when the registry says it needs
    them (k_center, ``within=diverse``), so they are computed once."""
    from model.embeddings import embed
    from model.strategies import Selection, needs, select

    if not rows or budget == 0:
        return Selection(order=[], allocation={}, task_confidence={}, task_sizes={})
    cfg = proj.config.selection(budget)
    field = proj.config.task_field
    data = {t["id"]: t.get("data") or {} for t in proj.tasks}
    embed_fn = embed
    if field and any(field in data[r["id"]] for r in rows):
        for r in rows:
            r["task"] = str(data[r["id"]].get(field, ""))
    else:
        if field:
            log.warning("project %s: no task has the field %r; inferring tasks from prompt embeddings",
                        proj.id, field)
        from model.tasks import infer_tasks
        vectors = embed([r["prompt"] for r in rows])
        labels = infer_tasks(vectors, seed=proj.config.seed)
        for r, label in zip(rows, labels):
            r["task"] = f"cluster-{int(label)}"
        if needs(cfg).embeddings:
            embed_fn = lambda prompts: vectors  # noqa: E731 - the same rows, in the same order
    return select(rows, cfg, embed_fn=embed_fn)


def _str_keys(d: dict) -> dict:
    return {str(k): v for k, v in d.items()}
