"""Test support: a fast fake Generator, out-of-memory injection, a service runner and a waiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from structlog.testing import capture_logs

from daemon.config import load_config
from daemon.errors import Interrupted
from daemon.generators import GenerationEvents, ImageRequest, MeshRequest, TweenRequest
from daemon.generators.mesh import export
from daemon.generators.subdivision import plan_levels
from daemon.runtime.service import Service
from daemon.runtime.systemd import Notifier
from daemon.runtime.worker import JobResult, Outcome
from daemon.values import ModelSource


@dataclass
class SolidGenerator:
    """Makes solid-colour images (colour from the seed), stepping through ``steps`` like a model.

    Tween frames are blends of the start and end images; meshes are a small icosphere in the
    seed's colour, in each requested format. Steps count over the whole request.
    ``step_seconds`` simulates compute per step (waiting on an event, so a stop cuts it
    short); ``fail_with`` is raised by the next call, once; ``gate`` blocks the first step
    until it is set, so a test can hold a job mid-way.
    """

    step_seconds: float = 0.0
    fail_with: Exception | None = None
    gate: threading.Event | None = None
    requests: list[ImageRequest] = field(default_factory=list)
    unloads: int = 0
    _loaded: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pause: threading.Event = field(default_factory=threading.Event)

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """Report one solid image per spec after its steps; honour stop requests per step."""
        with self._lock:
            self.requests.append(request)
        self._start(request.model)
        events.on_ready()
        total = sum(spec.steps for spec in request.images)
        done = 0
        for spec in request.images:
            for _ in range(spec.steps):
                done += 1
                self._step(events, done, total)
            colour = _seed_colour(spec.seed)
            events.on_image(spec.index, Image.new("RGB", (request.width, request.height), colour))

    def generate_mesh(self, request: MeshRequest, events: GenerationEvents) -> dict[str, bytes]:
        """Return an icosphere in the seed's colour in each format, after ``steps`` steps."""
        import trimesh

        self._start(request.model)
        events.on_ready()
        for done in range(1, request.steps + 1):
            self._step(events, done, request.steps)
        mesh = trimesh.creation.icosphere(subdivisions=1)
        mesh.visual.vertex_colors = (*_seed_colour(request.seed), 255)
        return export(mesh, request.formats, texture=request.texture, name=request.name)

    def generate_tween(self, request: TweenRequest, events: GenerationEvents) -> None:
        """Report each frame to make, level by level, as the start blended into the end at t."""
        self._start(request.model)
        events.on_ready()
        size = (request.width, request.height)
        start, end = (im.convert("RGB").resize(size) for im in (request.start, request.end))
        frames = [
            t
            for level in plan_levels(request.depth, request.times_needed, request.existing)
            for t in level
        ]
        total = request.steps * len(frames)
        done = 0
        for t in frames:
            for _ in range(request.steps):
                done += 1
                self._step(events, done, total)
            events.on_frame(t, Image.blend(start, end, t))

    def device_name(self) -> str:
        """A fixed name."""
        return "fake"

    def unload(self) -> None:
        """Forget the 'loaded' models and count the call."""
        with self._lock:
            self._loaded.clear()
            self.unloads += 1

    def loaded_models(self) -> Mapping[str, str]:
        """The aliases used since the last unload."""
        with self._lock:
            return dict(self._loaded)

    def inputs_seen(self) -> list[tuple[int, int, int]]:
        """Every request's first seed, image count and steps, in call order."""
        with self._lock:
            return [(r.images[0].seed, len(r.images), r.images[0].steps) for r in self.requests]

    def _start(self, model: ModelSource) -> None:
        """'Load' ``model``; raise ``fail_with`` if a test set it."""
        with self._lock:
            failure, self.fail_with = self.fail_with, None
            self._loaded[model.alias] = model.describe()
        if failure is not None:
            raise failure

    def _step(self, events: GenerationEvents, done: int, total: int) -> None:
        """Wait at the gate, honour a stop request, spend ``step_seconds``, report the step."""
        if self.gate is not None:
            self.gate.wait(30)
        if events.should_stop():
            raise Interrupted("stop requested")
        if self.step_seconds:
            self._pause.wait(self.step_seconds)
        events.on_step(done, total)


