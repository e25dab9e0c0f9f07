"""Queue control: the one library the command line, the web UI and the folder watcher call to
cancel, retry and reorder jobs. Every function takes an open job store and changes only it;
a running daemon hears the change within a second (``runtime.monitor``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from daemon.config import Settings
from daemon.errors import DropforgeError, JobNotFound, NotAnOutput
from daemon.outputs.discards import forget_discards, restore
from daemon.outputs.manifest import read_manifest
from daemon.runtime.inspect import locate
from daemon.store.protocols import JobStore
from daemon.store.rows import Job
from daemon.values import ACTIVE_STATES, CancelReason, JobState

Place = Literal["top", "bottom"]
RUNNABLE = (JobState.queued, JobState.waiting)
EVERY_JOB = 1_000_000  # a limit no queue reaches: listings meant to be complete


class NotInQueue(DropforgeError):
    """A command names a job that is not queued (it is done, failed, canceled …)."""

    def __init__(self, job: Job, action: str) -> None:
        self.job = job
        super().__init__(f"{job.input}: {job.state.value}, not in the queue: nothing to {action}")


@dataclass(frozen=True)
class Found:
    """The jobs that named paths (inputs, or folders inside an inbox) stand for."""

    jobs: tuple[Job, ...] = ()
    unknown: tuple[str, ...] = ()  # paths without a job: never seen, or not yet settled


@dataclass(frozen=True)
class CancelSummary:
    """What a cancel did, job by job."""

    canceled: tuple[Job, ...] = ()  # queued or waiting: canceled at once
    stopping: tuple[Job, ...] = ()  # running: stops at its next step
    untouched: tuple[Job, ...] = field(default=())  # not active: done, failed, canceled …

    @property
    def count(self) -> int:
        """Jobs canceled or being stopped."""
        return len(self.canceled) + len(self.stopping)


def find_jobs(settings: Settings, store: JobStore, paths: Iterable[Path]) -> Found:
    """The jobs of the named inputs; a folder stands for every job of an input below it."""
    jobs: dict[int, Job] = {}
    unknown: list[str] = []
    for path in paths:
        inbox, rel = locate(settings, path)
        root = str(inbox.path)
        whole = rel in ("", ".")
        job = None if whole else store.get_job(root, rel)
        if job is not None:
            jobs[job.id] = job
            continue
        prefix = "" if whole else rel.rstrip("/") + "/"
        below = [
            j for j in store.jobs(limit=EVERY_JOB) if j.inbox == root and j.input.startswith(prefix)
        ]
        if below:
            jobs.update((j.id, j) for j in below)
        else:
            unknown.append(str(path))
    return Found(tuple(jobs.values()), tuple(unknown))


def cancel(
    store: JobStore, jobs: Sequence[Job], reason: CancelReason = CancelReason.requested
) -> CancelSummary:
    """Cancel these jobs: queued and waiting ones at once, a running one at its next step."""
    active = [j for j in jobs if j.state in ACTIVE_STATES]
    result = store.cancel(ids=[j.id for j in active], reason=reason)
    return _summary(store, result.canceled, result.stopping, [j for j in jobs if j not in active])


def cancel_all(store: JobStore, *, running: bool = False) -> CancelSummary:
    """Cancel every queued and waiting job, and with ``running`` the running ones too."""
    states = [*RUNNABLE, *([JobState.running] if running else [])]
    result = store.cancel(states=states)
    return _summary(store, result.canceled, result.stopping, [])


def _summary(
    store: JobStore, canceled: Iterable[int], stopping: Iterable[int], untouched: list[Job]
) -> CancelSummary:
    def rows(ids: Iterable[int]) -> tuple[Job, ...]:
        found = []
        for job_id in ids:
            try:
                found.append(store.get(job_id))
            except JobNotFound:
                continue  # its input vanished meanwhile
        return tuple(found)

    return CancelSummary(rows(canceled), rows(stopping), tuple(untouched))


def retry(
    store: JobStore,
    jobs: Sequence[Job] = (),
    *,
    states: Iterable[JobState] = (),
    force: bool = False,
) -> int:
    """Requeue these jobs and every job in ``states`` (failed, quarantined, canceled); a
    canceled job is restored and resumes with the outputs it had finished. With ``force``,
    the outputs deleted from these jobs (recorded as discards) are made again too."""
    if force:
        for job in jobs:
            forget_discards(Path(job.out_dir))
    return store.retry(inputs=[(j.inbox, j.input) for j in jobs], states=states, force=force)


def prioritize(store: JobStore, job: Job, to: Place | int) -> Job:
    """Move a queued or waiting job to the top or the bottom of the queue, or give it
    priority ``to`` (claims take the highest priority first, then arrival)."""
    if job.state not in RUNNABLE:
        raise NotInQueue(job, "move")
    if isinstance(to, int):
        return store.set_priority(job.id, to)
    return store.move(job.id, to=to)


def move_before(store: JobStore, job_id: int, before: int) -> Job:
    """Place a queued job just before another (dragging it in the web UI's queue)."""
    job, other = store.get(job_id), store.get(before)
    for each in (job, other):
        if each.state not in RUNNABLE:
            raise NotInQueue(each, "move")
    return store.move(job.id, before=other.id)


def restore_output(settings: Settings, store: JobStore, image: Path) -> Job:
    """Make a deleted output again: requeue its job, then forget the discard recorded where
    it was (in this order, so that no rescan in between records it again)."""
    manifest = read_manifest(image.parent)
    rel = manifest.input.path if manifest is not None and manifest.input is not None else None
    inbox = next((i for i in settings.inboxes if image.is_relative_to(i.output)), None)
    job = None if rel is None or inbox is None else store.get_job(str(inbox.path), rel)
    if job is None:
        raise NotAnOutput(image, "no job in the journal made it")
    if image.exists():
        raise NotAnOutput(image, "it is there: nothing to restore")
    store.requeue(job.id)
    if not restore(image):
        raise NotAnOutput(image, "not discarded: nothing to restore")
    return store.get(job.id)
