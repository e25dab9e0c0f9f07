"""Test support for watch mode: a fast fake Generator, a service runner and a waiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from structlog.testing import capture_logs

from daemon.config import load_config
from daemon.errors import Interrupted, TransientError
from daemon.generators import GenerationEvents, ImageRequest, MeshRequest, TweenRequest
from daemon.notify import Notifier
from daemon.service import Service
from daemon.worker import JobResult, Outcome


@dataclass
class SolidGenerator:
    """Makes solid-colour images (colour from the seed), stepping through ``steps`` like a model.

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
            failure, self.fail_with = self.fail_with, None
            self._loaded[request.model.alias] = request.model.describe()
        if failure is not None:
            raise failure
        for spec in request.images:
            for step in range(1, spec.steps + 1):
                if self.gate is not None:
                    self.gate.wait(30)
                if events.should_stop():
                    raise Interrupted("stop requested")
                if self.step_seconds:
                    self._pause.wait(self.step_seconds)
                events.on_step(step, spec.steps)
            colour = (spec.seed % 256, (spec.seed // 256) % 256, 128)
            events.on_image(spec.index, Image.new("RGB", (request.width, request.height), colour))

    def generate_mesh(self, request: MeshRequest, events: GenerationEvents) -> dict[str, bytes]:
        """Not used by these tests."""
        raise TransientError("the fake generator makes no meshes")

    def generate_tween(self, request: TweenRequest, events: GenerationEvents) -> None:
        """Not used by these tests."""
        raise TransientError("the fake generator makes no tweens")

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
