"""What a survey decides for each candidate."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from daemon.intake.candidates import Candidate
from daemon.store.rows import Job


class Verdict(str, Enum):
    """What a survey decided for one candidate."""

    queued = "queued"  # new or changed: the worker will run it
    done = "done"  # finished earlier, outputs intact: skipped
    failed = "failed"  # failed earlier and unchanged: skipped until it changes
    canceled = "canceled"  # canceled and unchanged: skipped until it changes or is retried
    pending = "pending"  # already queued, waiting or running
    deferred = "deferred"  # still arriving (empty or changing): looked at again later


@dataclass(frozen=True)
class SurveyEntry:
    """The verdict for one candidate, with the journal row it concerns."""

    candidate: Candidate
    verdict: Verdict
    job: Job | None = None
    message: str = ""
