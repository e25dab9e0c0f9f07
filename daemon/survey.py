"""Candidates → journal: decide for each input whether it is done, pending or new work."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import structlog

from daemon.config import Settings
from daemon.errors import DropforgeError
from daemon.intake import Candidate
from daemon.journal import Job, JobState, Journal
from daemon.manifest import job_is_done
from daemon.prepare import base_dependencies, prepare, quick_fingerprint, relative

log = structlog.get_logger("dropforge.survey")


class Verdict(str, Enum):
    """What a survey decided for one candidate."""

    queued = "queued"  # new or changed: the worker will run it
    done = "done"  # finished earlier, outputs intact: skipped
    failed = "failed"  # failed earlier and unchanged: skipped until it changes
    pending = "pending"  # already queued, waiting or running
    deferred = "deferred"  # still arriving (empty or changing): looked at again later


@dataclass(frozen=True)
class SurveyEntry:
    """The verdict for one candidate, with the journal row it concerns."""

    candidate: Candidate
    verdict: Verdict
    job: Job | None = None
    message: str = ""


def survey(settings: Settings, journal: Journal, candidate: Candidate) -> SurveyEntry:
    """Compare a candidate with the journal and queue it when there is work to do.

    An unchanged input is recognised from the stat cache alone, so a rescan of
    thousands of finished inputs opens none of them.
    """
    inbox = str(candidate.inbox.path)
    try:
        if candidate.path.stat().st_size == 0:
            return SurveyEntry(candidate, Verdict.deferred, message="empty file, still arriving")
        row = journal.get_job(inbox, candidate.rel)
        # Job files are re-planned every time: endpoints may arrive after them.
        if row is not None and row.fingerprint and candidate.kind.value != "job":
            fp = quick_fingerprint(settings, journal, candidate, row.deps)
            if fp == row.fingerprint and not row.force:
                return _unchanged(journal, candidate, row)
        prepared = prepare(settings, journal, candidate)
    except FileNotFoundError:
        return SurveyEntry(candidate, Verdict.deferred, message="vanished during the scan")
    except DropforgeError as exc:  # still being written, or a dependency vanished
        return SurveyEntry(candidate, Verdict.deferred, message=str(exc))
    base = {relative(candidate, p) for p in base_dependencies(candidate)}
    extra = tuple(d.path for d in prepared.deps if d.path not in base)
    job, changed = journal.upsert_job(
        inbox=inbox,
        input=candidate.rel,
        kind=candidate.kind.value,
        fingerprint=prepared.fingerprint,
        job_key=prepared.job_key,
        out_dir=str(prepared.out_dir),
        deps=extra,
    )
    plan = prepared.plan
    if plan is not None and not plan.force and job_is_done(plan.out_dir, plan.job_key):
        # The journal forgot (state dir wiped) but the outputs are complete.
        journal.mark_done(job.id, seconds=0.0)
        return SurveyEntry(candidate, Verdict.done, journal.get(job.id))
    if not changed and job.state in (JobState.failed, JobState.quarantined):
        return SurveyEntry(candidate, Verdict.failed, job, job.error or "")
    if not changed and job.state is JobState.done:
        journal.requeue(job.id)  # an output was deleted or damaged: resume the job
        log.info("job.requeued", input=candidate.rel, reason="outputs missing")
        return SurveyEntry(candidate, Verdict.queued, journal.get(job.id))
    if changed:
        log.info("job.queued", input=candidate.rel, inbox=inbox)
    return SurveyEntry(candidate, Verdict.queued if changed else Verdict.pending, job)


def _unchanged(journal: Journal, candidate: Candidate, row: Job) -> SurveyEntry:
    if row.state is JobState.done:
        if job_is_done(Path(row.out_dir), row.job_key):
            return SurveyEntry(candidate, Verdict.done, row)
        journal.requeue(row.id)  # an output was deleted or damaged: resume the job
        log.info("job.requeued", input=candidate.rel, reason="outputs missing")
        return SurveyEntry(candidate, Verdict.queued, journal.get(row.id))
    if row.state in (JobState.failed, JobState.quarantined):
        return SurveyEntry(candidate, Verdict.failed, row, row.error or "")
    return SurveyEntry(candidate, Verdict.pending, row)


def survey_all(
    settings: Settings, journal: Journal, candidates: Iterable[Candidate]
) -> list[SurveyEntry]:
    """Survey many candidates in order."""
    return [survey(settings, journal, c) for c in candidates]
