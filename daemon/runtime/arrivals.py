"""What the watcher's intake thread keeps per inbox and passes around: queued events, per-inbox
state, the overflow listener, and the small look-ups it makes about a file's companions."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from daemon.config import InboxConfig
from daemon.intake.candidates import Candidate
from daemon.intake.names import FileKind, classify, is_ignored_dir, is_ignored_name
from daemon.intake.parts import NO_PARTS, Parts

TOMLS = (FileKind.sidecar, FileKind.job, FileKind.defaults)


@dataclass(frozen=True)
class Event:
    index: int
    path: str
    is_dir: bool


@dataclass
class InboxState:
    index: int
    inbox: InboxConfig
    root: str
    parts: Parts = NO_PARTS
    refused: set[str] = field(default_factory=set)
    pending_tomls: set[str] = field(default_factory=set)  # may name masks or endpoints
    held: set[str] = field(default_factory=set)  # images waiting for those to settle


STOP = object()


RESCAN = object()


# watchdog tells of an inotify queue overflow only in a log line from this logger.
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"


class OverflowListener(logging.Filter):
    """Hears watchdog's "queue overflowed" warning: lost events mean files nobody saw arrive,
    which would otherwise wait for the next periodic rescan (``rescan_interval``)."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__()
        self._on_overflow = on_overflow

    def filter(self, record: logging.LogRecord) -> bool:
        """Call back on an overflow record; let every record through."""
        if "overflow" in str(record.msg).lower():
            self._on_overflow()
        return True


def files_of(candidate: Candidate) -> list[Path]:
    files = [candidate.path, *candidate.defaults]
    files += [p for p in (candidate.sidecar, candidate.mask) if p is not None]
    return files


def mtime_or_inf(path: Path) -> float:
    """When a file last changed, or arrived: sync tools keep the source's mtime on a file they
    rename into place, but the rename sets its ctime (on POSIX; Windows has no such time)."""
    try:
        st = path.stat()
    except OSError:
        return float("inf")  # vanished: treat as still changing
    return st.st_mtime if os.name == "nt" else max(st.st_mtime, st.st_ctime)


def siblings(path: str, stem: str, kinds: tuple[FileKind, ...]) -> list[str]:
    """Files ``STEM.<ext>`` of the given kinds beside ``path`` (any extension case)."""
    folder = os.path.dirname(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        os.path.join(folder, n)
        for n in names
        if n.rpartition(".")[0] == stem and not is_ignored_name(n) and classify(n) in kinds
    )


def excluded(path: str, roots: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of the output and state ``roots`` or lies below one."""
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def wanted(state: InboxState, path: str, roots: tuple[str, ...]) -> bool:
    """Would a scan look at this path? (name filter, ignored and output folders)."""
    if not path.startswith(state.root + os.sep) or excluded(path, roots):
        return False
    *dirs, name = PurePath(os.path.relpath(path, state.root)).parts
    if dirs and not state.inbox.recursive:
        return False
    if any(map(is_ignored_dir, dirs)) or is_ignored_name(name):
        return False
    return classify(name) is not FileKind.other


def wanted_folder(state: InboxState, path: str, roots: tuple[str, ...]) -> bool:
    """A folder inside a mounted inbox: not the inbox itself, not an output folder."""
    if not path.startswith(state.root + os.sep) or not mounted(state):
        return False
    return not excluded(path, roots)


def mounted(state: InboxState) -> bool:
    """Whether the inbox folder is there: an unmounted share looks as if every file in it was
    deleted, which must cancel nothing."""
    return os.path.isdir(state.root)


def walk(state: InboxState, top: str, roots: tuple[str, ...]) -> list[str]:
    """The files below ``top`` (a folder moved in whole) that a scan would look at."""
    found: list[str] = []
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not is_ignored_dir(d)]
        found += [p for n in files if wanted(state, p := os.path.join(folder, n), roots)]
    return found
