"""Held-out quality, the learning curve: is the adapter getting better as annotations come in?

A share of the tasks (``holdout`` in the project settings) is never trained on. Which ones is fixed by a
hash of the task id, so a task never moves between the two sides, whatever the order annotations arrive
in; held-out tasks are queued and annotated like any other. After each training the base model and the
new adapter read the held-out answers teacher-forced (``model.scoring.response_logprobs``, batched) and
their mean NLL per response token (nats, ``model.evaluation.metrics.mean_nll``: lower is better) is stored
per adapter version. The base model's NLL of an answer is cached in Redis, so each training costs the
base model only the answers that are new since the last one: O(new held-out) base forward passes plus
O(held-out) adapter forward passes.

The record of one version (``Store.save_quality``), as /metrics, ``python -m backend settings`` and the
dashboard show it::

    {"version": "v0003", "finished_at": 1790000000.0,
     "annotations": 40,          # tasks with a usable answer when it trained (trained on + held out)
     "trained_on": 36, "heldout": 4,
     "holdout": 0.1,             # the share in force: versions measured at different shares read different tasks
     "status": "ok" | "too few held-out answers (4 of 5 needed)" | "nothing is held out (holdout 0)",
     "overall": {"n": 4, "base_nll": 2.31, "adapter_nll": 1.87},   # mean over held-out answers;
                                                                   # only n when status is not "ok"
     "macro": {"tasks": 2, "base_nll": 2.2, "adapter_nll": 1.9} | None,  # unweighted mean over the
                                                                   # task labels that have enough answers
     "per_task": {"summarize": {"n": 3, "base_nll": 2.1, "adapter_nll": 1.8},
                  "translate": {"n": 1, "status": "too few held-out answers (1 of 2 needed)"}}}
                  # below MIN_HELDOUT overall, every label: {"n": 1, "status": "too few held-out answers overall"}

``report`` wraps the records as ``{"status": <the latest record's status, or "no training yet">,
"versions": [records, oldest first]}``. Numbers are left out, never shown as noise: all of them below
``MIN_HELDOUT`` held-out answers overall, a label's below ``MIN_PER_TASK`` answers of that label.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

from backend.annotations import sft_examples
from backend.project import Project
from backend.store import Store

log = logging.getLogger(__name__)

MIN_HELDOUT = 5
"""Fewer held-out answers than this and the overall figures are withheld (too noisy to compare)."""
MIN_PER_TASK = 2
"""Fewer held-out answers of one task label than this and that label's figures are withheld."""
NO_LABEL = "(no task label)"
"""The label of tasks without the ``task_field`` (inferred clusters are not kept per task)."""
_BUCKETS = 10_000


def is_heldout(task_id, share: float) -> bool:
    """Whether the task is held out at ``share``: a hash of its id, so it never changes side, and a
    task held out at some share stays held out at any larger one."""
    bucket = int(hashlib.sha1(str(task_id).encode()).hexdigest()[:8], 16) % _BUCKETS
    return bucket / _BUCKETS < share


def task_label(task: dict, field: str | None) -> str:
    """The task's label as the quality figures and the export name it (the ``task_field`` value)."""
    value = (task.get("data") or {}).get(field) if field else None
    return NO_LABEL if value is None else str(value)


@dataclass(frozen=True)
class HeldOut:
    task_id: int
    label: str
    prompt: str
    response: str

    def cache_key(self, model: str | None) -> str:
        """What the base model's NLL depends on: the model, the prompt and the answer."""
        src = "\0".join((model or "default", self.prompt, self.response))
        return hashlib.sha1(src.encode()).hexdigest()


def split(proj: Project) -> tuple[list[tuple[str, str]], list[HeldOut]]:
    """(training pairs, held-out answers) of the project's current annotations."""
    train, heldout = [], []
    for task, _, prompt, response in sft_examples(proj.tasks, proj.iface, proj.prompt_field):
        if is_heldout(task["id"], proj.config.holdout):
            heldout.append(HeldOut(task["id"], task_label(task, proj.config.task_field), prompt, response))
        else:
            train.append((prompt, response))
    return train, heldout


def nlls(lm, examples: list[HeldOut], batch_size: int) -> list[float]:
    """Mean NLL per response token (EOS included) of each example, teacher-forced, batched."""
    from model.evaluation.metrics import mean_nll
    from model.scoring import response_logprobs

    if not examples:
        return []
    logprobs = response_logprobs(lm, [e.prompt for e in examples], [e.response for e in examples], batch_size)
    return [mean_nll(lp) for lp in logprobs]


