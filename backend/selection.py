"""The project's selection: which tasks the budget buys and in what order, frozen until an input changes."""
from __future__ import annotations

import hashlib
import json
import logging

from backend.enqueue import enqueue_train
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
    """Every started round's selection (``model.rounds``), frozen until an input of the latest changes.

    Rounds before the latest are history: their picks stay whatever happens (they were annotated).
    The latest round is (re-)selected when its score key, the settings, the usable tasks, its
    scored tasks or the earlier picks change. Annotations do not enter the fingerprint: between
    rounds the queue stays put. The frozen record keeps each round (``rounds``) and, for readers of
    one round, ``order`` = every round's picks in queue order and ``score_key`` = the latest round's.
    """
    from model.rounds import round_budgets

    cfg = proj.config
    budget = cfg.budget_for(len(proj.usable))
    adapters = proj.round_adapters[:len(round_budgets(budget, cfg.rounds))]
    frozen = st.selection(proj.id)
    kept = (frozen or {}).get("rounds", [])
    history = kept[:len(adapters) - 1] if len(kept) >= len(adapters) - 1 else []
    key = proj.score_key(adapters[-1])
    usable = sorted(t["id"] for t in proj.usable)
    fp_src = [key, cfg.model_dump(include=selection_settings(cfg)), usable,
              sorted(st.scored_ids(proj.id, key).intersection(usable)), [r["order"] for r in history]]
    fingerprint = hashlib.sha1(json.dumps(fp_src, sort_keys=True, default=str).encode()).hexdigest()
    if frozen and frozen.get("fingerprint") == fingerprint and len(kept) == len(adapters):
        return frozen
    labels, vectors = task_labels(proj)
    st.save_task_labels(proj.id, labels)  # live progress per task label
    rounds = list(history)
    for r in range(len(history) + 1, len(adapters) + 1):
        rounds.append(_select_round(st, proj, labels, vectors, budget, r, adapters[r - 1], rounds))
    order = [t for rnd in rounds for t in rnd["order"]]
    allocation: dict = {}
    for rnd in rounds:
        for t, n in rnd["allocation"].items():
            allocation[t] = allocation.get(t, 0) + n
    frozen = {"fingerprint": fingerprint, "score_key": key, "budget": budget, "round": len(rounds),
              "rounds": rounds, "order": order, "allocation": allocation,
              "task_confidence": rounds[-1]["task_confidence"], "task_sizes": rounds[0]["task_sizes"]}
    st.save_selection(proj.id, frozen)
    return frozen


def _select_round(st: Store, proj: Project, labels: dict, vectors: dict | None, budget: int, r: int,
                  adapter: str | None, earlier: list[dict]) -> dict:
    """Round r over the usable tasks no earlier round picked, scored by ``adapter`` (unscored ones
    wait for a later re-plan). Embeddings computed to infer tasks (``vectors``) are handed to a
    strategy that needs them (k_center, ``within=diverse``), so they are computed once."""
    import numpy as np

    from model.embeddings import embed
    from model.rounds import prior_counts, select_round
    from model.strategies import Selection

    taken = {t for rnd in earlier for t in rnd["order"]}
    key = proj.score_key(adapter)
    pool = [t for t in proj.usable if t["id"] not in taken]
    scores = st.scores(proj.id, key, [t["id"] for t in pool])
    rows = [{"id": t["id"], "task": labels[t["id"]], "prompt": proj.prompt(t), **scores[t["id"]]}
            for t in pool if t["id"] in scores]
    cfg = proj.config
    if rows:
        embed_fn = embed if vectors is None else lambda prompts: np.stack([vectors[row["id"]] for row in rows])
        sel = select_round(rows, cfg.selection(budget), r, cfg.rounds, prior_counts(labels[t] for t in taken),
                           embed_fn=embed_fn)
    else:
        sel = Selection(order=[], allocation={}, task_confidence={}, task_sizes={})
    return {"round": r, "adapter": adapter, "score_key": key, "unscored": len(pool) - len(rows),
            "order": [rows[i]["id"] for i in sel.order],
            "allocation": _str_keys(sel.allocation), "task_confidence": _str_keys(sel.task_confidence or {}),
            "task_sizes": _str_keys(sel.task_sizes)}


def task_labels(proj: Project) -> tuple[dict[int, str], dict | None]:
    """(task id -> task label of every usable task, task id -> prompt embedding or None): the
    ``task_field``, else k-means clusters of the prompt embeddings (over every usable task, so
    every round sees the same clusters)."""
    field = proj.config.task_field
    usable = proj.usable
    if field and any(field in (t.get("data") or {}) for t in usable):
        return {t["id"]: str((t.get("data") or {}).get(field, "")) for t in usable}, None
    if not usable:
        return {}, None
    if field:
        log.warning("project %s: no task has the field %r; inferring tasks from prompt embeddings", proj.id, field)
    from model.embeddings import embed
    from model.tasks import infer_tasks
    vectors = embed([proj.prompt(t) for t in usable])
    found = infer_tasks(vectors, seed=proj.config.seed)
    return ({t["id"]: f"cluster-{int(label)}" for t, label in zip(usable, found)},
            {t["id"]: v for t, v in zip(usable, vectors)})


def _str_keys(d: dict) -> dict:
    return {str(k): v for k, v in d.items()}


def round_due(proj: Project, sel: dict | None) -> int | None:
    """The round (>= 2) whose adapter is due now: every pick of the planned rounds is done (annotated
    or skipped, ``Project.done``) and no adapter was assigned to the next round yet."""
    from model.rounds import next_round

    if not sel or not sel.get("rounds") or sel["rounds"][-1].get("unscored"):
        return None  # not planned yet, or planned before its pool was scored (a re-plan follows)
    due = next_round([r["order"] for r in sel.get("rounds", [])], proj.done,
                     proj.config.budget_for(len(proj.usable)), proj.config.rounds)
    return due if due is not None and due > len(proj.round_adapters) else None


def start_next_round(st: Store, proj: Project, version: str) -> int | None:
    """After a training on ``proj``'s annotations: if they complete the planned rounds, ``version``
    selects the next round (planned by the refresh that follows). Returns that round, or None."""
    due = round_due(proj, st.selection(proj.id))
    if due is not None:
        st.set_round_adapter(proj.id, due, version)
        log.info("project %s: round %d will be selected with adapter %s", proj.id, due, version)
    return due


def watch_round_end(st: Store, proj: Project, sel: dict) -> bool:
    """Keep the set of the latest round's open picks that the webhook ticks off (its last pick
    forces a training); an already complete round enqueues that training now. True if enqueued."""
    from model.rounds import round_budgets

    more = len(sel["rounds"]) < len(round_budgets(sel["budget"], proj.config.rounds))
    st.set_round_open(proj.id, [t for t in sel["order"] if t not in proj.done] if more else [])
    return round_due(proj, sel) is not None and enqueue_train(proj.id) is not None
