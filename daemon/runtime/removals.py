"""Inputs and outputs that disappear from under the daemon.

An input deleted or moved out of its inbox cancels its queued or running job (a running one
stops at its next step and keeps what it finished); it is queued again if it comes back. An
output of a recently done job deleted by hand is noticed within a second by ``OutputWatch``
and recorded as discarded (an XMP sidecar with rating -1 where it was): a person deleting an
image is not asking for it again. A damaged output (its size changed) requeues the job.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import structlog

from daemon.errors import JobNotFound
from daemon.runtime.control import EVERY_JOB, CancelSummary, cancel
from daemon.store.protocols import JobStore
from daemon.store.rows import folder_stamp
from daemon.survey.done import finished
from daemon.values import ACTIVE_STATES, CancelReason, JobState

log = structlog.get_logger("dropforge.watch")

OUTPUT_CHECK_S = 1.0  # how often the output folders of recently done jobs are looked at
MAX_WATCHED = 256  # of those folders


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


class OutputWatch:
    """Notices, within a second, an output deleted from the folder of a recently done job.

    The folders of the last ``MAX_WATCHED`` done jobs are looked at by stat once a second (a
    deletion changes a folder's modification time); when one changed and its outputs are no
    longer complete, the job is requeued. Watching every output folder with inotify would
    cost a kernel watch per input; older folders are left to the periodic rescan.
    """

    def __init__(self, store: JobStore, *, interval: float = OUTPUT_CHECK_S) -> None:
        self.store = store
        self._interval = interval
        self._watched: OrderedDict[str, tuple[int, str, str | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dropforge-outputs", daemon=True)

    def start(self) -> None:
        """Start the checking thread."""
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def watch(self, job_id: int, out_dir: str, job_key: str) -> None:
        """Watch the output folder of a job just found done."""
        with self._lock:
            self._watched.pop(out_dir, None)
            self._watched[out_dir] = (job_id, job_key, folder_stamp(out_dir))
            while len(self._watched) > MAX_WATCHED:
                self._watched.popitem(last=False)

    def check(self) -> int:
        """Look at every watched folder once; requeue damaged jobs; return how many."""
        with self._lock:
            watched = list(self._watched.items())
        requeued = 0
        for out_dir, (job_id, job_key, stamp) in watched:
            now = folder_stamp(out_dir)
            if now == stamp:
                continue
            try:
                job = self.store.get(job_id)
            except JobNotFound:
                job = None
            if job is None or job.state is not JobState.done:  # requeued or restored meanwhile
                with self._lock:
                    self._watched.pop(out_dir, None)
                continue
            if finished(Path(out_dir), job_key):  # a rating, or a deletion now recorded
                self.watch(job_id, out_dir, job_key)
                continue
            with self._lock:
                self._watched.pop(out_dir, None)
            if self.store.requeue(job_id):
                requeued += 1
                log.info("job.requeued", input=job.input, reason="output damaged")
        return requeued

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:
                log.exception("watch.outputs_failed")
