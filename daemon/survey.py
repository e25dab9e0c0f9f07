"""Candidates → journal: decide for each input whether it is done, pending or new work."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import structlog

from daemon.config import InboxConfig, Settings
from daemon.errors import DropforgeError
from daemon.intake import DEFAULTS_NAME, Candidate, FileKind, FolderParts, ListedFolder
from daemon.journal import (
    FolderMark,
    Job,
    JobDigest,
    JobState,
    Journal,
    folder_stamp,
    stat_key,
)
from daemon.manifest import job_is_done
from daemon.prepare import (
    base_dependencies,
    prepare,
    quick_fingerprint,
    relative,
    settings_fingerprint,
)

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


# Passes over at least this many candidates read the journal's tables in bulk.
BULK_FROM = 64
# Part of every folder mark's listing: a new version forgets marks of an older way.
MARKS_VERSION = "1"
_NO_PARTS = FolderParts().to_json()


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def watched_digest(watch: str) -> str | None:
    """A digest of the stats of a mark's watched paths (``d`` an output folder's stamp, ``f``
    a file's stat key); None when one is gone."""
    keys: list[str] = []
    append, stat = keys.append, os.stat
    try:
        for item in watch.split("\0") if watch else ():
            st = stat(item[1:])
            if item[0] == "d":
                append(f"{st.st_ino}:{st.st_mtime_ns}")
            else:
                append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    except OSError:
        return None
    return _digest("\0".join(keys))


@dataclass
class FolderMarks:
    """The folder marks of one inbox, as a scan's ``intake.Shortcut``.

    A folder is marked when a survey found every input in it done (``SurveyPass.mark``). A
    later scan skips it while its files and their stats, the _defaults.toml chain above it,
    the settings, the parts other files name in it, and the stamps of its inputs' output
    folders and the stats of their outside dependencies are all as they were; any change to
    one of its jobs in the journal forgets the mark (triggers, see ``journal``).
    """

    journal: Journal
    inbox: InboxConfig
    settings_fp: str
    _marks: dict[str, FolderMark] | None = None
    _salt: str = ""

    def __post_init__(self) -> None:
        self._salt = f"{MARKS_VERSION}\0{self.settings_fp}\0{self.inbox!r}\0"

    def listing(self, listing: str) -> str:
        """What a mark records for a scan's listing signature (the settings joined in)."""
        return _digest(self._salt + listing)

    def _get(self, prefix: str) -> FolderMark | None:
        if self._marks is None:
            self._marks = self.journal.folder_marks(str(self.inbox.path))
        return self._marks.get(prefix)

    def recorded(self, prefix: str, listing: str) -> FolderParts | None:
        """The parts the folder named when it was marked, if it was marked with ``listing``."""
        mark = self._get(prefix)
        if mark is None or mark.listing != self.listing(listing):
            return None
        return FolderParts() if mark.parts == _NO_PARTS else FolderParts.from_json(mark.parts)

    def unchanged(self, prefix: str, near: str) -> int | None:
        """The number of inputs in the folder if its mark still holds; else None."""
        mark = self._get(prefix)
        if mark is None or mark.near != near or watched_digest(mark.watch) != mark.watched:
            return None
        return mark.inputs


