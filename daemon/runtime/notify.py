"""Notifications through Apprise (ntfy, Gotify, Discord, Slack, e-mail, JSON webhooks …): a job
done, failed, waiting or canceled, and a drop finished — the jobs of one inbox folder, counted
together ("12 of 12 images done in cat/") once none of them is queued, running or waiting, and
none has arrived for a settle time more (files dropped together settle at slightly different
moments; one slow to be read must not split the drop).

Sending happens on a thread of its own, so a slow server never holds up a job; apprise is
imported only when ``[notify] urls`` names a server.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from daemon.config import Settings, display_path
from daemon.errors import ConfigError, show_value
from daemon.runtime.worker import JobResult, Outcome
from daemon.store.protocols import JobStore
from daemon.values import Clock

log = structlog.get_logger("dropforge.notify")

NOUNS = {"image": "images", "prompt": "prompts", "job": "job files"}
_EVENT_OF = {
    Outcome.done: "job_done",
    Outcome.failed: "job_failed",
    Outcome.waiting: "job_waiting",
    Outcome.canceled: "job_canceled",
}
_ENDED = (Outcome.done, Outcome.skipped, Outcome.failed, Outcome.canceled)
_TICK = object()  # wakes the sending thread to look at the drops' grace times


@dataclass(frozen=True)
class Notice:
    """One message: its event, title and body."""

    event: str
    title: str
    body: str


@dataclass
class _Drop:
    """The jobs of one drop that ended so far, by outcome, and what kinds of input they were."""

    outcomes: dict[Outcome, int] = field(default_factory=dict)
    kinds: set[str] = field(default_factory=set)


def apprise_sender(settings: Settings) -> Callable[[Notice], bool]:
    """Send through every ``[notify] urls`` entry; ConfigError names a URL Apprise refuses."""
    import apprise

    hub = apprise.Apprise()
    for i, url in enumerate(settings.notify.urls, 1):
        if not hub.add(url):
            raise ConfigError(
                f"{settings.config_path.name} [notify]: urls[{i}] is not a URL Apprise can "
                f"use, got {show_value(url)} (see the Apprise wiki for the services' URLs)"
            )
    return lambda notice: bool(hub.notify(title=notice.title, body=notice.body))


class Notices:
    """Turns job results into notices and sends them in the background."""

    def __init__(
        self,
        settings: Settings,
        send: Callable[[Notice], bool] | None = None,
        *,
        grace: float | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self._send = send or apprise_sender(settings)
        self._events = settings.notify.events
        # How long a folder stays quiet before its drop is told finished.
        self._grace = settings.settle_seconds + 1.0 if grace is None else grace
        self._clock = clock
        self._lock = threading.Lock()
        self._drops: dict[tuple[str, str], _Drop] = {}
        self._due: dict[tuple[str, str], float] = {}  # drops whose folder went quiet
        self._store: JobStore | None = None
        self._waits: dict[tuple[str, str], str] = {}  # the last waiting message of each job
        self._queue: queue.SimpleQueue[Notice | object | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="dropforge-notify", daemon=True)
        self._thread.start()

    def job_ended(self, result: JobResult, store: JobStore) -> None:
        """Notice one job's result; a drop's notice once its folder has no active job left."""
        key = (result.inbox, result.rel)
        event = _EVENT_OF.get(result.outcome)
        if result.outcome is Outcome.waiting:
            if self._waits.get(key) == result.message:
                return  # the same reason again after a backoff: said already
            self._waits[key] = result.message
        else:
            self._waits.pop(key, None)
        if event is not None:
            self._emit(self._job_notice(event, result))
        if result.outcome in _ENDED:
            self._drop_progress(result, store)

    def _job_notice(self, event: str, result: JobResult) -> Notice:
        verb = event.removeprefix("job_")
        body = result.message or verb
        if result.outcome is Outcome.done:
            where = display_path(result.out_dir, self.settings) if result.out_dir else ""
            body = f"{result.message} in {result.seconds:.1f} s" + (f" → {where}" if where else "")
        return Notice(event, f"dropforge: {result.rel} {verb}", body)

    def _drop_progress(self, result: JobResult, store: JobStore) -> None:
        folder = result.rel[: result.rel.rfind("/") + 1]
        key = (result.inbox, folder)
        job = store.get_job(result.inbox, result.rel)
        active = store.active_in_folder(result.inbox, folder)
        with self._lock:
            self._store = store
            drop = self._drops.setdefault(key, _Drop())
            drop.outcomes[result.outcome] = drop.outcomes.get(result.outcome, 0) + 1
            drop.kinds.add(job.kind if job is not None else "image")
            if active:
                self._due.pop(key, None)
                return
            self._due[key] = self._clock() + self._grace
        self._queue.put(_TICK)

    def _flush(self, *, everything: bool = False) -> None:
        """Tell the drops whose folder stayed quiet through the grace time (all, at close)."""
        now = self._clock()
        with self._lock:
            store = self._store
            due = [k for k, t in self._due.items() if everything or t <= now]
        for key in due:
            if not everything and store is not None and store.active_in_folder(*key):
                with self._lock:
                    self._due.pop(key, None)  # a new job of the drop: it goes on
                continue
            with self._lock:
                self._due.pop(key, None)
                drop = self._drops.pop(key, None)
            if drop is not None:
                self._emit(drop_notice(self.settings, key[0], key[1], drop))

    def _next_due(self) -> float | None:
        with self._lock:
            return min(self._due.values(), default=None)

    def _emit(self, notice: Notice) -> None:
        if notice.event in self._events:
            self._queue.put(notice)

    def _loop(self) -> None:
        while True:
            due = self._next_due()
            timeout = None if due is None else max(0.0, due - self._clock())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = _TICK
            if item is None:
                return
            if item is _TICK:
                self._flush()
                continue
            assert isinstance(item, Notice)
            try:
                sent = self._send(item)
            except Exception:  # a notifier must never take the daemon down
                log.exception("notify.failed", notice=item.event)
                continue
            if sent:
                log.info("notify.sent", notice=item.event, title=item.title)
            else:
                log.warning("notify.failed", notice=item.event, title=item.title)

    def close(self, timeout: float = 5.0) -> None:
        """Tell the drops still in their grace time, send what is queued (waiting at most
        ``timeout`` seconds), then stop."""
        self._flush(everything=True)
        self._queue.put(None)
        self._thread.join(timeout)


def drop_notice(settings: Settings, inbox: str, folder: str, drop: _Drop) -> Notice:
    """ "12 of 12 images done in cat/" (with what failed or was canceled)."""
    counts: dict[Outcome, int] = drop.outcomes
    total = sum(counts.values())
    done = counts.get(Outcome.done, 0) + counts.get(Outcome.skipped, 0)
    noun = NOUNS.get(next(iter(drop.kinds)), "inputs") if len(drop.kinds) == 1 else "inputs"
    where = folder or (display_path(inbox, settings).rstrip("/") + "/")
    body = f"{done} of {total} {noun} done in {where}"
    extra = [f"{counts[o]} {o.value}" for o in (Outcome.failed, Outcome.canceled) if counts.get(o)]
    if extra:
        body += " (" + ", ".join(extra) + ")"
    return Notice("drop_done", f"dropforge: {where} finished", body)


def notices_for(settings: Settings) -> Notices | None:
    """The notifier of these settings, or None when ``[notify] urls`` is empty."""
    return Notices(settings) if settings.notify.urls else None
