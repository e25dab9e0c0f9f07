"""`dropforge run` with the tests' fast fake generator, as a process of its own.

``python -m tests.cluster.daemon_main CONFIG STEP_SECONDS`` runs the real service (watcher,
journal or cluster store, worker, scheduler, signals, JSON logs in ``state_dir/logs``) with
``SolidGenerator`` in place of diffusers, so a test can start, kill -9 and freeze many
daemons in a few seconds each. A prompt saying ``exit at step K`` ends the process there
(``os._exit``), as in ``tests.soak.backends``, for the crash-loop guard across hosts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable

from daemon.app import load_settings
from daemon.config import Settings
from daemon.generators import GenerationEvents, Generator, ImageRequest
from daemon.runtime.logs import configure_logging
from daemon.runtime.pool import on_device, worker_devices
from daemon.runtime.service import Service
from tests.fakes import SolidGenerator
from tests.soak.backends import EXIT_CODE, EXIT_MARK


class ExitingFake(SolidGenerator):
    """The fast fake, except that a prompt saying ``exit at step K`` ends the process there."""

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """Generate; exit at step K of a request whose prompt asks for it."""
        marks = [int(m.group(1)) for s in request.images if (m := EXIT_MARK.search(s.prompt))]
        if marks:
            report = events.on_step

            def on_step(done: int, total: int) -> None:
                report(done, total)  # recorded (or thinned) before the process ends
                if done >= min(marks):
                    os._exit(EXIT_CODE)

            events = dataclasses.replace(events, on_step=on_step)
        super().generate_images(request, events)


def fake_factory(settings: Settings, step_seconds: float) -> Callable[[], Generator]:
    """The fake generator in place of diffusers (module level: worker processes import it)."""
    generator = ExitingFake(step_seconds=step_seconds)
    return lambda: generator


def main(argv: list[str]) -> int:
    """Run until SIGTERM; exit 2 with the message when the settings are refused."""
    config, step_seconds = argv[0], float(argv[1])
    settings = load_settings(config)
    configure_logging("json", level=logging.INFO, logfile=settings.state_dir / "logs" / "d.log")
    devices = worker_devices(settings)
    first = on_device(settings, devices[0])
    try:
        return Service(
            first,
            fake_factory(first, step_seconds),
            extra_devices=devices[1:],
            make_factory=functools.partial(fake_factory, step_seconds=step_seconds),
        ).run()
    except Exception as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
