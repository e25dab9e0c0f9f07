"""Recognising a done input cheaply: from the stat cache, the output folder's stamp, and the
signature recorded when it was last verified."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import structlog

from daemon.config import Settings
from daemon.intake.candidates import Candidate
from daemon.outputs.discards import deleted_outputs, record_discards
from daemon.outputs.manifest import job_is_done
from daemon.planning.inputs import base_dependencies, quick_fingerprint
from daemon.store.protocols import Journal
from daemon.store.rows import Job, folder_stamp, stat_key
from daemon.survey.entries import SurveyEntry, Verdict
from daemon.survey.passes import PassState
from daemon.values import CancelReason, JobState

log = structlog.get_logger("dropforge.survey")


def unchanged_entry(
    journal: Journal, candidate: Candidate, row: Job, within: PassState | None
) -> SurveyEntry:
    if row.state is JobState.done:
        intact, stamp = outputs_intact(journal, row, within)
        if intact:
            if within is not None:
                extras = [candidate.inbox.path / rel for rel in row.deps]
                keys = within.hashed_keys(extras)
                within.note_verified(candidate, row.fingerprint, row.out_dir, stamp, extras, keys)
            return SurveyEntry(candidate, Verdict.done, row)
        journal.requeue(row.id)  # an output was deleted or damaged: resume the job
        log.info("job.requeued", input=candidate.rel, reason="outputs missing")
        return SurveyEntry(candidate, Verdict.queued, journal.get(row.id))
    if row.state in (JobState.failed, JobState.quarantined):
        return SurveyEntry(candidate, Verdict.failed, row, row.error or "")
    if row.state is JobState.canceled:
        return canceled_entry(journal, candidate, row)
    return SurveyEntry(candidate, Verdict.pending, row)


def canceled_entry(journal: Journal, candidate: Candidate, row: Job) -> SurveyEntry:
    """A canceled job stays canceled until its input changes, unless it was canceled because
    its input left the inbox: the input is back, so it is queued again."""
    if row.cancel is CancelReason.removed and journal.requeue(row.id):
        log.info("job.requeued", input=candidate.rel, reason="input returned")
        return SurveyEntry(candidate, Verdict.queued, journal.get(row.id))
    return SurveyEntry(candidate, Verdict.canceled, row, row.error or "")


_DONE = JobState.done.value


def done_by_digest(
    settings: Settings, within: PassState, candidate: Candidate
) -> SurveyEntry | None:
    """The bulk fast paths for an unchanged done input whose output folder kept its stamp.

    Fastest: the stats of the files its job depends on, the settings, the job's fingerprint
    and the folder's stamp give the signature recorded when it was last verified. Otherwise
    the fingerprint is recomputed from the stat cache; when it and the stamp still match, the
    input is done and its signature is recorded for the next pass.
    """
    inbox = str(candidate.inbox.path)
    digest = within.digest(inbox, candidate.rel)
    if digest is None or digest.state != _DONE or digest.force or not digest.fingerprint:
        return None
    settings_fp = within.settings_fp(candidate.inbox.default_task)
    known: list[str] = json.loads(digest.deps) if digest.deps != "[]" else []
    base = base_dependencies(candidate)
    extras = [candidate.inbox.path / rel for rel in known]
    paths = base + extras
    stamp = folder_stamp(digest.out_dir)
    if stamp is None:
        return None
    recorded = within.signature(inbox, candidate.rel)
    if recorded is not None:
        try:
            keys = [stat_key(within.stat(p)) for p in paths]
        except OSError:
            return None  # a dependency vanished: the slow path says what to do
        if recorded == _signature(settings_fp, digest.fingerprint, stamp, keys):
            extra_keys = keys[len(base) :]
            within.note_verified(
                candidate, digest.fingerprint, digest.out_dir, stamp, extras, extra_keys
            )
            return SurveyEntry(candidate, Verdict.done)
    within.forget_hashed()
    fp = quick_fingerprint(settings, within, candidate, known, settings_fp=settings_fp)
    if fp != digest.fingerprint:
        return None
    if not within.stamp_matches(digest.out_dir, digest.job_key, stamp):
        return None  # the slow path reads the manifest and records the new stamp
    verified = within.hashed_keys(paths)
    if all(k is not None for k in verified):
        signature = _signature(settings_fp, digest.fingerprint, stamp, verified)
        within.note_signature(inbox, candidate.rel, signature)
    hashed = verified[len(base) :]
    within.note_verified(candidate, digest.fingerprint, digest.out_dir, stamp, extras, hashed)
    return SurveyEntry(candidate, Verdict.done)


def _signature(
    settings_fp: str, fingerprint: str, stamp: str, keys: Iterable[tuple[int, int, str] | None]
) -> str:
    """A digest of what a done input's verification rested on."""
    parts = [settings_fp, fingerprint, stamp, *(f"{k[0]}:{k[1]}:{k[2]}" for k in keys if k)]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def outputs_intact(journal: Journal, row: Job, within: PassState | None) -> tuple[bool, str | None]:
    """Whether a done job's outputs are all there (and its folder's stamp, taken first): the
    stamp is unchanged, or the manifest and the files it lists say so (then the new stamp
    is recorded)."""
    stamp = folder_stamp(row.out_dir)
    if within is not None:
        if within.stamp_matches(row.out_dir, row.job_key, stamp):
            return True, stamp
    elif stamp is not None and journal.output_stamp(row.out_dir, row.job_key) == stamp:
        return True, stamp
    if not finished(Path(row.out_dir), row.job_key, within):
        return False, stamp
    stamp = folder_stamp(row.out_dir)  # a discard just recorded changed it
    if within is not None:
        within.note_stamp(row.out_dir, row.job_key, stamp)
    else:
        journal.set_output_stamps([(row.out_dir, row.job_key, stamp)])
    return True, stamp


def finished(out_dir: Path, job_key: str, within: PassState | None = None) -> bool:
    """``job_is_done``, once the outputs a person deleted from the finished job are recorded
    as discarded (not in a dry run): deleting an output is a discard, not a request to
    remake it (a damaged one is remade). A job whose manifest is not done (a crash) is not
    finished: its missing images are made when it resumes."""
    if job_is_done(out_dir, job_key):
        return True
    found = deleted_outputs(out_dir, job_key)
    if found is None or not found[0]:
        return False
    gone, intact = found
    if within is None or not within.dry:
        record_discards(gone)
        for path in gone:
            log.info("output.discarded", file=str(path), reason="deleted")
    return intact
