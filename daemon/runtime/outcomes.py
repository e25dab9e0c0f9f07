"""What a worker reports of a job (``Outcome``, ``JobResult``), the callbacks of a progress
display (``Progress``) and how often a running job's progress reaches the job store
(``ProgressThrottle``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from daemon.planning.model import Plan
from daemon.store.rows import Job, PlannedFile
from daemon.tasks.context import Prepared
from daemon.values import Clock, Task

PROGRESS_EVERY_S = 1.0  # step progress is written at most this often (images: always)


def counted(n: int, noun: str) -> str:
    """``1 output``, ``3 outputs``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def settings_of(plan: Plan) -> dict[str, Any]:
    """What the report says of a job's settings: its preset, and a mesh's texture."""
    return {
        "preset": plan.params.preset,
        "texture": plan.params.texture if plan.task is Task.mesh else None,
    }


class Outcome(str, Enum):
    """How one job ended."""

    done = "done"
    skipped = "skipped"
    failed = "failed"
    waiting = "waiting"
    interrupted = "interrupted"
    vanished = "vanished"
    canceled = "canceled"
    lost = "lost"  # another worker holds the job now: this one wrote nothing more


@dataclass(frozen=True)
class JobResult:
    """What the report and the status show for one job."""

    inbox: str
    rel: str
    outcome: Outcome
    seconds: float
    message: str = ""
    out_dir: str = ""
    generated: int = 0
    kept: int = 0
    preset: str | None = None  # the preset the job used (None when it could not be planned)
    texture: bool | None = None  # a mesh job's texture setting (None for other tasks)


class ProgressThrottle:
    """Lets a running job's progress reach the job store at most once every ``every``
    seconds, except at image boundaries (``done`` changed) and for notes other than steps.

    The crash-loop rule compares how far claims got, so nothing is thinned until a report
    gets further than ``beyond`` (the point of the claim cut short before this one; without
    one, where this claim started): a claim that gets no further is recorded exactly as far
    as it got, and one that gets further is recorded as such at once.
    """

    def __init__(
        self,
        clock: Clock,
        every: float = PROGRESS_EVERY_S,
        beyond: tuple[int, int] | None = None,
    ) -> None:
        self._clock = clock
        self._every = every
        self._last: tuple[int, float] | None = None
        self._beyond = beyond
        self._crossed = False

    def due(self, done: int, note: str, steps: int = 0) -> bool:
        """Whether this report should be written (each image's step reports are thinned;
        the image written after its last step always is)."""
        now = self._clock()
        last = self._last
        if self._beyond is None:
            self._beyond = (done, 0)  # where this claim started
        if not self._crossed:
            self._crossed = (done, steps) > self._beyond
            self._last = (done, now)
            return True
        if last is None or last[0] != done or not note.startswith("step "):
            self._last = (done, now)
            return True
        if now - last[1] >= self._every:
            self._last = (done, now)
            return True
        return False


@dataclass
class Progress:
    """Callbacks for a progress display: job started, image written, step done."""

    on_start: Callable[[Job, int], None] = field(default=lambda job, total: None)
    on_image: Callable[[Job, int, int], None] = field(default=lambda job, done, total: None)
    on_step: Callable[[Job, int, int], None] = field(default=lambda job, done, total: None)


def planned_files(prepared: Prepared) -> list[PlannedFile]:
    """What a prepared job will make, as the journal lists it (nothing when unplannable)."""
    if prepared.plan is None:
        return []
    return [PlannedFile(f, s) for f, s in prepared.plan.planned_files()]
