"""How a worker's claim of a job ends when it does not run to the end: the claim was lost to
another worker (nothing more is written), the job waits, or its input vanished. Every write
names the claim (``JobStore`` fencing): a refused one means another worker holds the job."""

from __future__ import annotations

import threading

import structlog

from daemon.config import Settings
from daemon.errors import LeaseLost
from daemon.intake.paths import root_present
from daemon.runtime.outcomes import JobResult, Outcome
from daemon.store.protocols import Journal
from daemon.store.rows import Job

log = structlog.get_logger("dropforge.worker")


class ClaimEnds:
    """The fenced ends of a worker's claims (see the module)."""

    def __init__(self, settings: Settings, journal: Journal) -> None:
        self.settings = settings
        self.journal = journal
        self._inboxes = {str(i.path): i for i in settings.inboxes}

    def check(self, job: Job, lost: threading.Event) -> None:
        """Raise LeaseLost unless the job's claim is still the live one (before a rename)."""
        if lost.is_set() or not self.journal.holds(job.id, job.claim):
            lost.set()
            raise LeaseLost(job.id, job.claim)

    def lost(self, job: Job, bound: structlog.stdlib.BoundLogger) -> JobResult:
        """Another worker holds the job now: record nothing, leave everything to it."""
        bound.warning("job.lost", claim=job.claim)
        return JobResult(
            job.inbox, job.input, Outcome.lost, 0.0, "another worker took the job over"
        )

    def wait(self, job: Job, message: str, retry_in: float | None) -> JobResult:
        """Send the job to waiting (when its claim still holds)."""
        if not self.journal.mark_waiting(job.id, message, retry_in=retry_in, claim=job.claim):
            return self.lost(job, log.bind(job_id=job.id, input=job.input))
        return JobResult(job.inbox, job.input, Outcome.waiting, 0.0, message)

    def vanished(self, job: Job, bound: structlog.stdlib.BoundLogger, error: str = "") -> JobResult:
        """The input is gone: forget its job; in a cluster, unless its inbox is unmounted or
        gone on this host (then the shared row goes back to the queue, for a host that sees
        it; on one host the next rescan queues it again)."""
        inbox = self._inboxes.get(job.inbox)
        shared = self.settings.cluster is not None
        if shared and inbox is not None and not root_present(inbox.path):
            self.journal.mark_queued(job.id, claim=job.claim)
            bound.warning("job.released", reason="inbox missing on this host")
            return JobResult(job.inbox, job.input, Outcome.interrupted, 0.0, "inbox missing")
        self.journal.delete(job.id, claim=job.claim)  # the input left the inbox
        bound.info("job.vanished", **({"error": error} if error else {}))
        return JobResult(job.inbox, job.input, Outcome.vanished, 0.0, "input vanished")