@dataclass
class SurveyPass:
    """One survey of many candidates (a scan or rescan), cheaper per candidate than ``survey``.

    Each inbox's settings fingerprint is computed once, each ``_defaults.toml`` stat'ed once,
    the stat cache is read without a write per file (the seen marks, output stamps and
    signatures go in one transaction at ``close``). With ``bulk``, the jobs, the stat cache,
    the output stamps and the signatures of verified inputs are read in one query each, so an
    unchanged done input costs two stats and dictionary look-ups (see ``_done_by_digest``).
    Use it as a context manager.
    """

    settings: Settings
    journal: Journal
    bulk: bool = False
    _settings_fp: dict[str, str] = field(default_factory=dict)
    _shared_stats: dict[Path, os.stat_result] = field(default_factory=dict)
    _seen: list[str] = field(default_factory=list)
    _stamps: list[tuple[str, str, str | None]] = field(default_factory=list)
    _jobs: dict[str, dict[str, JobDigest]] = field(default_factory=dict)
    _hashes: dict[str, tuple[int, int, str, str]] | None = None
    _known_stamps: dict[str, tuple[str, str]] | None = None
    _signatures: dict[str, dict[str, str]] = field(default_factory=dict)
    _new_signatures: list[tuple[str, str, str]] = field(default_factory=list)
    _keys: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # of one candidate
    # (inbox, rel) → (fingerprint, watch items with their keys) of inputs verified done
    _verified: dict[tuple[str, str], tuple[str, list[tuple[str, str]]]] = field(
        default_factory=dict
    )
    _new_marks: list[tuple[str, FolderMark, dict[str, str]]] = field(default_factory=list)
    current: tuple[Path, os.stat_result] | None = None  # the candidate being surveyed

    def __enter__(self) -> SurveyPass:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def survey(self, candidate: Candidate) -> SurveyEntry:
        """``survey`` one candidate within this pass."""
        return survey(self.settings, self.journal, candidate, within=self)

    def folder_marks(self, inbox: InboxConfig) -> FolderMarks:
        """The folder marks of one inbox, to pass to its scan as the shortcut."""
        return FolderMarks(self.journal, inbox, self.settings_fp(inbox.default_task))

    def settings_fp(self, default_task: str) -> str:
        """``settings_fingerprint`` of an inbox's default task, computed once per pass."""
        found = self._settings_fp.get(default_task)
        if found is None:
            found = self._settings_fp[default_task] = settings_fingerprint(
                self.settings, default_task
            )
        return found

    def stat(self, path: Path) -> os.stat_result:
        """``os.stat``, taken once per pass for a ``_defaults.toml`` (shared by many inputs)
        and once per candidate for the candidate's own file."""
        current = self.current
        if current is not None and (current[0] is path or current[0] == path):
            return current[1]
        if path.name != DEFAULTS_NAME:
            return os.stat(path)
        st = self._shared_stats.get(path)
        if st is None:
            st = self._shared_stats[path] = os.stat(path)
        return st

    def hash_file(self, path: Path) -> str:
        """The journal's ``hash_file``, with the stat-cache hit path read-only.

        The stats behind the hashes given out are kept (``_keys``) until the next candidate,
        so that a signature records exactly the file versions that were verified.
        """
        st = self.stat(path)
        key = str(path)
        if self.bulk:
            if self._hashes is None:
                self._hashes = self.journal.cached_hashes()
            cached = self._hashes.get(key)
            sha = cached[3] if cached is not None and cached[:3] == stat_key(st) else None
        else:
            sha = self.journal.cached_hash(path, st)
        if sha is None:
            return self.journal.hash_file(path)  # read: no signature from this candidate
        self._seen.append(key)
        self._keys[key] = stat_key(st)
        return sha

    def hashed_keys(self, paths: Iterable[Path]) -> list[tuple[int, int, str] | None]:
        """The stats behind the hashes given out for ``paths`` since ``forget_hashed``."""
        return [self._keys.get(str(p)) for p in paths]

    def forget_hashed(self) -> None:
        """Start a new candidate: forget the stats behind earlier hashes."""
        self._keys.clear()

    def signature(self, inbox: str, rel: str) -> str | None:
        """The signature recorded when ``rel`` was last verified done (bulk passes only)."""
        known = self._signatures.get(inbox)
        if known is None:
            known = self._signatures[inbox] = self.journal.verified_signatures(inbox)
        return known.get(rel)

    def note_signature(self, inbox: str, rel: str, signature: str) -> None:
        """Record a verified input's signature at ``close``."""
        self._new_signatures.append((inbox, rel, signature))

    def digest(self, inbox: str, rel: str) -> JobDigest | None:
        """The compared columns of an input's job (bulk passes only)."""
        jobs = self._jobs.get(inbox)
        if jobs is None:
            jobs = self._jobs[inbox] = self.journal.job_digests(inbox)
        return jobs.get(rel)

    def stamp_matches(self, out_dir: str, job_key: str, stamp: str | None) -> bool:
        """Whether ``stamp`` is the one recorded for ``out_dir`` holding ``job_key``'s outputs."""
        if stamp is None:
            return False
        if not self.bulk:
            return self.journal.output_stamp(out_dir, job_key) == stamp
        if self._known_stamps is None:
            self._known_stamps = self.journal.output_stamps()
        return self._known_stamps.get(out_dir) == (job_key, stamp)

    def note_stamp(self, out_dir: str, job_key: str, stamp: str | None) -> None:
        """Record an output folder's stamp at ``close``."""
        self._stamps.append((out_dir, job_key, stamp))

    def note_verified(
        self,
        candidate: Candidate,
        fingerprint: str,
        out_dir: str,
        stamp: str | None,
        extras: Iterable[Path],
        keys: Iterable[tuple[int, int, str] | None],
    ) -> None:
        """A candidate was found done: remember what that rested on beyond its own folder
        (its output folder's stamp, the stats of its dependencies elsewhere) for ``mark``."""
        items = [("d" + out_dir, stamp)]
        items += [
            ("f" + str(p), k and f"{k[0]}:{k[1]}:{k[2]}") for p, k in zip(extras, keys, strict=True)
        ]
        if all(key is not None for _item, key in items):
            verified = [(item, str(key)) for item, key in items]
            self._verified[(str(candidate.inbox.path), candidate.rel)] = (fingerprint, verified)

    def mark(self, marks: FolderMarks, folders: Iterable[ListedFolder]) -> None:
        """Mark (at ``close``) each listed folder whose inputs this pass all found done."""
        inbox = str(marks.inbox.path)
        for folder in folders:
            found = self._folder_mark(inbox, marks, folder)
            if found is not None:
                self._new_marks.append((inbox, *found))

    def _folder_mark(
        self, inbox: str, marks: FolderMarks, folder: ListedFolder
    ) -> tuple[FolderMark, dict[str, str]] | None:
        """A folder's mark and its inputs' verified fingerprints; None unless this pass found
        every input in it done."""
        if folder.listing is None:
            return None
        watch: dict[str, str] = {}
        fingerprints: dict[str, str] = {}
        for rel in folder.inputs:
            found = self._verified.get((inbox, rel))
            if found is None:
                return None
            fingerprints[rel] = found[0]
            for item, key in found[1]:
                if watch.setdefault(item, key) != key:
                    return None  # one path verified twice, changed in between
        items = sorted(watch)
        mark = FolderMark(
            folder=folder.prefix,
            listing=marks.listing(folder.listing),
            near=folder.near,
            watch="\0".join(items),
            watched=_digest("\0".join(watch[i] for i in items)),
            parts=folder.parts.to_json(),
            inputs=len(folder.inputs),
        )
        return mark, fingerprints

    def close(self) -> None:
        """Write the seen marks, output stamps, signatures and folder marks gathered."""
        if self._seen:
            self.journal.touch_files(self._seen)
            self._seen.clear()
        if self._stamps:
            self.journal.set_output_stamps(self._stamps)
            self._stamps.clear()
        if self._new_signatures:
            self.journal.set_verified_signatures(self._new_signatures)
            self._new_signatures.clear()
        if self._new_marks:
            self.journal.set_folder_marks(self._new_marks)
            self._new_marks.clear()


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
            done = _done_by_digest(settings, within, candidate)
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
                return _unchanged(journal, candidate, row, within)
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
    forced = plan is not None and (plan.force or job.force)  # `dropforge retry --force`
    if plan is not None and not forced and job_is_done(plan.out_dir, plan.job_key):
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


