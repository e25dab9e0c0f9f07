"""watchdog observers, one per inbox: native events, polling when configured or as the fallback.

Observers' threads never do more than hand a path over (``InboxEventHandler``); they follow
inbox folders that vanish, come back or are replaced by a share mounted again.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from daemon.config import InboxConfig

log = structlog.get_logger("dropforge.watch")


_SKIPPED_EVENTS = frozenset({"opened", "closed_no_write"})


class InboxEventHandler(FileSystemEventHandler):
    """Forwards an inbox's events as paths; an error is logged and never stops the observer."""

    def __init__(self, index: int, sink: Callable[[int, str, bool], None]) -> None:
        self._index = index
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        """Queue the paths an event concerns (both ends of a move: a rename is an arrival)."""
        try:
            if event.event_type in _SKIPPED_EVENTS:
                return
            if event.is_directory and event.event_type == "modified":
                return
            for raw in (event.src_path, event.dest_path):
                if raw:
                    self._sink(self._index, os.fsdecode(raw), event.is_directory)
        except Exception:
            log.exception("watch.handler_failed", kind=event.event_type, path=str(event.src_path))


def native_observer() -> BaseObserver:
    """The platform's event observer (inotify, FSEvents, ReadDirectoryChangesW)."""
    from watchdog.observers import Observer

    return Observer()


def polling_observer(interval: float) -> BaseObserver:
    """An observer that lists folders every ``interval`` seconds (network shares)."""
    from watchdog.observers.polling import PollingObserver

    return PollingObserver(timeout=interval)


def observer_alive(observer: BaseObserver) -> bool:
    """Whether an observer and every one of its emitters still run."""
    return observer.is_alive() and all(e.is_alive() for e in observer.emitters)


# (device, inode, is a mount point): a share unmounted or mounted again changes it, and an
# observer keeps watching the folder it started on, so it must be started afresh.
FolderIdentity = tuple[int, int, bool]


def folder_identity(path: str) -> FolderIdentity | None:
    """The identity of the folder at ``path``; None when there is no folder there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    return st.st_dev, st.st_ino, os.path.ismount(path)


@dataclass
class _Watch:
    root: str
    recursive: bool
    poll: bool  # configured: poll = true
    observer: BaseObserver | None = None
    polling: bool = False  # configured, or fallen back to
    missing_logged: bool = False  # the folder is gone (or its share unmounted): warned once
    identity: FolderIdentity | None = None  # of the folder the observer watches


class Observers:
    """One observer per inbox: native events, polling when configured or as the fallback."""

    def __init__(
        self,
        inboxes: Sequence[InboxConfig],
        sink: Callable[[int, str, bool], None],
        *,
        native: Callable[[], BaseObserver] = native_observer,
        poll_interval: float = 1.0,
    ) -> None:
        self._watches = [_Watch(str(i.path), i.recursive, i.poll) for i in inboxes]
        self._sink = sink
        self._native = native
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        """Start an observer for every inbox folder that exists."""
        with self._lock:
            for index, watch in enumerate(self._watches):
                self._start(index, watch)

    def stop(self, timeout: float) -> None:
        """Stop every observer, waiting at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopped = True
            observers = [w.observer for w in self._watches if w.observer is not None]
        for observer in observers:
            observer.stop()
        for observer in observers:
            if observer.is_alive():
                observer.join(max(0.0, deadline - time.monotonic()))

    def ensure(self) -> bool:
        """Follow the inbox folders: stop watching vanished ones (a warning), start observers
        on folders that appeared, came back or were replaced (a share mounted again), and
        replace dead observers with polling ones; True if any observer started."""
        started = False
        with self._lock:
            if self._stopped:
                return False
            for index, watch in enumerate(self._watches):
                identity = folder_identity(watch.root)
                gone = identity is None or (
                    watch.identity is not None and watch.identity[2] and not identity[2]
                )
                if gone:
                    self._lose(watch, identity)
                    continue
                observer = watch.observer
                same = identity == watch.identity
                if observer is not None and observer_alive(observer) and same:
                    continue
                if observer is not None:
                    if same:
                        log.warning("watch.observer_died", inbox=watch.root, polling=watch.polling)
                        watch.polling = True  # the usual cause: an inotify limit on a new folder
                    else:
                        log.warning(
                            "inbox.replaced",
                            inbox=watch.root,
                            message=f"{watch.root} is another folder now (a share mounted "
                            "again?): watching it afresh and rescanning",
                        )
                    observer.stop()
                    watch.observer = None
                self._start(index, watch)
                started = started or watch.observer is not None
        return started

    def _lose(self, watch: _Watch, identity: FolderIdentity | None) -> None:
        """The inbox vanished or its share was unmounted: stop its observer, warn once."""
        if watch.observer is not None:
            watch.observer.stop()
            watch.observer = None
        if not watch.missing_logged:
            why = "is missing" if identity is None else "is no longer mounted"
            log.warning(
                "inbox.missing",
                inbox=watch.root,
                message=f"{watch.root} {why}: its files wait until it returns; no job fails "
                "and no output is touched",
            )
            watch.missing_logged = True

    def missing(self) -> list[str]:
        """Inbox folders that are gone or unmounted (a warning: nothing fails meanwhile)."""
        with self._lock:
            return [w.root for w in self._watches if w.missing_logged]

    def problems(self) -> list[str]:
        """Observers that have stopped."""
        with self._lock:
            return [
                f"the observer of {w.root} has stopped"
                for w in self._watches
                if w.observer is not None and not observer_alive(w.observer)
            ]

    def modes(self) -> dict[str, str]:
        """Inbox → ``native``, ``polling`` or ``none`` (folder missing)."""
        with self._lock:
            return {
                w.root: "none" if w.observer is None else "polling" if w.polling else "native"
                for w in self._watches
            }

    def polled(self, index: int) -> bool:
        """Whether an inbox is polled (its changes show up one interval late)."""
        watch = self._watches[index]
        return watch.poll or watch.polling

    def _start(self, index: int, watch: _Watch) -> None:
        identity = folder_identity(watch.root)
        if identity is None:
            self._lose(watch, None)
            return
        if watch.missing_logged:
            log.info("inbox.returned", inbox=watch.root)
            watch.missing_logged = False
        watch.identity = identity
        handler = InboxEventHandler(index, self._sink)
        if not (watch.poll or watch.polling):
            try:
                observer = self._native()
                observer.schedule(handler, watch.root, recursive=watch.recursive)
                observer.start()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                log.warning(
                    "watch.fallback",
                    inbox=watch.root,
                    error=reason,
                    message=f"{watch.root}: file events unavailable ({reason}); polling every "
                    f"{self.poll_interval:g} s instead (on Linux, raise "
                    "fs.inotify.max_user_watches / max_user_instances)",
                )
                watch.polling = True
            else:
                watch.observer = observer
                log.info(
                    "watch.started", inbox=watch.root, mode="native", recursive=watch.recursive
                )
                return
        observer = polling_observer(self.poll_interval)
        observer.schedule(handler, watch.root, recursive=watch.recursive)
        observer.start()
        watch.observer = observer
        watch.polling = True
        log.info("watch.started", inbox=watch.root, mode="polling", interval=self.poll_interval)
