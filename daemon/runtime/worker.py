"""Claim → prepare → run the task → complete, for one job at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.config import Settings
from daemon.errors import (
    DependencyMissing,
    DiskFull,
    DropforgeError,
    InputError,
    Interrupted,
    LeaseLost,
    ModelUnavailable,
    TransientError,
)
from daemon.generators import Generator
from daemon.intake.candidates import candidate_for
from daemon.intake.deliveries import Temporaries
from daemon.intake.paths import read_small_table
from daemon.outputs.files import WriteFence, fenced_writes, remove_stale_temporaries
from daemon.outputs.folders import escaping_output, foreign_output
from daemon.outputs.manifest import AttemptRecord, job_is_done, write_manifest
from daemon.runtime.attempts import AttemptTracker, TrackedGenerator, earlier_attempts
from daemon.runtime.fenced import ClaimEnds
from daemon.runtime.filing import check_space, claimable_inboxes, move_after
from daemon.runtime.outcomes import (
    PROGRESS_EVERY_S,
    JobResult,
    Outcome,
    Progress,
    ProgressThrottle,
    counted,
    planned_files,
    settings_of,
)
from daemon.store.attempts import previous_cut_short
from daemon.store.protocols import Journal
from daemon.store.rows import Job, backoff, folder_stamp
from daemon.tasks.context import JobContext, JobProgress, Prepared
from daemon.tasks.prepare import prepare
from daemon.tasks.records import failed_manifest
from daemon.tasks.registry import TASKS
from daemon.values import CancelReason, Clock

__all__ = [
    "DISK_RETRY_S",
    "LOOK_AGAIN_S",
    "JobResult",
    "Outcome",
    "Progress",
    "ProgressThrottle",
    "Worker",
    "planned_files",
]

log = structlog.get_logger("dropforge.worker")

# The longest wait of a job held by something a person fixes by hand: a full disk (or
# min_free_mb), or a model not on this machine yet (fetched or copied while jobs wait).
LOOK_AGAIN_S = 60.0
DISK_RETRY_S = LOOK_AGAIN_S


class Worker:
    """Runs jobs claimed from the journal through a generator (created on first need)."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        generator_factory: Callable[[], Generator],
        *,
        owner: str,
        stop: threading.Event | None = None,
        clock: Clock = time.time,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self._factory = generator_factory
        self._generator: Generator | None = None
        self.owner = owner
        self.stop = stop or threading.Event()
        self.clock = clock
        self.progress = progress or Progress()
        self._inboxes = {str(i.path): i for i in settings.inboxes}
        self.ends = ClaimEnds(settings, journal)
        # A cancel of the running job, and only of it: set by request_cancel, cleared per job.
        self._cancel_lock = threading.Lock()
        self._running_id: int | None = None
        self._cancel: CancelReason | None = None
        self._loaded_models: set[str] = set()  # model loads this process has recorded
        self._temporaries = Temporaries()

    def request_cancel(self, job_id: int, reason: CancelReason) -> bool:
        """Stop the running job at its next step for a cancel, if ``job_id`` is the job
        running now (never another: cancelling one job must not stop another); True if so."""
        with self._cancel_lock:
            if self._running_id != job_id:
                return False
            if self._cancel is None:
                self._cancel = reason
                log.info("job.cancel_heard", job_id=job_id, reason=reason.value)
            return True

    @property
    def running_id(self) -> int | None:
        """The id of the job this worker runs now, or None."""
        return self._running_id

    def cancel_reason(self) -> CancelReason | None:
        """Why the running job is being canceled, or None."""
        return self._cancel

    def should_stop(self) -> bool:
        """A shutdown, or a cancel of the running job: checked at every step."""
        return self._cancel is not None or self.stop.is_set()

    @property
    def generator(self) -> Generator:
        """The generation backend, created (and torch imported) on first use."""
        if self._generator is None:
            self._generator = self._factory()
        return self._generator

    @property
    def has_generator(self) -> bool:
        """Whether the backend has been created (pipelines may be resident)."""
        return self._generator is not None

    def device_name(self) -> str:
        """The generator's device, or ``none`` while no generator has been created."""
        return self._generator.device_name() if self._generator else "none"

    def lease_seconds(self) -> float:
        """How long a claim holds before another process may take the job over."""
        return max(600.0, self.settings.stop_timeout * 4)

    def run(self, job: Job) -> JobResult:
        """Run one claimed job to an end state and record it in the journal."""
        with self._cancel_lock:
            self._running_id, self._cancel = job.id, None
        try:
            return self._run(job)
        finally:
            with self._cancel_lock:
                self._running_id, self._cancel = None, None

    def _run(self, job: Job) -> JobResult:
        started = self.clock()
        bound = log.bind(job_id=job.id, input=job.input, inbox=job.inbox)
        inbox = self._inboxes.get(job.inbox)
        candidate = (
            candidate_for(
                inbox,
                inbox.path / job.input,
                read_table=lambda p: self.journal.cached_table(p, read_small_table),
            )
            if inbox
            else None
        )
        if inbox is None or candidate is None or not candidate.path.is_file():
            return self.ends.vanished(job, bound)
        temporary = self._temporaries.find(str(candidate.path.parent), self.clock())
        if temporary is not None:  # what was written beside it may still be on its way
            folder = candidate.path.parent.relative_to(candidate.inbox.path).as_posix()
            message = (
                f"{candidate.rel}: a sync tool is delivering into {folder or '.'} ({temporary}):"
                " the job starts once the delivery is done"
            )
            bound.info("job.waiting", error=message)
            return self.ends.wait(job, message, self.settings.settle_seconds)
        history = self.journal.attempts(job.id)
        number = max((a.number for a in history), default=1)
        attempts = earlier_attempts(history, number)
        previous = previous_cut_short(history, number)
        beyond = None if previous is None else previous.point
        try:
            prepared = prepare(self.settings, self.journal, candidate)
        except (DependencyMissing, DropforgeError) as exc:  # e.g. a file still being written
            return self.ends.wait(job, str(exc), self.settings.settle_seconds)
        if not self.journal.update_identity(
            job.id,
            prepared.fingerprint,
            prepared.job_key,
            str(prepared.out_dir),
            task=prepared.plan.task.value if prepared.plan else None,
            planned=planned_files(prepared),
            claim=job.claim,
        ):
            return self.ends.lost(job, bound)
        folders = [prepared.out_dir]
        if prepared.plan is not None:
            folders += [s.out_dir for s in prepared.plan.sequences]
        escape = escaping_output(candidate.inbox.output, folders, candidate.rel)
        if escape is not None:  # before any write, a failed manifest's too
            bound.warning("job.waiting", error=escape)
            return self.ends.wait(job, escape, None)
        clash = foreign_output(candidate.inbox.output, prepared.out_dir, candidate.rel)
        if clash is not None:  # no manifest: it would replace the other input's
            if not self.journal.mark_failed(job.id, clash, claim=job.claim):
                return self.ends.lost(job, bound)
            bound.warning("job.failed", error=clash)
            return JobResult(job.inbox, job.input, Outcome.failed, 0.0, clash)
        lost = threading.Event()
        with fenced_writes(WriteFence(job.claim, lambda: self.ends.check(job, lost))):
            try:
                return self._run_plan(job, prepared, started, bound, attempts, lost, beyond)
            except LeaseLost:
                return self.ends.lost(job, bound)

    def _run_plan(
        self,
        job: Job,
        prepared: Prepared,
        started: float,
        bound: structlog.stdlib.BoundLogger,
        attempts: tuple[AttemptRecord, ...],
        lost: threading.Event,
        beyond: tuple[int, int] | None,
    ) -> JobResult:
        """Run a prepared job's task (its writes fenced by its claim) and record the end."""
        candidate = prepared.candidate
        plan = prepared.plan
        if plan is None:
            assert prepared.error is not None
            return self._fail(job, prepared, str(prepared.error), started, bound, attempts)
        # Temporaries of earlier claims of this job (a dead or frozen worker's) go now.
        for folder in {plan.out_dir, *(s.out_dir for s in plan.sequences)}:
            if folder.is_dir():
                remove_stale_temporaries(folder, claims=range(job.claim))
        force = plan.force or job.force
        if not force and job_is_done(plan.out_dir, plan.job_key):
            self._mark_done(job, plan.out_dir, plan.job_key, 0.0)
            move_after(prepared, "_done")
            return JobResult(job.inbox, job.input, Outcome.skipped, 0.0, out_dir=str(plan.out_dir))
        bound.info("job.started", task=plan.task.value, outputs=len(plan.outputs), claim=job.claim)
        self.progress.on_start(job, len(plan.outputs))
        try:
            context = self._context(job, bound, attempts, lost, beyond)
            ran = TASKS[plan.task].run(context, prepared, force, started)
        except InputError as exc:
            if not candidate.path.is_file():
                # Gone since it was planned (deleted, or its share unmounted): not a bad
                # input. No failed manifest; a rescan queues it again if it comes back.
                return self.ends.vanished(job, bound, str(exc))
            return self._fail(job, prepared, str(exc), started, bound, attempts)
        except Interrupted:
            if lost.is_set():
                raise LeaseLost(job.id, job.claim) from None
            reason = self._cancel
            if reason is not None:
                kept = self.journal.get(job.id).finished
                note = f"{len(kept)} of {plan.output_count} outputs kept"
                if not self.journal.mark_canceled(job.id, note, claim=job.claim):
                    raise LeaseLost(job.id, job.claim) from None
                bound.info("job.canceled", reason=reason.value, kept=len(kept))
                seconds = self.clock() - started
                text = f"{reason.describe()} ({note})"
                return JobResult(
                    job.inbox, job.input, Outcome.canceled, seconds, text, str(plan.out_dir)
                )
            if not self.journal.mark_queued(job.id, claim=job.claim):
                raise LeaseLost(job.id, job.claim) from None
            bound.info("job.interrupted")
            return JobResult(job.inbox, job.input, Outcome.interrupted, self.clock() - started)
        except TransientError as exc:
            # Space is freed, a model fetched, by hand: look again every minute at the latest
            # rather than backing off to 1 h (looking costs a stat of the model's files).
            by_hand = isinstance(exc, (DiskFull, ModelUnavailable))
            retry_in = min(backoff(job.waits), LOOK_AGAIN_S) if by_hand else None
            bound.warning("job.waiting", error=str(exc))
            return self.ends.wait(job, str(exc), retry_in)
        except Exception as exc:  # a bug must not stop the daemon; record it where users look
            bound.exception("job.crashed")
            message = f"internal error ({type(exc).__name__}: {exc}); please report it"
            return self._fail(job, prepared, message, started, bound, attempts)
        seconds = self.clock() - started
        self._mark_done(job, plan.out_dir, plan.job_key, seconds)
        move_after(prepared, "_done")
        bound.info("job.done", seconds=round(seconds, 3), generated=ran.generated, kept=ran.kept)
        message = counted(plan.output_count, "output") + (f", {ran.kept} kept" if ran.kept else "")
        if ran.notes:
            message += "; " + counted(len(ran.notes), "warning")
        return JobResult(
            job.inbox,
            job.input,
            Outcome.done,
            seconds,
            message,
            str(plan.out_dir),
            ran.generated,
            ran.kept,
            **settings_of(plan),
        )

    def _context(
        self,
        job: Job,
        bound: structlog.stdlib.BoundLogger,
        attempts: tuple[AttemptRecord, ...],
        lost: threading.Event,
        beyond: tuple[int, int] | None,
    ) -> JobContext:
        """What the job's task may use: narrow values, not this worker. Its progress and its
        generator calls are tracked as the claim's furthest point and stage; the planned
        outputs it finishes are recorded for the queue and the web UI. Every write names the
        job's claim: a refused one means another worker holds the job now (LeaseLost)."""

        def on_lost() -> None:
            lost.set()
            raise LeaseLost(job.id, job.claim)

        tracker = AttemptTracker(
            self.journal,
            job,
            self.settings.device,
            self._loaded_models,
            on_image=lambda done, total: self.progress.on_image(job, done, total),
            on_step=lambda step, steps: self.progress.on_step(job, step, steps),
            on_lost=on_lost,
        )
        # In a cluster step reports reach the shared store about once a second; one host
        # writes every step to its own journal (the crash-loop rule's points stay exact).
        throttle = ProgressThrottle(
            self.clock,
            every=PROGRESS_EVERY_S if self.settings.cluster is not None else 0.0,
            beyond=beyond,
        )
        finished: set[int] = set()
        recorded: list[int] = []  # the finished indices last written to the journal

        def record(done: int, total: int, note: str) -> None:
            changed = len(finished) != len(recorded)
            if not throttle.due(done, note, tracker.steps) and not changed:
                return
            if changed:
                recorded[:] = sorted(finished)
            tracker.record(done, total, note, finished=recorded if changed else None)

        return JobContext(
            settings=self.settings,
            generator=lambda: TrackedGenerator(lambda: self.generator, tracker),
            device_name=self.device_name,
            should_stop=lambda: self.should_stop() or lost.is_set(),
            clock=self.clock,
            progress=JobProgress(
                record=record,
                on_image=tracker.image,
                on_step=tracker.step,
                finish=finished.update,
            ),
            check_space=self.check_space,
            log=bound,
            cancel_reason=self.cancel_reason,
            model_ready=self.model_ready,
            attempts=attempts,
        )

    def model_ready(self, alias: str) -> bool:
        """Whether the model ``alias`` is resident (no backend yet: not)."""
        return self._generator is not None and alias in self._generator.loaded_models()

    def _mark_done(self, job: Job, out_dir: Path, job_key: str, seconds: float) -> None:
        """Record the job done, and its output folder's stamp for the next rescan."""
        if not self.journal.mark_done(job.id, seconds=seconds, claim=job.claim):
            raise LeaseLost(job.id, job.claim)
        self.journal.set_output_stamps([(str(out_dir), job_key, folder_stamp(out_dir))])

    def _fail(
        self,
        job: Job,
        prepared: Prepared,
        message: str,
        started: float,
        bound: structlog.stdlib.BoundLogger,
        attempts: tuple[AttemptRecord, ...] = (),
    ) -> JobResult:
        finished = self.clock()
        manifest = failed_manifest(
            prepared, message, started, finished, self.device_name(), attempts
        )
        try:
            write_manifest(prepared.out_dir, manifest)
        except LeaseLost:
            raise
        except (OSError, DropforgeError) as exc:  # e.g. disk full: the journal still records it
            bound.error("manifest.unwritable", error=str(exc))
        if not self.journal.mark_failed(job.id, message, claim=job.claim):
            raise LeaseLost(job.id, job.claim)
        bound.warning("job.failed", error=message)
        move_after(prepared, "_failed")
        return JobResult(
            job.inbox,
            job.input,
            Outcome.failed,
            finished - started,
            message,
            str(prepared.out_dir),
            **(settings_of(prepared.plan) if prepared.plan is not None else {}),
        )

    def claimable_inboxes(self) -> list[str] | None:
        """The inboxes whose jobs this worker may claim (``filing.claimable_inboxes``)."""
        return claimable_inboxes(self.settings)

    def check_space(self, out_dir: Path) -> None:
        """Raise DiskFull when the output's disk has less than ``min_free_mb`` free."""
        check_space(self.settings, out_dir)

    def claim(self, lease_seconds: float | None = None) -> Job | None:
        """Claim the next job this worker may run."""
        lease = self.lease_seconds() if lease_seconds is None else lease_seconds
        return self.journal.claim(self.owner, lease, inboxes=self.claimable_inboxes())

    def unload(self) -> None:
        """Release the generator's pipelines (idle unload, shutdown)."""
        if self._generator is not None:
            self._generator.unload()
