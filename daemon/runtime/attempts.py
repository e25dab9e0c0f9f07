"""How far the running claim of a job gets, as the journal records it for the crash-loop rule.

``AttemptTracker`` turns a task's progress into the claim's furthest point (outputs finished,
then denoising steps since the last one) and its stage before the first step;
``TrackedGenerator`` wraps the generator a task is handed so that the tracker knows when a
model is being loaded and when it is resident. A model that has loaded on this host before is
remembered by its source, the device and its files' stats (``model_signature``): a process
that dies while loading it again was not killed by the job (``store.attempts``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from daemon.generators import (
    GenerationEvents,
    Generator,
    ImageRequest,
    MeshRequest,
    TweenRequest,
)
from daemon.outputs.manifest_fields import AttemptRecord
from daemon.store.attempts import describe_attempts
from daemon.store.protocols import Journal
from daemon.store.rows import Attempt, Job
from daemon.values import AttemptEnd, AttemptStage, ModelSource


def model_signature(model: ModelSource, device: str) -> str:
    """What a model that loaded here is remembered by: its source, the device setting and the
    size and modification time of its files (a hub id: the source alone)."""
    listing: list[str] = []
    if model.kind in ("folder", "file"):
        root = Path(model.ref)
        paths = [root] if model.kind == "file" else sorted(p for p in root.rglob("*"))
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            if not path.is_dir():
                listing.append(f"{path.relative_to(root.parent)}:{st.st_size}:{st.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]
    return f"{model.describe()} on {device} ({digest})"


class AttemptTracker:
    """Records the furthest point of one claim and its stage; feeds the progress display.

    ``noted`` is shared by the worker's trackers: the models whose load this process has
    already recorded, so that a load is written to the journal once per process. Every write
    names the job's claim; ``on_lost`` is called (and raises) when one is refused.
    """

    def __init__(
        self,
        journal: Journal,
        job: Job,
        device: str,
        noted: set[str],
        *,
        on_image: Callable[[int, int], None],
        on_step: Callable[[int, int], None],
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._journal = journal
        self._job_id = job.id
        self._claim = job.claim
        self._on_lost = on_lost
        self._device = device
        self._noted = noted
        self._on_image = on_image
        self._on_step = on_step
        self._loading: str | None = None  # the signature of the model being loaded
        self.steps = 0  # denoising steps since the last output was finished

    def record(
        self, done: int, total: int, note: str, *, finished: Iterable[int] | None = None
    ) -> None:
        """Store the progress (and the planned outputs ``finished``, when they changed) and,
        when it is further, the claim's furthest point."""
        if not self._journal.set_progress(
            self._job_id, done, total, note, finished=finished, steps=self.steps, claim=self._claim
        ):
            self._on_lost()

    def image(self, done: int, total: int) -> None:
        """An output was finished: the step count starts again."""
        self.steps = 0
        self._on_image(done, total)

    def step(self, step: int, steps: int) -> None:
        """A denoising step finished (which also means the model is loaded)."""
        self.ready()
        self.steps += 1
        self._on_step(step, steps)

    def loading(self, model: ModelSource) -> None:
        """A generator call is about to load ``model`` (or find it resident)."""
        signature = model_signature(model, self._device)
        self._loading = signature
        known = signature in self._noted or self._journal.model_loaded(signature)
        stage = AttemptStage.loading if known else AttemptStage.first_load
        self._stage(stage)

    def ready(self) -> None:
        """The model being loaded is resident: remember it loads here; the job takes over."""
        signature, self._loading = self._loading, None
        if signature is None:
            return
        if signature not in self._noted:
            self._journal.note_model_loaded(signature)
            self._noted.add(signature)
        self._stage(AttemptStage.generating)

    def _stage(self, stage: AttemptStage) -> None:
        if not self._journal.set_stage(self._job_id, stage, claim=self._claim):
            self._on_lost()


class TrackedGenerator:
    """The generator a task is handed: tells the tracker when a model loads and is ready."""

    def __init__(self, generator: Callable[[], Generator], tracker: AttemptTracker) -> None:
        self._generator = generator
        self._tracker = tracker

    def _events(self, events: GenerationEvents) -> GenerationEvents:
        def on_ready() -> None:
            self._tracker.ready()
            events.on_ready()

        return dataclasses.replace(events, on_ready=on_ready)

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """``Generator.generate_images``, tracked."""
        self._tracker.loading(request.model)
        self._generator().generate_images(request, self._events(events))

    def generate_mesh(self, request: MeshRequest, events: GenerationEvents) -> dict[str, bytes]:
        """``Generator.generate_mesh``, tracked."""
        self._tracker.loading(request.model)
        return self._generator().generate_mesh(request, self._events(events))

    def generate_tween(self, request: TweenRequest, events: GenerationEvents) -> None:
        """``Generator.generate_tween``, tracked."""
        self._tracker.loading(request.model)
        self._generator().generate_tween(request, self._events(events))

    def device_name(self) -> str:
        """``Generator.device_name``."""
        return self._generator().device_name()

    def unload(self) -> None:
        """``Generator.unload``."""
        self._generator().unload()

    def loaded_models(self) -> Mapping[str, str]:
        """``Generator.loaded_models``."""
        return self._generator().loaded_models()


def earlier_attempts(history: list[Attempt], number: int) -> tuple[AttemptRecord, ...]:
    """The claims before claim ``number`` as the manifest records them."""
    lines = dict(zip((a.number for a in history), describe_attempts(history), strict=True))
    return tuple(
        AttemptRecord(
            attempt=a.number,
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.started_at)),
            ended=a.ended.value,
            stage=a.stage.value,
            outputs=a.outputs,
            total=a.total,
            steps=a.steps,
            counted=a.counted,
            summary=lines[a.number].split(": ", 1)[1],
        )
        for a in history
        if a.number < number and a.ended is not AttemptEnd.running
    )
