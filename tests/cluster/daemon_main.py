"""`dropforge run` with the tests' fast fake generator, as a process of its own.

``python -m tests.cluster.daemon_main CONFIG STEP_SECONDS`` runs the real service (watcher,
journal or cluster store, worker, scheduler, signals, JSON logs in ``state_dir/logs``) with
``SolidGenerator`` in place of diffusers, so a test can start, kill -9 and freeze many
daemons in a few seconds each.
"""

from __future__ import annotations

import logging
import sys

from daemon.app import load_settings
from daemon.runtime.logs import configure_logging
from daemon.runtime.service import Service
from tests.fakes import SolidGenerator


def main(argv: list[str]) -> int:
    """Run until SIGTERM; exit 2 with the message when the settings are refused."""
    config, step_seconds = argv[0], float(argv[1])
    settings = load_settings(config)
    configure_logging("json", level=logging.INFO, logfile=settings.state_dir / "logs" / "d.log")
    generator = SolidGenerator(step_seconds=step_seconds)
    try:
        return Service(settings, lambda: generator).run()
    except Exception as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
