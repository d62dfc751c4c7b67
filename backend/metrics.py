"""What /metrics (and the admin views built on it) report per project: queue, scoring, training, jobs."""
from __future__ import annotations

import json
import time

from rq.job import Job

from backend.store import Store


def all_metrics(st: Store) -> dict:
    return {"time": time.time(), "projects": {str(p): project_metrics(st, p) for p in st.projects()}}


def project_metrics(st, project: int) -> dict:
    """Queue state, scoring progress, training, adapter and job progress of one project."""
    known = st.jobs(project)
    chunk_ids = json.loads(known.pop("score", "[]"))
    chunks = [j for j in Job.fetch_many(chunk_ids, connection=st.conn) if j is not None]
    statuses = [j.get_status(refresh=False) for j in chunks]
    return {
        "queue": st.queue(project),
        "scoring": {"chunks": len(chunk_ids),
                    "by_status": {s.value: statuses.count(s) for s in set(statuses)},
                    "done": sum(j.meta.get("done", 0) for j in chunks),
                    "total": sum(j.meta.get("total", 0) for j in chunks)},
        "adapter": st.adapter(project),
        "selection_adapter": st.selection_adapter(project),
        "rounds_done": st.rounds_done(project),
        "last_training": st.last_training(project),
        "training_pending": st.is_pending(project, "train"),
        "jobs": {kind: job_info(st, job_id) for kind, job_id in known.items()},
        "progress": st.progress(project),
    }


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
