"""File-system events → paths worth a look: the settle tracker and the observers.

Whether a file is ready is decided by ``stat`` alone: non-empty, with size, mtime and inode
unchanged for its settle time. Events only make the tracker look again; observers' threads
never do more than hand a path over.
"""

from __future__ import annotations

import heapq
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from daemon.config import InboxConfig

log = structlog.get_logger("dropforge.watch")

_SKIPPED_EVENTS = frozenset({"opened", "closed_no_write"})

StatKey = tuple[int, int, int]


class SettleState(str, Enum):
    """How a tracked path left the settle tracker."""

    settled = "settled"  # non-empty and unchanged for its settle time
    gone = "gone"  # deleted or moved away
    empty = "empty"  # unchanged but empty: a later write brings it back


@dataclass(frozen=True)
class Settled:
    """A path the tracker is done with; ``waited`` counts from its first event."""

    path: str
    tag: int
    state: SettleState
    waited: float


@dataclass
class _Entry:
    key: StatKey | None
    due: float
    first_seen: float
    settle: float
    tag: int


def _stat_key(path: str) -> StatKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


class SettleTracker:
    """Which touched paths have kept their size, mtime and inode for their settle time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self, path: str) -> bool:
        """Whether ``path`` is still being watched for changes."""
        return path in self._entries

    def touch(self, path: str, settle: float, tag: int = 0) -> None:
        """Something happened to ``path``: its settle time starts again if its stat changed."""
        now = self._clock()
        key = _stat_key(path)
        entry = self._entries.get(path)
        if entry is not None and entry.key == key:
            return  # an event without a change (attributes, close): the timer runs on
        if entry is None:
            entry = _Entry(key, now + settle, now, settle, tag)
            self._entries[path] = entry
        else:
            entry.key, entry.due = key, now + settle
        heapq.heappush(self._heap, (entry.due, path))

    def next_due(self) -> float | None:
        """When the earliest settle check is due, on the tracker's clock."""
        while self._heap:
            due, path = self._heap[0]
            entry = self._entries.get(path)
            if entry is not None and entry.due == due:
                return due
            heapq.heappop(self._heap)  # superseded by a later touch
        return None

    def pop_settled(self) -> list[Settled]:
        """Check every due path; return those that settled, vanished or stayed empty."""
        now = self._clock()
        done: list[Settled] = []
        while self._heap and self._heap[0][0] <= now:
            due, path = heapq.heappop(self._heap)
            entry = self._entries.get(path)
            if entry is None or entry.due != due:
                continue
            key = _stat_key(path)
            if key is not None and key != entry.key:
                entry.key, entry.due = key, now + entry.settle
                heapq.heappush(self._heap, (entry.due, path))
                continue
            del self._entries[path]
            if key is None:
                state = SettleState.gone
            else:
                state = SettleState.empty if key[0] == 0 else SettleState.settled
            done.append(Settled(path, entry.tag, state, now - entry.first_seen))
        return done


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
