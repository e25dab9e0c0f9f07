"""The live stream: one thread watches the journal's revision (a handle of its own that only
reads) and, while a page is open, rebuilds the page's snapshot when it moved (at most four
times a second: a running job writes its progress at every step) or once a second for the
clocks; every open page receives it as a server-sent event. The stream ends when the UI
stops. With no page open the UI costs the daemon nothing but one revision read per poll."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

from daemon.config import Settings
from daemon.store.open import open_journal
from daemon.ui.snapshot import snapshot
from daemon.values import Clock

log = structlog.get_logger("dropforge.ui")

POLL_S = 0.1  # how often the journal's revision is read
MIN_REBUILD_S = 0.25  # the snapshot is rebuilt at most this often
REFRESH_S = 1.0  # and at least this often while a page is open (seconds so far, retry in)
SEND_POLL_S = 0.05  # how often an open stream looks for a new snapshot
KEEPALIVE_S = 15.0


class Broadcaster(threading.Thread):
    """Keeps the latest snapshot, numbered, for every open stream."""

    def __init__(self, settings: Settings, stop: threading.Event, *, clock: Clock = time.time):
        super().__init__(name="dropforge-ui-stream", daemon=True)
        self.settings = settings
        self.halt = stop
        self._clock = clock
        self.version = 0
        self.payload = "{}"
        self.changed_at = 0.0  # monotonic time of the journal change behind ``payload``
        self.ready = threading.Event()
        self.listeners = 0  # open streams; nothing is rebuilt while there are none
        self.builds = 0  # snapshots built so far (an unchanged one too)
        self._demand = False  # a stream opened: build a fresh snapshot at once
        self._lock = threading.Lock()

    def listen(self, delta: int) -> None:
        """A stream opened (+1: it gets a snapshot built after it opened) or closed (-1)."""
        with self._lock:
            self.listeners += delta
            self._demand = self._demand or delta > 0

    def run(self) -> None:
        """Rebuild the snapshot on every journal change (and each second) until stopped."""
        with open_journal(self.settings, clock=self._clock) as journal:
            last_revision: int | None = None
            last_build = 0.0
            while not self.halt.is_set():
                try:
                    revision = journal.revision()
                    now = time.monotonic()
                    due = revision != last_revision and now - last_build >= MIN_REBUILD_S
                    if self.listeners and (due or self._demand or now - last_build >= REFRESH_S):
                        self._demand = False
                        data = snapshot(self.settings, journal, now=self._clock())
                        self.publish(data, now if revision != last_revision else None)
                        last_revision, last_build = revision, now
                        self.ready.set()
                except Exception:  # e.g. the journal busy for too long: try again
                    log.exception("ui.snapshot_failed")
                self.halt.wait(POLL_S)

    def publish(self, data: dict[str, Any], changed_at: float | None) -> None:
        """Make ``data`` the snapshot every stream sends next."""
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        if text != self.payload:
            if changed_at is not None:
                self.changed_at = changed_at
            self.payload = text
            self.version += 1
        self.builds += 1


async def events(broadcaster: Broadcaster, is_stopped: Callable[[], bool]) -> AsyncIterator[str]:
    """Server-sent events: a ``snapshot`` event whenever the snapshot changed, a comment now
    and then to keep proxies from closing the stream, and the end when the UI stops."""
    sent = -1
    quiet_since = time.monotonic()
    joined = broadcaster.builds
    broadcaster.listen(+1)
    try:
        yield "retry: 1000\n\n"
        while not is_stopped():
            if broadcaster.version != sent and broadcaster.builds > joined:
                sent = broadcaster.version
                quiet_since = time.monotonic()
                yield f"event: snapshot\ndata: {broadcaster.payload}\n\n"
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(SEND_POLL_S)
        yield "event: closed\ndata: {}\n\n"
    finally:
        broadcaster.listen(-1)
