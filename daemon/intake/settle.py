"""Settling: touched files are ready once they are non-empty and their size, mtime and inode
stayed unchanged for their settle time, decided by ``stat`` alone. Events only make the
tracker look again.

Files that belong together settle together: an input, its sidecar and its mask (one stem in
one folder, ``names.settle_group``) form a group whose timer starts again whenever any of them
arrives or changes, and a folder's ``_defaults.toml`` changing starts again the timer of every
group in and below that folder. A group that comes due while ``hold(folder)`` says a sync
tool is delivering into its folder waits another settle time.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from daemon.intake.names import settle_group
from daemon.values import Clock

StatKey = tuple[int, int, int]
GroupKey = tuple[str, str]  # (folder, stem); the stem "" is the folder's _defaults.toml


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
    first_seen: float
    tag: int


@dataclass
class _Group:
    due: float
    settle: float
    members: set[str] = field(default_factory=set)


def _stat_key(path: str) -> StatKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def group_of(path: str) -> GroupKey:
    """The settle group of a path: its folder and the stem it shares with its companions."""
    folder, name = os.path.split(path)
    return folder, settle_group(name)


class SettleTracker:
    """Which touched paths have kept their size, mtime and inode for their settle time,
    together with the files that belong with them."""

    def __init__(
        self, clock: Clock = time.monotonic, hold: Callable[[str], bool] = lambda folder: False
    ) -> None:
        self._clock = clock
        self._hold = hold
        self._entries: dict[str, _Entry] = {}
        self._groups: dict[GroupKey, _Group] = {}
        self._heap: list[tuple[float, GroupKey]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self, path: str) -> bool:
        """Whether ``path`` is still being watched for changes."""
        return path in self._entries

    def touch(self, path: str, settle: float, tag: int = 0) -> None:
        """Something happened to ``path``: its group's settle time starts again if its stat
        changed (for a ``_defaults.toml``, that of every group in and below its folder)."""
        now = self._clock()
        key = _stat_key(path)
        entry = self._entries.get(path)
        if entry is not None and entry.key == key:
            return  # an event without a change (attributes, close): the timer runs on
        if entry is None:
            self._entries[path] = _Entry(key, now, tag)
        else:
            entry.key = key
        name = group_of(path)
        group = self._groups.setdefault(name, _Group(now + settle, settle))
        group.members.add(path)
        group.settle = max(group.settle, settle)
        self._restart(name, group, now)
        if name[1] == "":  # a _defaults.toml: everything below it is concerned
            below = name[0] + os.sep
            for other, member in self._groups.items():
                if other != name and (other[0] == name[0] or other[0].startswith(below)):
                    self._restart(other, member, now)

    def _restart(self, name: GroupKey, group: _Group, now: float) -> None:
        group.due = now + group.settle
        heapq.heappush(self._heap, (group.due, name))

    def next_due(self) -> float | None:
        """When the earliest settle check is due, on the tracker's clock."""
        while self._heap:
            due, name = self._heap[0]
            group = self._groups.get(name)
            if group is not None and group.due == due:
                return due
            heapq.heappop(self._heap)  # superseded by a later touch
        return None

    def pop_settled(self) -> list[Settled]:
        """Check every due group; return the members of those that settled, vanished or
        stayed empty, all of a group at once."""
        now = self._clock()
        done: list[Settled] = []
        held: dict[str, bool] = {}  # folder → hold(folder), asked once per call
        while self._heap and self._heap[0][0] <= now:
            due, name = heapq.heappop(self._heap)
            group = self._groups.get(name)
            if group is None or group.due != due:
                continue
            keys = {path: _stat_key(path) for path in group.members}
            changed = [p for p, k in keys.items() if k is not None and k != self._entries[p].key]
            if changed:
                for path, key in keys.items():
                    self._entries[path].key = key
                self._restart(name, group, now)
                continue
            if name[0] not in held:
                held[name[0]] = self._hold(name[0])
            if held[name[0]]:
                self._restart(name, group, now)
                continue
            del self._groups[name]
            for path, key in sorted(keys.items()):
                entry = self._entries.pop(path)
                if key is None:
                    state = SettleState.gone
                else:
                    state = SettleState.empty if key[0] == 0 else SettleState.settled
                done.append(Settled(path, entry.tag, state, now - entry.first_seen))
        return done
