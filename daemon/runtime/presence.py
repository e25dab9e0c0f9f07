"""Whether a daemon runs on this state_dir: ``state_dir/daemon.json``, written when
`dropforge run` (or `serve`) has started and removed when it stops, names its process and its
web UI. A file left by a killed process names a process that is gone: read as not running.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from daemon.config import Settings
from daemon.errors import DropforgeError
from daemon.outputs.files import TEMP_MARKER, atomic_write_bytes
from daemon.runtime.recovery import owner_alive

log = structlog.get_logger("dropforge.service")

PRESENCE_NAME = "daemon.json"


@dataclass(frozen=True)
class Presence:
    """A daemon process on this state_dir: what it is and where its web UI listens."""

    owner: str  # host:pid, as in job leases
    pid: int
    command: str  # "run" or "serve"
    started_at: float
    ui: str | None = None  # the web UI's address, e.g. http://127.0.0.1:8650/

    @property
    def alive(self) -> bool:
        """Whether the process still runs (another host's: assumed to)."""
        return owner_alive(self.owner) or self.pid == os.getpid()


def presence_path(settings: Settings) -> Path:
    """``state_dir/daemon.json``."""
    return settings.state_dir / PRESENCE_NAME


def write_presence(settings: Settings, presence: Presence) -> bool:
    """Announce a running daemon (atomically: a reader never sees half a file); False when
    it cannot be written (a full disk): the daemon runs on, `status` just cannot tell."""
    text = json.dumps(asdict(presence), indent=2) + "\n"
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        # A daemon killed while writing it left its temporary: one daemon per state_dir.
        for stale in settings.state_dir.glob(f".{PRESENCE_NAME}{TEMP_MARKER}*"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        atomic_write_bytes(presence_path(settings), text.encode("utf-8"))
    except (OSError, DropforgeError) as exc:
        log.warning("presence.unwritable", error=str(exc))
        return False
    return True


def clear_presence(settings: Settings, owner: str) -> None:
    """Remove the announcement, if it is this process's (a newer daemon's is kept)."""
    found = read_presence(settings)
    if found is not None and found.owner == owner:
        with contextlib.suppress(FileNotFoundError):
            presence_path(settings).unlink()


def read_presence(settings: Settings) -> Presence | None:
    """The last daemon announced on this state_dir (check ``alive``), or None."""
    try:
        data = json.loads(presence_path(settings).read_text(encoding="utf-8"))
        return Presence(
            owner=str(data["owner"]),
            pid=int(data["pid"]),
            command=str(data["command"]),
            started_at=float(data["started_at"]),
            ui=str(data["ui"]) if data.get("ui") else None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_daemon(settings: Settings) -> Presence | None:
    """The `dropforge run` process generating on this state_dir, or None."""
    found = read_presence(settings)
    return found if found is not None and found.command == "run" and found.alive else None