def _unchanged(
    journal: Journal, candidate: Candidate, row: Job, within: SurveyPass | None
) -> SurveyEntry:
    if row.state is JobState.done:
        intact, stamp = _outputs_intact(journal, row, within)
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
    return SurveyEntry(candidate, Verdict.pending, row)


_DONE = JobState.done.value


def _done_by_digest(
    settings: Settings, within: SurveyPass, candidate: Candidate
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


def _outputs_intact(
    journal: Journal, row: Job, within: SurveyPass | None
) -> tuple[bool, str | None]:
    """Whether a done job's outputs are all there (and its folder's stamp, taken first): the
    stamp is unchanged, or the manifest and the files it lists say so (then the new stamp
    is recorded)."""
    stamp = folder_stamp(row.out_dir)
    if within is not None:
        if within.stamp_matches(row.out_dir, row.job_key, stamp):
            return True, stamp
    elif stamp is not None and journal.output_stamp(row.out_dir, row.job_key) == stamp:
        return True, stamp
    if not job_is_done(Path(row.out_dir), row.job_key):
        return False, stamp
    if within is not None:
        within.note_stamp(row.out_dir, row.job_key, stamp)
    else:
        journal.set_output_stamps([(row.out_dir, row.job_key, stamp)])
    return True, stamp