def measure(st: Store, proj: Project, version: str, base_lm, adapter_lm, heldout: list[HeldOut],
            trained_on: int, batch_size: int) -> dict:
    """Score the held-out answers with the base (cached) and the new adapter; store and return the record."""
    keys = [e.cache_key(proj.model) for e in heldout]
    cached = st.base_nll(proj.id, keys)
    todo = [(k, e) for k, e in zip(keys, heldout) if k not in cached]
    cached.update(zip((k for k, _ in todo), nlls(base_lm, [e for _, e in todo], batch_size)))
    st.set_base_nll(proj.id, {k: cached[k] for k in keys})
    adapter = nlls(adapter_lm, heldout, batch_size)
    record = {**_head(version, heldout, trained_on, proj.config.holdout),
              **summarize([e.label for e in heldout], [cached[k] for k in keys], adapter, proj.config.holdout)}
    st.save_quality(proj.id, version, record)
    log.info("project %s: adapter %s held-out quality: %s (base %d new of %d)", proj.id, version,
             record["status"] if record["status"] != "ok" else record["overall"], len(todo), len(heldout))
    return record


def after_training(st: Store, proj: Project, version: str, base_lm, adapter_lm, heldout: list[HeldOut],
                   trained_on: int) -> None:
    """``measure`` for the training job: one model user at a time in this process, and a failure is
    logged and recorded, never raised, since the new adapter itself is fine."""
    from backend.model_cache import models
    from backend.settings import get_settings

    try:
        with models.lock:
            measure(st, proj, version, base_lm, adapter_lm, heldout, trained_on, get_settings().score_batch_size)
    except Exception as e:
        log.exception("project %s: held-out evaluation of %s failed", proj.id, version)
        st.save_quality(proj.id, version, failed(version, heldout, trained_on, proj.config.holdout, e))


def _head(version: str, heldout: list[HeldOut], trained_on: int, share: float) -> dict:
    """The fields every record of a version has, measured or not."""
    return {"version": version, "finished_at": time.time(), "annotations": trained_on + len(heldout),
            "trained_on": trained_on, "heldout": len(heldout), "holdout": share}


def failed(version: str, heldout: list[HeldOut], trained_on: int, share: float, error: Exception) -> dict:
    """The record of a version whose evaluation failed (the adapter itself is fine)."""
    return {**_head(version, heldout, trained_on, share),
            "status": f"evaluation failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
            "overall": {"n": len(heldout)}, "macro": None, "per_task": {}}


def _too_few(n: int, needed: int) -> str:
    return f"too few held-out answers ({n} of {needed} needed)"


def summarize(labels: list[str], base: list[float], adapter: list[float], share: float) -> dict:
    """status, overall, macro and per_task of one version (see the module docstring)."""
    from model.evaluation.metrics import macro_average, per_task_means

    n = len(labels)
    counts = {label: labels.count(label) for label in set(labels)}
    base_by, adapter_by = per_task_means(labels, base), per_task_means(labels, adapter)
    per_task = {}
    for label, count in sorted(counts.items()):
        if n < MIN_HELDOUT:
            per_task[label] = {"n": count, "status": "too few held-out answers overall"}
        elif count < MIN_PER_TASK:
            per_task[label] = {"n": count, "status": _too_few(count, MIN_PER_TASK)}
        else:
            per_task[label] = {"n": count, "base_nll": base_by[label], "adapter_nll": adapter_by[label]}
    if n < MIN_HELDOUT:
        status = "nothing is held out (holdout 0)" if share == 0 else _too_few(n, MIN_HELDOUT)
        return {"status": status, "overall": {"n": n}, "macro": None, "per_task": per_task}
    enough = [label for label in per_task if "base_nll" in per_task[label]]
    macro = {"tasks": len(enough),
             "base_nll": macro_average({t: per_task[t]["base_nll"] for t in enough}),
             "adapter_nll": macro_average({t: per_task[t]["adapter_nll"] for t in enough})} if enough else None
    overall = {"n": n, "base_nll": sum(base) / n, "adapter_nll": sum(adapter) / n}
    return {"status": "ok", "overall": overall, "macro": macro, "per_task": per_task}


def report(st: Store, project: int) -> dict:
    """The learning curve of a project: every version's record and the latest status."""
    versions = st.quality(project)
    return {"status": versions[-1]["status"] if versions else "no training yet", "versions": versions}


def describe(record: dict) -> str:
    """One line for people: ``v0003 after 40 annotations (4 held out): held-out NLL base 2.310 -> adapter 1.870``."""
    head = f"{record['version']} after {record['annotations']} annotations ({record['heldout']} held out)"
    if record["status"] != "ok":
        return f"{head}: {record['status']}"
    o = record["overall"]
    return f"{head}: held-out NLL base {o['base_nll']:.3f} -> adapter {o['adapter_nll']:.3f}"
