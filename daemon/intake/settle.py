"""Settling: a touched file is ready once it is non-empty and its size, mtime and inode stayed
unchanged for its settle time, decided by ``stat`` alone. Events only make the tracker look again.
"""

from __future__ import annotations

import heapq
import os
import time
from dataclasses import dataclass
from enum import Enum

from daemon.values import Clock

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

    def __init__(self, clock: Clock = time.monotonic) -> None:
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
