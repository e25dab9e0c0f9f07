"""The progress bar of `dropforge once` (rich), fed by the worker's callbacks."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from daemon.runtime.worker import Progress as WorkerProgress
from daemon.store.rows import Job


class ProgressDisplay:
    """Two bars on stderr: jobs done of planned, and the current job's images and steps."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
            transient=True,
        )
        self._jobs: TaskID | None = None
        self._current: TaskID | None = None
        self._done_jobs = 0

    def __enter__(self) -> ProgressDisplay:
        self._progress.__enter__()
        self._jobs = self._progress.add_task("jobs", total=None, note="")
        self._current = self._progress.add_task("", total=None, note="", visible=False)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def set_total(self, total: int) -> None:
        """Called once the scan knows how many jobs will run."""
        if self._jobs is not None:
            self._progress.update(self._jobs, total=total)

    def callbacks(self) -> WorkerProgress:
        """The worker-side hooks updating this display."""
        return WorkerProgress(on_start=self._start, on_image=self._image, on_step=self._step)

    def _start(self, job: Job, total: int) -> None:
        if self._current is None or self._jobs is None:
            return
        if self._done_jobs:
            self._progress.advance(self._jobs)
        self._done_jobs += 1
        self._progress.update(
            self._current, description=job.input, total=total, completed=0, visible=True, note=""
        )

    def _image(self, job: Job, done: int, total: int) -> None:
        if self._current is not None:
            self._progress.update(self._current, completed=done, total=total)

    def _step(self, job: Job, step: int, steps: int) -> None:
        if self._current is not None:
            self._progress.update(self._current, note=f"step {step}/{steps}")
