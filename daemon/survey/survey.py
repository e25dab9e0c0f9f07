"""Candidates → journal: decide for each input whether it is done, pending or new work."""

from __future__ import annotations

import os

import structlog

from daemon.config import Settings
from daemon.errors import DropforgeError
from daemon.intake.candidates import Candidate
from daemon.intake.names import FileKind
from daemon.planning.inputs import base_dependencies, quick_fingerprint, relative
from daemon.store.protocols import Journal
from daemon.store.rows import Job, PlannedFile, folder_stamp
from daemon.survey.done import canceled_entry, done_by_digest, finished, unchanged_entry
from daemon.survey.entries import SurveyEntry, Verdict
from daemon.survey.marks import FolderMarks
from daemon.survey.passes import PassState
from daemon.tasks.context import Prepared
from daemon.tasks.prepare import prepare
from daemon.values import JobState

__all__ = ["BULK_FROM", "FolderMarks", "SurveyEntry", "SurveyPass", "Verdict", "survey"]


log = structlog.get_logger("dropforge.survey")


# Passes over at least this many candidates read the journal's tables in bulk.
BULK_FROM = 64


class SurveyPass(PassState):
    """One survey of many candidates (a scan or rescan); use it as a context manager."""

    def survey(self, candidate: Candidate) -> SurveyEntry:
        """``survey`` one candidate within this pass."""
        return survey(self.settings, self.journal, candidate, within=self)


def survey(
    settings: Settings,
    journal: Journal,
    candidate: Candidate,
    *,
    within: SurveyPass | None = None,
) -> SurveyEntry:
    """Compare a candidate with the journal and queue it when there is work to do.

    An unchanged input is recognised from the stat cache alone, so a rescan of
    thousands of finished inputs opens none of them; while its output folder keeps the
    stamp it had when the outputs were last found complete, not even the manifest is read.
    """
    inbox = str(candidate.inbox.path)
    try:
        st = os.stat(candidate.path)
        if st.st_size == 0:
            return SurveyEntry(candidate, Verdict.deferred, message="empty file, still arriving")
        if within is not None:
            within.current = (candidate.path, st)  # stat'ed once for this candidate
            within.forget_hashed()
        if within is not None and within.bulk and candidate.kind is not FileKind.job:
            done = done_by_digest(settings, within, candidate)
            if done is not None:
                return done
        row = journal.get_job(inbox, candidate.rel)
        # Job files are re-planned every time: endpoints may arrive after them.
        if row is not None and row.fingerprint and candidate.kind.value != "job":
            if within is None:
                fp = quick_fingerprint(settings, journal, candidate, row.deps)
            else:
                task = candidate.inbox.default_task
                fp = quick_fingerprint(
                    settings, within, candidate, row.deps, settings_fp=within.settings_fp(task)
                )
            if fp == row.fingerprint and not row.force:
                return unchanged_entry(journal, candidate, row, within)
        prepared = prepare(settings, journal, candidate)
    except FileNotFoundError:
        return SurveyEntry(candidate, Verdict.deferred, message="vanished during the scan")
    except DropforgeError as exc:  # still being written, or a dependency vanished
        return SurveyEntry(candidate, Verdict.deferred, message=str(exc))
    if row is not None:
        kept = _keep_finished(journal, candidate, row, prepared)
        if kept is not None:
            return kept
    base = {relative(candidate, p) for p in base_dependencies(candidate)}
    extra = tuple(d.path for d in prepared.deps if d.path not in base)
    plan = prepared.plan
    job, changed = journal.upsert_job(
        inbox=inbox,
        input=candidate.rel,
        kind=candidate.kind.value,
        fingerprint=prepared.fingerprint,
        job_key=prepared.job_key,
        out_dir=str(prepared.out_dir),
        deps=extra,
        priority=plan.params.priority if plan is not None else 0,
        task=plan.task.value if plan is not None else "",
        planned=[PlannedFile(f, s) for f, s in plan.planned_files()] if plan else (),
    )
    forced = plan is not None and (plan.force or job.force)  # `dropforge retry --force`
    if plan is not None and not forced and finished(plan.out_dir, plan.job_key, within):
        # The journal forgot (state dir wiped) but the outputs are complete.
        journal.mark_done(job.id, seconds=0.0)
        stamp = folder_stamp(plan.out_dir)
        journal.set_output_stamps([(str(plan.out_dir), plan.job_key, stamp)])
        return SurveyEntry(candidate, Verdict.done, journal.get(job.id))
    if not changed and job.state in (JobState.failed, JobState.quarantined):
        return SurveyEntry(candidate, Verdict.failed, job, job.error or "")
    if not changed and job.state is JobState.canceled:
        return canceled_entry(journal, candidate, job)
    if not changed and job.state is JobState.done:
        journal.requeue(job.id)  # an output was deleted or damaged: resume the job
        log.info("job.requeued", input=candidate.rel, reason="outputs missing")
        return SurveyEntry(candidate, Verdict.queued, journal.get(job.id))
    if changed:
        log.info("job.queued", input=candidate.rel, inbox=inbox)
    return SurveyEntry(candidate, Verdict.queued if changed else Verdict.pending, job)


def _keep_finished(
    journal: Journal, candidate: Candidate, row: Job, prepared: Prepared
) -> SurveyEntry | None:
    """A finished job whose key the new plan kept stays finished.

    The fingerprint covers every setting, the key only what the job uses: when a setting it
    does not use changed (a model or LoRA alias it does not name), its outputs, or its failure,
    are still the answer. Only the recorded fingerprint is brought up to date.
    """
    plan = prepared.plan
    if row.job_key != prepared.job_key or row.force or (plan is not None and plan.force):
        return None
    if row.state is JobState.failed:
        verdict = Verdict.failed
    elif row.state is JobState.done and plan is not None and finished(plan.out_dir, row.job_key):
        verdict = Verdict.done
    else:
        return None
    journal.update_identity(row.id, prepared.fingerprint, row.job_key, str(prepared.out_dir))
    log.info("job.kept", input=candidate.rel, state=row.state.value, reason="same job key")
    return SurveyEntry(candidate, verdict, journal.get(row.id), row.error or "")
