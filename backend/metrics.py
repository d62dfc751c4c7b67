"""What /metrics (and the admin views built on it) report per project: queue, scoring, training, jobs.

``quality`` is the learning curve on held-out annotations (``backend.quality``, which documents a
record in full)::

    "quality": {"status": "ok" | "too few held-out answers (3 of 5 needed)" | "no training yet" | ...,
                "versions": [{"version": "v0001", "annotations": 40, "trained_on": 36, "heldout": 4, "holdout": 0.1,
                              "status": "ok", "overall": {"n", "base_nll", "adapter_nll"},
                              "macro": {"tasks", "base_nll", "adapter_nll"} | None,
                              "per_task": {label: {"n", "base_nll", "adapter_nll"} | {"n", "status"}},
                              "finished_at": 1790000000.0}, ...]}   # oldest version first

NLL is nats per response token (lower is better); numbers appear only where ``status`` is "ok".
"""
from __future__ import annotations

import json
import time

from rq.job import Job

from backend.project import missing_adapters
from backend.quality import report as quality_report
from backend.store import Store


def all_metrics(st: Store) -> dict:
    return {"time": time.time(), "projects": {str(p): project_metrics(st, p) for p in st.projects()}}


def project_metrics(st, project: int) -> dict:
    """Queue state, scoring progress, training, adapter, job progress and held-out quality of one project."""
    known = st.jobs(project)
    chunk_ids = json.loads(known.pop("score", "[]"))
    chunks = [j for j in Job.fetch_many(chunk_ids, connection=st.conn) if j is not None]
    statuses = [j.get_status(refresh=False) for j in chunks]
    return {
        "queue": st.queue(project),
        "selection": selection_summary(st.selection(project)),
        "scoring": {"chunks": len(chunk_ids),
                    "by_status": {s.value: statuses.count(s) for s in set(statuses)},
                    "done": sum(j.meta.get("done", 0) for j in chunks),
                    "total": sum(j.meta.get("total", 0) for j in chunks)},
        "adapter": st.adapter(project),
        "round": (st.selection(project) or {}).get("round"),
        "round_adapters": {str(r): v for r, v in sorted(st.round_adapters(project).items())},
        "last_training": st.last_training(project),
        "training_pending": st.is_pending(project, "train"),
        "jobs": {kind: job_info(st, job_id) for kind, job_id in known.items()},
        "training_skips": st.training_skips(project),
        "adapters_missing": missing_adapters(project, (st.adapter(project), *st.round_adapters(project).values())),
        "quality": quality_report(st, project),
        "label_config_warnings": st.config_warnings(project),
        "training_history": st.training_history(project),
        "progress": st.progress(project),
    }


def selection_summary(frozen: dict | None) -> dict | None:
    """The current selection per task (no task ids: the queue itself is in ``queue``)."""
    if frozen is None:
        return None
    return {"budget": frozen["budget"], "selected": len(frozen["order"]),
            **{k: frozen[k] for k in ("allocation", "task_confidence", "task_sizes")}}


def job_info(st, job_id: str) -> dict:
    job = Job.fetch_many([job_id], connection=st.conn)[0]
    if job is None:
        return {"id": job_id, "status": "expired"}
    info = {"id": job_id, "status": job.get_status(refresh=False).value, "meta": job.meta,
            "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
            "ended_at": job.ended_at.isoformat() if job.ended_at else None}
    result = job.latest_result()
    if result is not None and result.exc_string:
        info["error"] = result.exc_string.strip().splitlines()[-1]
    return info
