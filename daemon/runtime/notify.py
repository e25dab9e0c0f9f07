"""Notifications through Apprise (ntfy, Gotify, Discord, Slack, e-mail, JSON webhooks …): a job
done, failed, waiting or canceled, and a drop finished — the jobs of one inbox folder, counted
together ("12 of 12 images done in cat/") once none of them is queued, running or waiting.

Sending happens on a thread of its own, so a slow server never holds up a job; apprise is
imported only when ``[notify] urls`` names a server.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from daemon.config import Settings, display_path
from daemon.errors import ConfigError, show_value
from daemon.runtime.worker import JobResult, Outcome
from daemon.store.protocols import JobStore

log = structlog.get_logger("dropforge.notify")

NOUNS = {"image": "images", "prompt": "prompts", "job": "job files"}
_EVENT_OF = {
    Outcome.done: "job_done",
    Outcome.failed: "job_failed",
    Outcome.waiting: "job_waiting",
    Outcome.canceled: "job_canceled",
}
_ENDED = (Outcome.done, Outcome.skipped, Outcome.failed, Outcome.canceled)


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

    def __init__(self, settings: Settings, send: Callable[[Notice], bool] | None = None) -> None:
        self.settings = settings
        self._send = send or apprise_sender(settings)
        self._events = settings.notify.events
        self._drops: dict[tuple[str, str], _Drop] = {}
        self._waits: dict[tuple[str, str], str] = {}  # the last waiting message of each job
        self._queue: queue.SimpleQueue[Notice | None] = queue.SimpleQueue()
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
        drop = self._drops.setdefault((result.inbox, folder), _Drop())
        drop.outcomes[result.outcome] = drop.outcomes.get(result.outcome, 0) + 1
        job = store.get_job(result.inbox, result.rel)
        drop.kinds.add(job.kind if job is not None else "image")
        if store.active_in_folder(result.inbox, folder):
            return
        del self._drops[(result.inbox, folder)]
        self._emit(drop_notice(self.settings, result.inbox, folder, drop))

    def _emit(self, notice: Notice) -> None:
        if notice.event in self._events:
            self._queue.put(notice)

    def _loop(self) -> None:
        while (notice := self._queue.get()) is not None:
            try:
                sent = self._send(notice)
            except Exception:  # a notifier must never take the daemon down
                log.exception("notify.failed", notice=notice.event)
                continue
            if sent:
                log.info("notify.sent", notice=notice.event, title=notice.title)
            else:
                log.warning("notify.failed", notice=notice.event, title=notice.title)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds), then stop."""
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
