"""Jobs of dead workers: failed within about a minute, and their work enqueued again.

RQ keeps each running job in its queue's StartedJobRegistry with an expiry that the worker's heartbeats
push forward (``backend.worker`` beats every ``WORKER_HEARTBEAT_S``, also in the middle of a job). A
worker killed with SIGKILL, by the out-of-memory killer or with its host stops beating, so its job's
entry expires 4 beats later. RQ's own ``StartedJobRegistry.cleanup`` then fails the job
(``AbandonedJobError``) and enqueues its dependents, such as the training deferred behind it; RQ runs
that cleanup only every 10 minutes and only from an idle worker, so every worker's heartbeat (and
``enqueue_train``, before it defers behind a training) runs it here, and then redoes the dead job's work.
"""
from __future__ import annotations

import logging

from rq.registry import StartedJobRegistry

from backend import wiring
from backend.enqueue import CONNECT, RECONCILE, TRAIN, enqueue_connect, enqueue_refresh, enqueue_train, \
    schedule_reconcile
from backend.settings import get_settings

log = logging.getLogger(__name__)

LOCK = "wtd:watchdog:lock"
LOCK_TTL_S = 30
"""One reaper at a time (RQ's cleanup is not atomic); a reaper that died frees the lock after this."""


def reap_abandoned(at: float | None = None) -> list[str]:
    """Fail the jobs of the backend's queues whose worker died, then redo their work; their ids.

    ``at``: the time (epoch seconds) to judge expiry by; default now (tests look ahead).
    Cost: one sorted-set range per queue, plus one job fetch per abandoned job.
    """
    conn, abandoned = wiring.redis_conn(), []
    if not conn.set(LOCK, 1, nx=True, ex=LOCK_TTL_S):
        return []
    try:
        for name in get_settings().queues:
            # The handler sees each job RQ moves to the failed registry (it returns None: RQ goes on).
            StartedJobRegistry(queue=wiring.queue(name)).cleanup(
                at, exception_handlers=[lambda job, *exc_info: abandoned.append(job)])
    finally:
        conn.delete(LOCK)
    for job in abandoned:
        log.warning("job %s (%s) failed: its worker died (stopped heartbeating: killed, out of memory or host "
                    "lost)", job.id, job.func_name)
        redo(job.func_name, job.args)
    return [job.id for job in abandoned]


def redo(func_name: str, args) -> None:
    """Enqueue what a dead job was doing: the same training, connect or reconcile; else a refresh (re-plan)."""
    if func_name == RECONCILE:
        schedule_reconcile()
        return
    project = args[0] if args else None
    if not isinstance(project, int):
        return
    if func_name == TRAIN:
        enqueue_train(project)
    elif func_name == CONNECT:
        enqueue_connect(project)
    else:  # a scoring chunk or queue writer: a refresh re-plans what is missing
        enqueue_refresh(project)
