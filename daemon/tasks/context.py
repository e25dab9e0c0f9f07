"""What a task is handed: the prepared job to plan or run, and a ``JobContext`` of narrow values
(settings, generator, stop check, clock, progress sink, space check) instead of the worker."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from daemon.config import Settings
from daemon.errors import InputError
from daemon.generators import Generator
from daemon.intake.candidates import Candidate
from daemon.outputs.manifest_fields import AttemptRecord
from daemon.planning.inputs import Hasher
from daemon.planning.keys import failure_key
from daemon.planning.model import Dependency, Plan, PlanInput
from daemon.values import CancelReason, Clock, ModelSource


@dataclass(frozen=True)
class Prepared:
    """The outcome of preparing a candidate: a plan, or the error a user must fix."""

    candidate: Candidate
    fingerprint: str
    deps: tuple[Dependency, ...]
    out_dir: Path
    plan: Plan | None = None
    error: InputError | None = None

    @property
    def job_key(self) -> str:
        """The plan's key, or a key derived from the error for unplannable inputs."""
        if self.plan is not None:
            return self.plan.job_key
        return failure_key(self.deps, str(self.error))


@dataclass(frozen=True)
class Draft:
    """What a task's planner starts from: the validated input and the means to find more.

    A planner that depends on more files (a tween's endpoints) hashes them with ``hasher`` and
    appends them to ``deps``, so that they enter the job's fingerprint.
    """

    hasher: Hasher
    candidate: Candidate
    deps: list[Dependency]
    sidecar_display: str  # the file a parameter error names: the innermost sidecar
    input: PlanInput


def _ignore_finished(indices: Iterable[int]) -> None:
    return None


def _not_canceled() -> CancelReason | None:
    return None


def _always_ready(alias: str) -> bool:
    return True


@dataclass(frozen=True)
class JobProgress:
    """Where a running job reports how far it has come.

    ``record(done, total, note)`` stores it for ``dropforge status`` and as the furthest point
    of the claim; ``on_image(done, total)`` and ``on_step(step, steps)`` feed a progress
    display and the health check, and count the steps since the last output, so they come
    before the record of the same event; ``finish(indices)`` notes planned outputs finished
    (kept or written), recorded with the next ``record``, so that the web UI can fill in their
    tiles.
    """

    record: Callable[[int, int, str], None]
    on_image: Callable[[int, int], None]
    on_step: Callable[[int, int], None]
    finish: Callable[[Iterable[int]], None] = field(default=_ignore_finished)

    def image(self, done: int, total: int, note: str, index: int | None = None) -> None:
        """An output (planned output ``index``) was written: show it and record it."""
        if index is not None:
            self.finish((index,))
        self.on_image(done, total)
        self.record(done, total, note)

    def step(self, done: int, total: int, step: int, steps: int, *, record: bool = True) -> None:
        """A denoising step finished: show it and record it (unless the step of the pipeline
        call is recorded instead, see ``steps``)."""
        self.on_step(step, steps)
        if record:
            self.record(done, total, f"step {step}/{steps}")

    def steps(self, done: Callable[[], int], total: Callable[[], int]) -> StepEvents:
        """The ``on_step`` and ``on_call_step`` a task hands its backend: each step is counted,
        then recorded, with the step of the running pipeline call (one batch of images or
        frames) when the backend reports it, else with the step over the whole request."""
        return StepEvents(self, done, total)


@dataclass
class StepEvents:
    """A task's step callbacks: ``on_call_step`` (reported first by a backend that knows its
    pipeline calls) is remembered; ``on_step`` counts the step and then records it, so the
    record of a step always includes it, even if the process ends right after."""

    progress: JobProgress
    done: Callable[[], int]
    total: Callable[[], int]
    call: tuple[int, int] | None = None

    def on_call_step(self, step: int, steps: int) -> None:
        """Step ``step`` of the ``steps`` of the running pipeline call."""
        self.call = (step, steps)

    def on_step(self, step: int, steps: int) -> None:
        """Step ``step`` of ``steps`` over the whole request: count it, record it."""
        call = self.call
        self.progress.step(self.done(), self.total(), step, steps, record=call is None)
        if call is not None:
            self.progress.record(self.done(), self.total(), f"step {call[0]}/{call[1]}")


@dataclass(frozen=True)
class JobContext:
    """Everything a task's ``run`` may use besides its plan."""

    settings: Settings
    generator: Callable[[], Generator]  # created (and torch imported) on first call
    device_name: Callable[[], str]  # for the manifest; "none" while no generator exists
    should_stop: Callable[[], bool]
    clock: Clock
    progress: JobProgress
    check_space: Callable[[Path], None]  # raises DiskFull below min_free_mb
    log: Any  # a structlog logger bound to the job
    # Why this job is being canceled, or None: should_stop() is then True because of a cancel,
    # not a shutdown, and the task writes a canceled manifest listing what it finished.
    cancel_reason: Callable[[], CancelReason | None] = field(default=_not_canceled)
    model_ready: Callable[[str], bool] = field(default=_always_ready)  # alias is resident
    attempts: tuple[AttemptRecord, ...] = ()  # earlier claims of the job, for the manifest

    def generator_for(self, model: ModelSource, done: int, total: int) -> Generator:
        """The generator, noting ``loading model ALIAS`` in the progress first when the model
        is not resident (creating the backend and loading weights take a while)."""
        if not self.model_ready(model.alias):
            self.progress.record(done, total, f"loading model {model.alias}")
        return self.generator()


@dataclass(frozen=True)
class TaskRun:
    """How much a task's run made: outputs generated, outputs kept, notes for the manifest."""

    generated: int
    kept: int
    notes: tuple[str, ...] = ()


class TaskKind(Protocol):
    """One task type: how its jobs are planned and how they are run."""

    def plan(self, draft: Draft) -> Plan:
        """Build the plan of one input; raise InputError naming file, key, rule and value."""
        ...

    def run(self, ctx: JobContext, prepared: Prepared, force: bool, started: float) -> TaskRun:
        """Make what ``prepared.plan`` lists, write its manifest last, and say how much was made.

        Raises InputError (the input cannot be used), TransientError (a cause outside the
        input) or Interrupted (``ctx.should_stop()``).
        """
        ...
