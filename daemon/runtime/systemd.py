"""sd_notify for systemd ``Type=notify`` services, over ``$NOTIFY_SOCKET`` with the stdlib only.

Without ``NOTIFY_SOCKET`` (a terminal, Windows, a plain ``dropforge run``) every call is a no-op,
so the service can report unconditionally.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

log = structlog.get_logger("dropforge.notify")


class Notifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1`` and ``STOPPING=1`` to systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_seconds = _watchdog_seconds(env)
        self._warned = False

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False when nobody listens or it failed."""
        family = getattr(socket, "AF_UNIX", None)  # absent on Windows
        if self.address is None or family is None:
            return False
        # A leading "@" names a socket in Linux's abstract namespace.
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall("\n".join(fields).encode("utf-8"))
        except OSError as exc:
            if not self._warned:  # a broken socket must not flood the log every heartbeat
                log.warning("notify.failed", socket=self.address, error=str(exc))
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        """Start-up is complete: the first scan is queued."""
        return self.send("READY=1", _status(status))

    def status(self, text: str) -> bool:
        """Update the one-line status ``systemctl status`` shows."""
        return self.send(_status(text))

    def watchdog(self) -> bool:
        """Tell the watchdog the service is healthy."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        """A stop has begun."""
        return self.send("STOPPING=1", _status(status))


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line: a newline would start a new field


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The heartbeat period systemd expects (``WATCHDOG_USEC``), if it is meant for us."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


@dataclass(frozen=True)
class Health:
    """The result of a health check; systemd's watchdog is fed only while ``ok``."""

    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No problems found."""
        return not self.problems
