"""One-shot processing (`dropforge once`): scan every inbox, run what is pending, report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog

from daemon.config import Settings
from daemon.generators import Generator
from daemon.intake.candidates import Candidate
from daemon.intake.scan import ListedFolder, scan_inbox
from daemon.runtime.cluster import Membership
from daemon.runtime.monitor import JournalMonitor, cancel_listener
from daemon.runtime.notify import Notices, notices_for
from daemon.runtime.recovery import owner_id, recover, table_reader
from daemon.runtime.worker import JobResult, Outcome, Progress, Worker
from daemon.store.open import open_journal, open_journal_copy
from daemon.store.protocols import HostRegistry, Journal
from daemon.survey.entries import SurveyEntry, Verdict
from daemon.survey.forecast import Forecast, forecast
from daemon.survey.marks import FolderMarks
from daemon.survey.survey import BULK_FROM, SurveyPass
from daemon.tasks.prepare import prepare
from daemon.values import Clock, JobState

log = structlog.get_logger("dropforge.runner")

NOTIFY_FLUSH_S = 10.0  # at the end of `once`, the longest wait for notices still being sent


@dataclass
class OnceReport:
    """Everything `dropforge once` prints at the end."""

    folders: list[str]
    preset: str  # the configured default, for a run that processed nothing
    texture: bool = False  # the configured default
    found: int = 0
    skipped: int = 0
    results: list[JobResult] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    deferred: list[tuple[str, str]] = field(default_factory=list)
    previously_failed: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # inbox folders that do not exist
    seconds: float = 0.0

    @property
    def failed(self) -> list[JobResult]:
        """Jobs that failed in this run."""
        return [r for r in self.results if r.outcome is Outcome.failed]

    @property
    def processed(self) -> list[JobResult]:
        """Jobs that ran in this run (done, failed or stopped), not those that only waited."""
        return [r for r in self.results if r.outcome is not Outcome.waiting]

    @property
    def waiting(self) -> list[JobResult]:
        """Jobs that could not run now (a model not here yet, a full disk) and wait."""
        return [r for r in self.results if r.outcome is Outcome.waiting]

    @property
    def presets(self) -> list[str]:
        """The presets the processed jobs used, in order of first use; else the default."""
        used = [r.preset for r in self.processed if r.preset is not None]
        return list(dict.fromkeys(used)) or [self.preset]

    @property
    def textures(self) -> tuple[int, int]:
        """Mesh jobs processed with texture on, and all mesh jobs processed."""
        meshes = [r.texture for r in self.processed if r.texture is not None]
        return sum(meshes), len(meshes)

    @property
    def exit_code(self) -> int:
        """0 when no job failed in this run and every inbox folder exists, 1 otherwise."""
        return 1 if self.failed or self.missing else 0


@dataclass
class Scan:
    """What scanning every inbox found."""

    candidates: list[Candidate] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # inbox folders that do not exist
    unchanged: int = 0  # done inputs in folders skipped as unchanged (folder marks)
    listed: list[tuple[FolderMarks, tuple[ListedFolder, ...]]] = field(default_factory=list)


def scan_all(settings: Settings, journal: Journal, survey_pass: SurveyPass | None = None) -> Scan:
    """Scan every inbox; with a ``survey_pass``, folders marked unchanged are skipped."""
    scan = Scan()
    roots = [i.output for i in settings.inboxes] + [settings.state_dir]
    for inbox in settings.inboxes:
        if not inbox.path.is_dir():
            log.warning("inbox.missing", inbox=str(inbox.path))
            scan.missing.append(str(inbox.path))
            continue
        marks = survey_pass.folder_marks(inbox) if survey_pass is not None else None
        result = scan_inbox(
            inbox, excluded_roots=roots, read_table=table_reader(journal), shortcut=marks
        )
        scan.candidates += result.candidates
        scan.refused += [(str(p), why) for p, why in result.rejected]
        scan.unchanged += result.unchanged
        if marks is not None:
            scan.listed.append((marks, result.folders))
    return scan


def run_once(
    settings: Settings,
    generator_factory: Callable[[], Generator],
    *,
    progress: Progress | None = None,
    on_planned: Callable[[int], None] | None = None,
    clock: Clock = time.time,
) -> OnceReport:
    """Process everything pending in every inbox, then return the report."""
    started = clock()
    preset = str(settings.defaults.get("preset", "standard"))
    texture = settings.defaults.get("texture") is True
    report = OnceReport([str(i.path) for i in settings.inboxes], preset, texture)
    notices = notices_for(settings)
    with open_journal(settings, clock=clock) as journal, member_of(settings, journal):
        recover(settings, journal)
        with SurveyPass(settings, journal) as survey_pass:
            scan = scan_all(settings, journal, survey_pass)
            survey_pass.bulk = len(scan.candidates) >= BULK_FROM
            entries = [survey_pass.survey(c) for c in scan.candidates]
            for marks, folders in scan.listed:
                survey_pass.mark(marks, folders)
        report.refused = scan.refused
        report.missing = scan.missing
        report.found = len(scan.candidates) + scan.unchanged
        report.skipped += scan.unchanged
        _tally(report, entries)
        journal.retry(states=[JobState.waiting])  # an explicit run retries waiting jobs now
        pending = journal.count(JobState.queued)
        if on_planned is not None:
            on_planned(pending)
        worker = Worker(
            settings,
            journal,
            generator_factory,
            owner=owner_id(settings),
            clock=clock,
            progress=progress,
        )
        # `dropforge cancel` from another terminal stops the running job here too.
        monitor = JournalMonitor(settings, [cancel_listener(worker)], clock=clock)
        monitor.start()
        try:
            _run_all(journal, worker, report, notices)
        finally:
            monitor.stop()
            if notices is not None:
                notices.close(timeout=NOTIFY_FLUSH_S)
        worker.unload()
    report.seconds = clock() - started
    return report


@contextlib.contextmanager
def member_of(settings: Settings, journal: Journal) -> Iterator[None]:
    """In a cluster, `once` is a member while it runs (so its claims are not taken for a dead
    host's); on one host, nothing."""
    if not isinstance(journal, HostRegistry):
        yield
        return
    member = Membership(
        settings,
        journal,
        owner=owner_id(settings),
        device=lambda: settings.device,
        current=lambda: None,
        on_wake=lambda: None,
    )
    member.join()
    member.start()
    try:
        yield
    finally:
        member.stop()


def _run_all(journal: Journal, worker: Worker, report: OnceReport, notices: Notices | None) -> None:
    """Claim and run jobs until none is left (each at most once in this run)."""
    seen: set[int] = set()
    while True:
        job = worker.claim()
        if job is None:
            break
        if job.id in seen:  # claimed again in this run: leave it for a later run
            journal.mark_waiting(job.id, job.error or "retry later", retry_in=60.0, claim=job.claim)
            continue
        seen.add(job.id)
        result = worker.run(job)
        if notices is not None:
            notices.job_ended(result, journal)
        if result.outcome is Outcome.skipped:
            report.skipped += 1
        elif result.outcome is not Outcome.vanished:
            report.results.append(result)


def _tally(report: OnceReport, entries: list[SurveyEntry]) -> None:
    for entry in entries:
        if entry.verdict in (Verdict.done, Verdict.canceled):
            report.skipped += 1
        elif entry.verdict is Verdict.failed:
            report.skipped += 1
            report.previously_failed.append((entry.candidate.rel, entry.message))
        elif entry.verdict is Verdict.deferred:
            report.deferred.append((entry.candidate.rel, entry.message))


def dry_run(settings: Settings) -> list[Forecast]:
    """What `once` would do with each input, and why; nothing is queued, written or loaded.

    The survey of a real run runs on a private copy of the journal (``open_journal_copy``),
    over every input (no folder is skipped by its mark, so each is listed).
    """
    forecasts: list[Forecast] = []
    with open_journal_copy(settings) as journal, SurveyPass(settings, journal) as survey_pass:
        candidates = scan_all(settings, journal).candidates
        survey_pass.bulk = len(candidates) >= BULK_FROM
        survey_pass.dry = True
        for candidate in candidates:
            before = journal.get_job(str(candidate.inbox.path), candidate.rel)
            entry = survey_pass.survey(candidate)
            prepared = None
            if entry.verdict in (Verdict.queued, Verdict.pending):
                prepared = prepare(settings, journal, candidate)
            forecasts.append(forecast(entry, before, prepared))
    return forecasts
