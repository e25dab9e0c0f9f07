"""Generator backends for crash tests, chosen with ``[daemon] generator = "MODULE:FACTORY"``.

``exiting`` is the real diffusers backend, except that a job whose prompt says ``exit at step
K`` makes the process exit (``os._exit``) as soon as step K of its pipeline call has been
reported: a job that kills the process at the same point every time, as a crashing driver or
a poisonous input would. Every other job runs on the diffusers backend untouched.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

from daemon.config import Settings
from daemon.generators import GenerationEvents, Generator, ImageRequest, MeshRequest, TweenRequest
from daemon.generators.diffusers_backend import DiffusersGenerator

EXIT_MARK = re.compile(r"exit at step (\d+)")
EXIT_CODE = 70  # EX_SOFTWARE: what a crashing process might end with


class ExitingGenerator:
    """The diffusers backend, but a prompt saying ``exit at step K`` ends the process there."""

    def __init__(self, settings: Settings) -> None:
        self._inner = DiffusersGenerator(settings.device, threads=1)

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """Generate; exit at step K of a request whose prompt asks for it."""
        marks = [int(m.group(1)) for s in request.images if (m := EXIT_MARK.search(s.prompt))]
        if marks:
            at = min(marks)
            report = events.on_step

            def on_step(done: int, total: int) -> None:
                report(done, total)  # recorded in the journal before the process ends
                if done >= at:
                    os._exit(EXIT_CODE)

            events = dataclasses.replace(events, on_step=on_step)
        self._inner.generate_images(request, events)

    def generate_mesh(self, request: MeshRequest, events: GenerationEvents) -> dict[str, bytes]:
        """The diffusers backend's mesh."""
        return self._inner.generate_mesh(request, events)

    def generate_tween(self, request: TweenRequest, events: GenerationEvents) -> None:
        """The diffusers backend's tween."""
        self._inner.generate_tween(request, events)

    def device_name(self) -> str:
        """The diffusers backend's device."""
        return self._inner.device_name()

    def unload(self) -> None:
        """Unload the diffusers backend's pipelines."""
        self._inner.unload()

    def loaded_models(self) -> Mapping[str, str]:
        """The diffusers backend's resident models."""
        return self._inner.loaded_models()


def exiting(settings: Settings) -> Generator:
    """The factory ``[daemon] generator = "tests.soak.backends:exiting"`` names."""
    return ExitingGenerator(settings)
