"""Enqueueing jobs with coalescing, the reconcile schedule, and the two calls a running job makes.

Jobs are named by dotted path (RQ imports them in the worker), so this layer never imports the job
bodies: they import it.

Coalescing: at most one job of a kind per project waits to start. The job clears its flag when it
starts (``job_started``), so events during a run queue exactly one more.
"""
from __future__ import annotations

from datetime import timedelta

from rq import get_current_job
from rq.job import Dependency, Job, JobStatus

from backend import wiring
from backend.settings import get_settings
from backend.store import Store

CONNECT = "backend.planning.connect_project"
REFRESH = "backend.planning.refresh"
TRAIN = "backend.training_job.train"
RECONCILE = "backend.reconcile.reconcile_all"
SECURE_WEBHOOK = "backend.planning.secure_project_webhook"

UNFINISHED = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
STALE_AFTER_S = 60
"""A flagged job still missing after this long was lost (enqueue died, queue emptied by hand)."""


def enqueue_job(func: str, args: tuple, queue: str, timeout: int, job_id: str, depends_on=None) -> Job:
    """One job with the backend's result and failure retention."""
    s = get_settings()
    return wiring.queue(queue).enqueue_call(func, args=args, job_id=job_id, timeout=timeout,
                                            result_ttl=s.job_result_ttl_s, failure_ttl=s.failure_ttl_s,
                                            depends_on=depends_on)


def _enqueue_once(project: int, kind: str, func: str, queue: str, timeout: int, depends_on=None) -> Job | None:
    """Enqueue ``func(project)`` unless a ``kind`` job for the project is already waiting to start."""
    st = wiring.store()
    job_id, ttl = st.next_job_id(project, kind), 2 * timeout
    if not st.claim_pending(project, kind, job_id, ttl):
        if not _heal_stale_flag(st, project, kind, ttl) or not st.claim_pending(project, kind, job_id, ttl):
            return None
    try:
        job = enqueue_job(func, (project,), queue, timeout, job_id, depends_on)
    except BaseException:
        st.clear_pending(project, kind, job_id)
        raise
    st.set_job(project, kind, job_id)
    return job


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
    st = wiring.store()
    job_id = st.jobs(project).get("connect")
    job = Job.fetch_many([job_id], connection=st.conn)[0] if job_id else None
    return job is not None and job.get_status() not in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED)


def enqueue_connect(project: int) -> Job | None:
    s = get_settings()
    return _enqueue_once(project, "connect", CONNECT, s.score_queue, s.score_job_timeout_s)


def enqueue_refresh(project: int) -> Job | None:
    s = get_settings()
    return _enqueue_once(project, "refresh", REFRESH, s.score_queue, s.score_job_timeout_s)


def enqueue_train(project: int) -> Job | None:
    """At most one queued and one running training per project: a new one waits for the running one."""
    from backend.watchdog import reap_abandoned
    reap_abandoned()  # a running training whose worker died is failed first: nothing waits behind it
    s, st = get_settings(), wiring.store()
    prev = st.jobs(project).get("train")
    dep = None
    if prev:
        job = Job.fetch_many([prev], connection=st.conn)[0]
        if job is not None and job.get_status() in UNFINISHED:
            dep = Dependency(jobs=[job], allow_failure=True)
    return _enqueue_once(project, "train", TRAIN, s.train_queue, s.train_job_timeout_s, depends_on=dep)


def schedule_reconcile() -> Job | None:
    """Schedule one reconcile pass (workers run with the scheduler); no-op if one is already scheduled."""
    s, st = get_settings(), wiring.store()
    if not st.claim_reconcile(ttl_s=3 * s.reconcile_interval_s):
        return None
    return wiring.queue(s.score_queue).enqueue_in(timedelta(seconds=s.reconcile_interval_s), RECONCILE,
                                                  result_ttl=s.job_result_ttl_s, failure_ttl=s.failure_ttl_s)


def connecting(project: int) -> bool:
    """The latest connect job has yet to finish (it secures the webhook itself)."""
    st = wiring.store()
    job_id = st.jobs(project).get("connect")
    job = Job.fetch_many([job_id], connection=st.conn)[0] if job_id else None
    return job is not None and job.get_status() in UNFINISHED


def enqueue_secure_webhook(project: int) -> Job | None:
    """Put the current credentials on the project's Label Studio webhook (cheap: no scoring, no plan)."""
    s = get_settings()
    return _enqueue_once(project, "webhook", SECURE_WEBHOOK, s.score_queue, s.score_job_timeout_s)


# ------------------------------------------------------------------------------ inside a running job
def job_started(project: int, kind: str) -> Store:
    """Called first by a coalesced job: later events may queue one more of its kind."""
    st, job = wiring.store(), get_current_job()
    if job is not None:
        st.clear_pending(project, kind, job.id)
    return st


def report_progress(**meta) -> None:
    """Progress of the running job, shown by /metrics."""
    job = get_current_job()
    if job is not None:
        job.meta.update(meta)
        job.save_meta()