def _seed_colour(seed: int) -> tuple[int, int, int]:
    return (seed % 256, (seed // 256) % 256, 128)


OUT_OF_MEMORY = "out of memory"
EVERY_CALL: Container[int] = range(1, 1 << 30)


@dataclass
class PipelineCalls:
    """The pipeline calls of a request as seen through its events; some run out of memory.

    A call starts with its first step report and ends when it delivers its images (or
    frames), each call's entry listing their indices (or times). The calls numbered (from 1)
    in ``out_of_memory`` raise torch's OutOfMemoryError from their first step instead: the
    step report runs inside the pipeline call, where a real one surfaces. Their entry is
    ``OUT_OF_MEMORY``.
    """

    out_of_memory: Container[int] = ()
    calls: list[list[Any] | str] = field(default_factory=list)
    _running: bool = False

    def step(self) -> None:
        """Note a step report; start a call, or run out of memory, at a call's first step."""
        if self._running:
            return
        self.calls.append([])
        if len(self.calls) in self.out_of_memory:
            import torch

            self.calls[-1] = OUT_OF_MEMORY
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self._running = True

    def deliver(self, key: Any) -> None:
        """Note an image index or frame time delivered by the running call."""
        entry = self.calls[-1]
        assert isinstance(entry, list), "a delivery without a running call"
        entry.append(key)
        self._running = False


def wait_until(
    condition: Callable[[], object], timeout: float = 20.0, message: str = "condition"
) -> None:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.02)


@dataclass
class RunningService:
    """A Service running ``run()`` on a thread, with the results of its jobs."""

    service: Service
    generator: SolidGenerator
    results: list[JobResult]
    thread: threading.Thread

    def outcomes(self) -> list[tuple[str, Outcome]]:
        """(input, outcome) of every job run so far, in order."""
        return [(r.rel, r.outcome) for r in list(self.results)]

    def rescan(self) -> dict[str, Any]:
        """Ask the watcher for a full rescan; return its ``scan.finished`` log event."""
        assert self.service.watcher is not None
        with capture_logs() as logs:
            self.service.watcher.request_rescan()
            wait_until(lambda: any(e["event"] == "scan.finished" for e in logs), message="rescan")
        return next(e for e in logs if e["event"] == "scan.finished")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully and wait for run() to return."""
        if self.thread.is_alive():
            self.service.request_stop("test finished")
            self.thread.join(timeout)
        assert not self.thread.is_alive(), "the service did not stop"


Launch = Callable[..., RunningService]


def start_service(
    config: Path, generator: SolidGenerator | None = None, **options: Any
) -> RunningService:
    """Start a Service on ``config`` with a fake generator; return once its first scan is done."""
    settings = load_config(config)
    fake = generator or SolidGenerator()
    results: list[JobResult] = []
    options.setdefault("notifier", Notifier({}))
    service = Service(settings, lambda: fake, on_result=results.append, **options)
    thread = threading.Thread(target=service.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    # The scheduler starts just after the watcher, whose first scan can finish before it.
    wait_until(
        lambda: (
            service.watcher is not None
            and service.watcher.ready.is_set()
            and service.scheduler is not None
        ),
        30,
        "first scan",
    )
    return RunningService(service, fake, results, thread)


def launch_services() -> Iterator[Launch]:
    """The body of the ``launch`` fixture: start services, stop every one after the test."""
    started: list[RunningService] = []

    def go(config: Path, **options: Any) -> RunningService:
        running = start_service(config, **options)
        started.append(running)
        return running

    yield go
    for running in started:
        gate = getattr(running.generator, "gate", None)
        if gate is not None:  # a test that held its job mid-way lets it go
            gate.set()
        running.stop()
