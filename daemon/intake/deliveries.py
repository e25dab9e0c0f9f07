"""Sync tools visibly delivering into a folder: their temporaries and partial files.

Syncthing pulls a folder's files in random order, each into a temporary renamed into place when
complete; rsync, unison, Nextcloud and browsers do much the same. While such a temporary is
being written in a folder, more of what was written together at the source (a sidecar, a
mask) may still be on its way, so the folder's new inputs wait (``Deliveries.busy``). A
temporary nobody has written to for ``DELIVERY_STALL_S`` is taken as abandoned (an
interrupted transfer that the tool keeps to resume later) and holds nothing.
"""

from __future__ import annotations

import os
from pathlib import PurePath

import structlog

from daemon.intake.names import is_delivery_temporary
from daemon.values import Clock

DELIVERY_STALL_S = 60.0

log = structlog.get_logger("dropforge.watch")


def delivery_folder(path: str, root: str) -> str | None:
    """The folder a sync tool is delivering into when ``path`` (below the inbox ``root``)
    changes: the folder holding the temporary, or the staging folder it lies in; else None."""
    parts = PurePath(os.path.relpath(path, root)).parts
    for depth, part in enumerate(parts):
        if is_delivery_temporary(part):
            return os.path.join(root, *parts[:depth])
    return None


def _written_at(entry: os.DirEntry[str]) -> float:
    """When a temporary was last written: a staging folder's newest entry counts for it."""
    newest = entry.stat(follow_symlinks=False).st_mtime
    if entry.is_dir(follow_symlinks=False):
        try:
            with os.scandir(entry.path) as inner:
                for child in inner:
                    newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
        except OSError:
            pass  # gone meanwhile: its own mtime is all there is
    return newest


def _scan(folder: str, now: float, stall: float) -> tuple[str | None, bool]:
    """The live temporary in ``folder`` (or None), and whether it holds any temporary."""
    seen = False
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not is_delivery_temporary(entry.name):
                    continue
                seen = True
                try:
                    if abs(now - _written_at(entry)) < stall:
                        return entry.name, True
                except OSError:
                    continue  # renamed into place while we looked
    except OSError:
        return None, seen
    return None, seen


def delivering(folder: str, now: float, stall: float = DELIVERY_STALL_S) -> str | None:
    """The name of a delivery temporary in ``folder`` written in the last ``stall`` seconds
    (``now`` is wall-clock time; a clock that differs from the file system's by more than
    ``stall`` sees no delivery), or None."""
    return _scan(folder, now, stall)[0]


class Temporaries:
    """``delivering``, listing a folder again only when it may hold a temporary: one found
    before, or an entry added or removed since (which changes the folder's mtime). A folder
    of ten thousand inputs is listed once, not once per job."""

    def __init__(self, stall: float = DELIVERY_STALL_S) -> None:
        self._stall = stall
        self._clear: dict[str, tuple[int, int]] = {}  # folder → its stat when it held none

    def find(self, folder: str, now: float) -> str | None:
        """The live temporary in ``folder``, or None."""
        try:
            st = os.stat(folder)
        except OSError:
            return None
        key = (st.st_ino, st.st_mtime_ns)
        if self._clear.get(folder) == key:
            return None
        found, seen = _scan(folder, now, self._stall)
        if seen:
            self._clear.pop(folder, None)
        else:
            self._clear[folder] = key
        return found


class Deliveries:
    """Which folders a sync tool is delivering into, from the temporaries' events (``note``)
    and, at the moment a group of files would settle, from the folder itself (``busy``)."""

    def __init__(self, clock: Clock, wall_clock: Clock, stall: float = DELIVERY_STALL_S) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._seen: dict[str, tuple[float, str]] = {}  # folder → (last event, temporary)
        self._temporaries = Temporaries(stall)
        self._holding: set[str] = set()  # folders whose new inputs wait

    def note(self, folder: str, name: str) -> None:
        """A temporary ``name`` in ``folder`` was created, written, renamed or removed."""
        self._seen[folder] = (self._clock(), name)

    def busy(self, folder: str, quiet: float) -> str | None:
        """The temporary that shows a delivery into ``folder``, or None once the folder has been
        quiet for ``quiet`` seconds and holds no temporary written within the stall time."""
        seen = self._seen.get(folder)
        if seen is not None:
            if self._clock() - seen[0] < quiet:
                return seen[1]
            del self._seen[folder]
        return self._temporaries.find(folder, self._wall_clock())

    def holds(self, folder: str, quiet: float) -> bool:
        """``busy``, logging ``intake.held`` when a folder starts holding its new inputs."""
        temporary = self.busy(folder, quiet)
        if temporary is None:
            self._holding.discard(folder)
            return False
        if folder not in self._holding:
            self._holding.add(folder)
            log.info(
                "intake.held",
                folder=folder,
                temporary=temporary,
                message="a sync tool is delivering into this folder: its new inputs wait "
                "until the delivery is done",
            )
        return True
