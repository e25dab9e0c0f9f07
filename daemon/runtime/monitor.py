"""Hearing other processes: a thread that notices every commit to the journal within a tenth of
a second (``JobStore.revision`` on a handle of its own) and tells its listeners, so that a
`dropforge cancel`, `retry` or `priority` from another process, or a click in the web UI,
takes effect at once rather than at the next rescan.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import structlog

from daemon.config import Settings
from daemon.errors import JobNotFound
from daemon.runtime.worker import Worker
from daemon.store.open import open_journal
from daemon.store.protocols import JobStore
from daemon.values import Clock, JobState

log = structlog.get_logger("dropforge.monitor")

MONITOR_INTERVAL_S = 0.1

Listener = Callable[[JobStore], None]


class JournalMonitor(threading.Thread):
    """Calls each listener with a read handle on the journal after every change to it."""

    def __init__(
        self,
        settings: Settings,
        listeners: Sequence[Listener],
        *,
        interval: float = MONITOR_INTERVAL_S,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(name="dropforge-monitor", daemon=True)
        self.settings = settings
        self._listeners = list(listeners)
        self._interval = interval
        self._clock = clock
        self._halt = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        """Poll the journal's revision until stopped; call the listeners when it moved."""
        with open_journal(self.settings, clock=self._clock) as journal:
            last = journal.revision()
            self.ready.set()
            while not self._halt.wait(self._interval):
                try:
                    revision = journal.revision()
                except Exception:  # e.g. the disk is gone for a moment: look again
                    log.exception("monitor.failed")
                    continue
                if revision == last:
                    continue
                last = revision
                for listener in self._listeners:
                    try:
                        listener(journal)
                    except Exception:
                        log.exception("monitor.listener_failed")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop polling and wait at most ``timeout`` seconds for the thread to end."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout)


def cancel_listener(worker: Worker) -> Listener:
    """A listener that stops the worker's running job when a cancel of it was recorded."""

    def check(journal: JobStore) -> None:
        job_id = worker.running_id
        if job_id is None:
            return
        try:
            row = journal.get(job_id)
        except JobNotFound:
            return
        if row.cancel is not None and row.state is JobState.running:
            worker.request_cancel(row.id, row.cancel)

    return check
