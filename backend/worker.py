"""The backend's RQ worker: jobs run in the worker's own process, and a heartbeat thread keeps it honest.

RQ's ``SimpleWorker`` keeps the model loaded between jobs, but it sends no heartbeat while a job runs
and announces each job for its whole timeout (6 hours for a training): a killed worker's job looked
alive for hours and the next training waited behind it. RQ's scheduler (forked, with a 61 s lock) is
retried only every 10 minutes between jobs, so a dead worker's lock left the reconcile pass unscheduled.
Here a thread beats every ``WORKER_HEARTBEAT_S`` seconds, idle or busy, and on each beat

- pushes the running job's expiry 4 beats ahead (``backend.watchdog`` fails it when the beats stop),
- runs the scheduler in this thread when no live worker holds the scheduler lock, which lives 4 beats
  (no fork: a forked CUDA process is unsafe), then reaps dead workers' jobs and keeps a reconcile pass
  scheduled (a no-op while one is).
"""
from __future__ import annotations

import threading

from rq import SimpleWorker
from rq.scheduler import RQScheduler
from rq.scripts import acquire_or_refresh_lock, release_lock
from rq.worker import WorkerStatus

BEATS_TO_DEATH = 4


class BackendWorker(SimpleWorker):
    def __init__(self, queues, connection, heartbeat_s: int, **kwargs):
        self.heartbeat_s = heartbeat_s
        # worker_ttl - 15 is RQ's blocking dequeue timeout: wake up for maintenance once per expiry.
        super().__init__(queues, connection=connection, worker_ttl=self.expiry_s + 15, **kwargs)
        self._running = None  # (job, execution) while a job runs
        self._stop = threading.Event()
        self._scheduler = RQScheduler(self.queues, connection=connection, name=self.name)
        self._scheduling: set[str] = set()

    @property
    def expiry_s(self) -> int:
        return BEATS_TO_DEATH * self.heartbeat_s

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        """A job is announced for 4 beats at a time, not for its whole timeout (SimpleWorker's choice)."""
        return self.expiry_s

    def execute_job(self, job, queue):
        execution = self.prepare_execution(job)
        self._running = (job, execution)
        try:
            self.perform_job(job, queue, execution)
        finally:
            self._running = None
        self.set_state(WorkerStatus.IDLE)

    def clean_registries(self):
        """RQ's periodic cleanup, after ours: ours also redoes the work of the dead jobs it fails."""
        from backend.watchdog import reap_abandoned
        reap_abandoned()
        super().clean_registries()

    def work(self, burst: bool = False, **kwargs) -> bool:
        self.beat()  # due scheduled jobs are enqueued before a burst looks at the queues
        thread = threading.Thread(target=self._beat_loop, name="wtd-heartbeat", daemon=True)
        thread.start()
        try:
            return super().work(burst=burst, with_scheduler=False, **kwargs)
        finally:
            self._stop.set()
            thread.join(timeout=self.expiry_s)
            for name in self._scheduling:
                release_lock(self.connection, RQScheduler.get_locking_key(name), self.name)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.beat()

    def beat(self) -> None:
        """One heartbeat; a failure (Redis away for a moment) is logged and the next beat tries again."""
        from backend.enqueue import schedule_reconcile
        from backend.watchdog import reap_abandoned
        try:
            running = self._running
            if running is not None:
                self.maintain_heartbeats(*running)
            self._schedule()
            reap_abandoned()
            schedule_reconcile()
        except Exception:
            self.log.exception("Worker %s: heartbeat failed; retrying in %s s", self.name, self.heartbeat_s)

    def _schedule(self) -> None:
        """Take or keep the scheduler lock of each queue that no live worker holds; enqueue due jobs."""
        owned = {q.name for q in self.queues if acquire_or_refresh_lock(
            self.connection, RQScheduler.get_locking_key(q.name), self.name, self.expiry_s) != "taken"}
        if owned != self._scheduling:
            self.log.info("Worker %s: scheduling jobs of %s", self.name, ", ".join(sorted(owned)) or "no queue")
            self._scheduling = owned
        if owned:
            self._scheduler.prepare_registries(owned)
            self._scheduler.enqueue_scheduled_jobs()
