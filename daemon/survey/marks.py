"""Folder marks: an inbox folder whose inputs were all found done, remembered as it looked then, so
that a rescan can skip it while nothing it rests on has changed."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from daemon.config import InboxConfig
from daemon.intake.parts import FolderParts
from daemon.store.protocols import ScanCache
from daemon.store.rows import FolderMark

# Part of every folder mark's listing: a new version forgets marks of an older way.
MARKS_VERSION = "1"


_NO_PARTS = FolderParts().to_json()


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def watched_digest(watch: str) -> str | None:
    """A digest of the stats of a mark's watched paths (``d`` an output folder's stamp, ``f``
    a file's stat key); None when one is gone."""
    keys: list[str] = []
    append, stat = keys.append, os.stat
    try:
        for item in watch.split("\0") if watch else ():
            st = stat(item[1:])
            if item[0] == "d":
                append(f"{st.st_ino}:{st.st_mtime_ns}")
            else:
                append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    except OSError:
        return None
    return digest("\0".join(keys))


@dataclass
class FolderMarks:
    """The folder marks of one inbox, as a scan's ``intake.Shortcut``.

    A folder is marked when a survey found every input in it done (``SurveyPass.mark``). A
    later scan skips it while its files and their stats, the _defaults.toml chain above it,
    the settings, the parts other files name in it, and the stamps of its inputs' output
    folders and the stats of their outside dependencies are all as they were; any change to
    one of its jobs in the journal forgets the mark (triggers, see ``journal``).
    """

    journal: ScanCache
    inbox: InboxConfig
    settings_fp: str
    _marks: dict[str, FolderMark] | None = None
    _salt: str = ""

    def __post_init__(self) -> None:
        self._salt = f"{MARKS_VERSION}\0{self.settings_fp}\0{self.inbox!r}\0"

    def listing(self, listing: str) -> str:
        """What a mark records for a scan's listing signature (the settings joined in)."""
        return digest(self._salt + listing)

    def _get(self, prefix: str) -> FolderMark | None:
        if self._marks is None:
            self._marks = self.journal.folder_marks(str(self.inbox.path))
        return self._marks.get(prefix)

    def recorded(self, prefix: str, listing: str) -> FolderParts | None:
        """The parts the folder named when it was marked, if it was marked with ``listing``."""
        mark = self._get(prefix)
        if mark is None or mark.listing != self.listing(listing):
            return None
        return FolderParts() if mark.parts == _NO_PARTS else FolderParts.from_json(mark.parts)

    def unchanged(self, prefix: str, near: str) -> int | None:
        """The number of inputs in the folder if its mark still holds; else None."""
        mark = self._get(prefix)
        if mark is None or mark.near != near or watched_digest(mark.watch) != mark.watched:
            return None
        return mark.inputs
