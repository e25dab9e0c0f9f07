"""The rows a job store hands out, and the small rules about them (backoff, stamps, stat keys)."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from daemon.values import AttemptEnd, AttemptStage, CancelReason, JobState

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "MAX_PLANNED",
    "Attempt",
    "CancelResult",
    "FolderMark",
    "Job",
    "JobDigest",
    "JobState",
    "PlannedFile",
    "backoff",
    "folder_stamp",
    "stat_key",
]

BACKOFF_BASE_S = 30.0
BACKOFF_CAP_S = 3600.0
MAX_PLANNED = 100  # planned outputs a job row lists (a deep tween plans thousands of frames)


class PlannedFile(NamedTuple):
    """One output a job will make: its file name (inside the job's output folder, or
    ``sequences/…`` for tween frames) and its seed (None for copied tween endpoints)."""

    file: str
    seed: int | None


@dataclass(frozen=True)
class Job:
    """One row of the jobs table; times are seconds from the journal's clock."""

    id: int
    inbox: str
    input: str
    kind: str
    fingerprint: str
    job_key: str
    out_dir: str
    state: JobState
    attempts: int
    waits: int
    error: str | None
    not_before: float | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    seconds: float | None
    lease_owner: str | None
    lease_expires: float | None
    progress_done: int
    progress_total: int
    progress_note: str
    force: bool
    deps: tuple[str, ...]
    claim: int = 0  # the fencing number of the latest claim (0: never claimed)
    priority: int = 0  # claims take the highest first
    position: float | None = None  # order within a priority; None: arrival (the id)
    cancel: CancelReason | None = None  # asked of a running job, or why it was canceled
    task: str = ""  # the planned task ("" until planned)
    planned: tuple[PlannedFile, ...] = ()  # the first MAX_PLANNED planned outputs
    finished: tuple[int, ...] = ()  # indices into ``planned`` of the outputs finished

    @property
    def order(self) -> float:
        """Where the job stands among jobs of its priority: its position, else its arrival."""
        return float(self.id) if self.position is None else self.position

    @property
    def folder(self) -> str:
        """The folder of its input inside the inbox (``""`` or ``"a/b/"``): its drop."""
        return self.input[: self.input.rfind("/") + 1]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        """Build a Job from a ``SELECT *`` row."""
        values: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
        values["state"] = JobState(values["state"])
        values["force"] = bool(values["force"])
        values["deps"] = tuple(json.loads(values["deps"]))
        if "planned" in values:
            values["planned"] = tuple(PlannedFile(f, s) for f, s in json.loads(values["planned"]))
            values["finished"] = tuple(json.loads(values["finished"]))
            values["cancel"] = CancelReason(values["cancel"]) if values["cancel"] else None
        return cls(**values)


class CancelResult(NamedTuple):
    """What a cancel did: jobs canceled at once, and running jobs asked to stop."""

    canceled: tuple[int, ...]
    stopping: tuple[int, ...]


@dataclass(frozen=True)
class Attempt:
    """One claim of a job and the furthest point it reached.

    The point is ``outputs`` finished (of ``total``), then ``steps`` denoising steps since the
    last finished output; before its first step a claim is only at a ``stage``. ``counted``
    is set when the process died in the claim and that counted toward quarantine.
    """

    job_id: int
    number: int  # 1 for the first claim since the job was (re)queued
    owner: str | None
    started_at: float
    ended_at: float | None
    ended: AttemptEnd
    stage: AttemptStage
    outputs: int
    total: int
    steps: int
    note: str
    counted: bool
    start_outputs: int | None = None  # outputs already finished when it first reported

    @property
    def point(self) -> tuple[int, int]:
        """What ``further`` compares: finished outputs first, then steps into the next."""
        return self.outputs, self.steps

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Attempt:
        """Build an Attempt from a ``SELECT *`` row of ``attempts``."""
        values: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
        values["ended"] = AttemptEnd(values["ended"])
        values["stage"] = AttemptStage(values["stage"])
        values["counted"] = bool(values["counted"])
        return cls(**values)


class FolderMark(NamedTuple):
    """One row of ``folder_marks`` (see there), without its inbox."""

    folder: str
    listing: str
    near: str
    watch: str
    watched: str
    parts: str
    inputs: int


class JobDigest(NamedTuple):
    """The columns of a job row a rescan compares, without building a Job."""

    id: int
    fingerprint: str
    deps: str  # JSON list, parsed only when needed
    force: bool
    state: str
    out_dir: str
    job_key: str


def backoff(waits: int) -> float:
    """Seconds before a job sent to ``waiting`` for the (waits+1)-th time is retried."""
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(waits, 32)))


def folder_stamp(folder: str | Path) -> str | None:
    """The inode and modification time of a folder: any file added, removed or renamed in it
    (every output and manifest is written by a rename) changes it. None when it is gone."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return f"{st.st_ino}:{st.st_mtime_ns}"


def stat_key(st: os.stat_result) -> tuple[int, int, str]:
    """What the stat cache compares: size, mtime in nanoseconds and inode (as text)."""
    # Inodes are stored as text: some filesystems report values beyond SQLite's int64.
    return st.st_size, st.st_mtime_ns, str(st.st_ino)


@dataclass(frozen=True)
class Host:
    """One worker process of a cluster, as its heartbeat row says; times by the database."""

    owner: str
    host: str
    pid: int
    device: str
    version: str
    started_at: float
    beat_at: float
    job_id: int | None
    job_input: str | None
