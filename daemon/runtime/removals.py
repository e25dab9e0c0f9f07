"""Inputs and outputs that disappear from under the daemon.

An input deleted or moved out of its inbox cancels its queued or running job (a running one
stops at its next step and keeps what it finished); it is queued again if it comes back. An
output of a done job deleted by hand is noticed at once by ``OutputWatch`` and the job is
requeued to make it again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from daemon.config import Settings
from daemon.outputs.manifest import job_is_done
from daemon.runtime.control import EVERY_JOB, CancelSummary, cancel
from daemon.store.protocols import JobStore
from daemon.values import ACTIVE_STATES, CancelReason, JobState

log = structlog.get_logger("dropforge.watch")

OUTPUT_SETTLE_S = 0.3  # deletions are gathered this long (rm -r sends one event per file)


def cancel_removed(store: JobStore, inbox: str, rel: str, *, folder: bool = False) -> CancelSummary:
    """Cancel the active job of input ``rel`` (with ``folder``: of every input below the
    folder ``rel``), because it left the inbox."""
    if folder:
        prefix = rel.rstrip("/") + "/"
        jobs = [
            j
            for j in store.jobs(list(ACTIVE_STATES), limit=EVERY_JOB)
            if j.inbox == inbox and j.input.startswith(prefix)
        ]
    else:
        job = store.get_job(inbox, rel)
        jobs = [job] if job is not None and job.state in ACTIVE_STATES else []
    if not jobs:
        return CancelSummary()
    summary = cancel(store, jobs, CancelReason.removed)
    for job in (*summary.canceled, *summary.stopping):
        log.info("job.cancel_requested", input=job.input, inbox=inbox, reason="input removed")
    return summary


def requeue_damaged(store: JobStore, paths: set[str]) -> int:
    """Requeue the done jobs whose output folder holds (or is) one of the deleted ``paths``
    and whose outputs are no longer complete; return how many."""
    folders = {p for path in paths for p in (path, os.path.dirname(path))}
    requeued = 0
    for job in store.jobs_by_out_dir(folders):
        if job.state is not JobState.done or job_is_done(Path(job.out_dir), job.job_key):
            continue
        if store.requeue(job.id):
            requeued += 1
            log.info("job.requeued", input=job.input, reason="output deleted")
    return requeued


class _Deletions(FileSystemEventHandler):
    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in ("deleted", "moved"):
            self._sink(os.fsdecode(event.src_path))


class OutputWatch:
    """Watches every inbox's output root for deleted outputs of done jobs."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        native: Callable[[], BaseObserver],
        on_requeued: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._native = native
        self._on_requeued = on_requeued
        self._observers: list[BaseObserver] = []
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dropforge-outputs", daemon=True)

    def start(self) -> None:
        """Start an observer per output root (made if missing) and the checking thread."""
        for root in dict.fromkeys(i.output for i in self.settings.inboxes):
            try:
                root.mkdir(parents=True, exist_ok=True)
                observer = self._native()
                observer.schedule(_Deletions(self._note), str(root), recursive=True)
                observer.start()
            except OSError as exc:  # e.g. inotify limits: the periodic rescan still notices
                log.warning("watch.outputs_unwatched", output=str(root), error=str(exc))
                continue
            self._observers.append(observer)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the observers and the thread."""
        self._stop.set()
        self._wake.set()
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _note(self, path: str) -> None:
        with self._lock:
            self._pending.add(path)
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.wait(OUTPUT_SETTLE_S):
                return
            self._wake.clear()
            with self._lock:
                paths, self._pending = self._pending, set()
            try:
                if requeue_damaged(self.store, paths):
                    self._on_requeued()
            except Exception:
                log.exception("watch.outputs_failed")
