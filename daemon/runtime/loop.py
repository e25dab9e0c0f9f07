"""The worker thread of `dropforge run`: claims due jobs in arrival order within active_hours.

It sleeps on an event when idle (woken by new jobs, due retries and the opening of the
active_hours window), reports progress for the health check and renews its lease while a
long job makes progress.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from daemon.runtime.worker import JobResult, Worker
from daemon.store.rows import Job
from daemon.values import Clock, JobState

log = structlog.get_logger("dropforge.worker")

ERROR_PAUSE_S = 5.0  # after an unexpected error in the worker loop


@dataclass(frozen=True)
class ActiveHours:
    """A daily window ``HH:MM-HH:MM`` (may cross midnight) in which jobs are claimed."""

    spec: str
    start: int  # minutes after midnight
    end: int

    @classmethod
    def parse(cls, spec: str) -> ActiveHours | None:
        """The window of a validated ``active_hours`` value; None when empty (always open)."""
        if not spec:
            return None
        first, second = (part.strip() for part in spec.split("-"))
        return cls(spec, _minutes(first), _minutes(second))

    def contains(self, when: datetime) -> bool:
        """Whether ``when`` (local time) lies inside the window."""
        minute = when.hour * 60 + when.minute
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def seconds_until_open(self, when: datetime) -> float:
        """Seconds from ``when`` to the next opening (0 inside the window)."""
        if self.contains(when):
            return 0.0
        opening = when.replace(
            hour=self.start // 60, minute=self.start % 60, second=0, microsecond=0
        )
        if opening <= when:
            opening += timedelta(days=1)
        return (opening - when).total_seconds()


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    return int(hours) * 60 + int(minutes)


class WorkerLoop(threading.Thread):
    """One device's worker: claims due jobs in arrival order, sleeps on an event when idle."""

    def __init__(
        self,
        worker: Worker,
        *,
        window: ActiveHours | None,
        monotonic: Clock,
        on_result: Callable[[JobResult], None],
        park_outside: bool = True,
    ) -> None:
        super().__init__(name="dropforge-worker", daemon=True)
        self._park_outside = park_outside
        self.worker = worker
        self.journal = worker.journal
        self.window = window
        self._monotonic = monotonic
        self._on_result = on_result
        self._wake = threading.Event()
        self.busy = threading.Lock()  # held while a job runs; idle unload takes it too
        self.current: Job | None = None
        self.last_beat = self.idle_since = self._last_renew = monotonic()
        self.paused: str | None = None  # the note of a pause outside active_hours

    def wake(self) -> None:
        """Look for work now (a job was queued, a waiting job is due, a window opened)."""
        self._wake.set()

    def run(self) -> None:
        """Run jobs until the worker's stop event is set."""
        stop = self.worker.stop
        while not stop.is_set():
            self._wake.clear()
            try:
                if self._run_one():
                    continue
                timeout = self._idle_timeout()
            except Exception:  # e.g. a journal error: log, pause, carry on
                log.exception("worker.failed")
                timeout = ERROR_PAUSE_S
            self._wake.wait(timeout)

    def _run_one(self) -> bool:
        if not self._window_open():
            return False
        with self.busy:
            if self.worker.stop.is_set():
                return False
            job = self.worker.claim()
            if job is None:
                return False
            self.current = job
            self.last_beat = self._last_renew = self._monotonic()
            try:
                result = self.worker.run(job)
            finally:
                self.current = None
                self.idle_since = self._monotonic()
        self._on_result(result)
        return True

    def beat(self, job: Job) -> None:
        """Progress was made: note it for the health check and renew the lease now and then."""
        now = self._monotonic()
        self.last_beat = now
        lease = self.worker.lease_seconds()
        if now - self._last_renew >= lease / 4:
            self._last_renew = now
            self.journal.renew_lease(job.id, self.worker.owner, lease, claim=job.claim)

    def stuck_for(self) -> float:
        """Seconds the running job has gone without progress (0 when idle)."""
        return 0.0 if self.current is None else self._monotonic() - self.last_beat

    def _window_open(self) -> bool:
        """Inside active_hours; outside, defer every due job to the window's opening."""
        if self.window is None:
            return True
        now = datetime.fromtimestamp(self.journal.clock())
        if self.window.contains(now):
            if self.paused is not None:
                log.info("worker.resumed", active_hours=self.window.spec)
                self.paused = None
            return True
        until = max(1.0, self.window.seconds_until_open(now))
        opens = f"{self.window.start // 60:02d}:{self.window.start % 60:02d}"
        note = f"outside active_hours {self.window.spec}; runs from {opens}"
        if self.paused is None:
            log.info("worker.paused", active_hours=self.window.spec, resumes_in=round(until))
        self.paused = note
        if not self._park_outside:
            return False  # simply claims nothing: other hosts take the jobs meanwhile
        with self.busy:
            while (job := self.worker.claim(60.0)) is not None:
                self.journal.mark_waiting(job.id, note, retry_in=until, claim=job.claim)
        return False

    def _idle_timeout(self) -> float | None:
        """Until the next waiting job is due (the scheduler's retry tick wakes us as well)."""
        now = self.journal.clock()
        due = [j.not_before or now for j in self.journal.jobs([JobState.waiting], limit=1000)]
        return max(0.05, min(due) - now) if due else None
