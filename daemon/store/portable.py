"""Host-independent job identity: inbox names and paths relative to the output root.

Hosts of a cluster mount the shared inbox and outbox at different places. The shared job rows
therefore name an inbox by its ``name`` and an output folder by its path below that inbox's
output root; each host translates them to and from its own absolute paths at the store's
boundary, so everything above the store keeps working with local paths.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath

OUTPUT = "<output>/"  # how a stored dependency in the output tree begins


@dataclass(frozen=True)
class InboxPlace:
    """Where one named inbox and its output root lie on this host."""

    name: str
    path: str
    output: str


class PortablePaths:
    """Translates between this host's paths and the names the shared rows hold.

    Inboxes this host does not know pass through unchanged (another host's view of them is
    not ours to rewrite); so do output folders outside their inbox's output root.
    """

    def __init__(self, places: Iterable[InboxPlace]) -> None:
        self._by_path = {p.path: p for p in places}
        self._by_name = {p.name: p for p in self._by_path.values()}

    def inbox_name(self, local: str) -> str:
        """The shared name of the inbox at ``local``."""
        place = self._by_path.get(local)
        return place.name if place else local

    def inbox_path(self, name: str) -> str:
        """This host's path of the inbox called ``name``."""
        place = self._by_name.get(name)
        return place.path if place else name

    def names(self, locals_: Iterable[str]) -> list[str]:
        """The shared names of several inboxes."""
        return [self.inbox_name(p) for p in locals_]

    def out_dir_name(self, inbox_local: str, out_dir: str) -> str:
        """An output folder as stored: relative (POSIX) to its inbox's output root."""
        place = self._by_path.get(inbox_local)
        if place is None:
            return out_dir
        try:
            rel = PurePath(out_dir).relative_to(place.output)
        except ValueError:
            return out_dir
        return rel.as_posix() or "."

    def out_dir_names(self, out_dir: str) -> dict[str, str]:
        """Inbox name → ``out_dir`` as a job of that inbox stores it, for every known inbox
        (a single UPDATE picks the one of the row's inbox)."""
        return {name: self.out_dir_name(p.path, out_dir) for name, p in self._by_name.items()}

    def deps_names(self, inbox_local: str, deps: Iterable[str]) -> list[str]:
        """A job's extra dependencies as stored: those in the output tree (recorded by their
        absolute path) as ``<output>/REL``; the others are relative to the inbox already."""
        place = self._by_path.get(inbox_local)
        out = []
        for dep in deps:
            if place is not None and dep.startswith(place.output + "/"):
                dep = OUTPUT + dep[len(place.output) + 1 :]
            out.append(dep)
        return out

    def deps_paths(self, name: str, stored: Iterable[str]) -> list[str]:
        """This host's view of stored dependencies."""
        place = self._by_name.get(name)
        if place is None:
            return list(stored)
        return [
            place.output + "/" + dep[len(OUTPUT) :] if dep.startswith(OUTPUT) else dep
            for dep in stored
        ]

    def out_dir_path(self, name: str, stored: str) -> str:
        """This host's path of a stored output folder."""
        place = self._by_name.get(name)
        if place is None or posixpath.isabs(stored) or PurePath(stored).is_absolute():
            return stored
        return str(PurePath(place.output, *PurePath(stored).parts))
