"""What may run beside the daemon and stop with it: the web UI (``daemon.ui``), handed to the
service by the command line, so that nothing in ``runtime`` imports the UI."""

from __future__ import annotations

from typing import Protocol


class Companion(Protocol):
    """Something that runs beside the daemon and stops with it (the web UI)."""

    url: str | None  # where people reach it, announced in state_dir/daemon.json

    def start(self) -> None:
        """Start serving (in threads of its own); must not raise for a busy port."""
        ...

    def stop(self, timeout: float) -> None:
        """Stop within ``timeout`` seconds."""
        ...
