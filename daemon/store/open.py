"""Opening the journal that the settings name: the embedded SQLite file in ``state_dir``."""

from __future__ import annotations

import time

from daemon.config import Settings
from daemon.store.protocols import Journal
from daemon.store.sqlite import SqliteJournal
from daemon.values import Clock


def open_journal(settings: Settings, *, clock: Clock = time.time) -> Journal:
    """The job store and scan cache of these settings, open (close it, or use ``with``)."""
    return SqliteJournal(settings.journal_path, clock=clock)


def open_journal_copy(settings: Settings, *, clock: Clock = time.time) -> Journal:
    """A private in-memory copy of the journal (empty when there is none yet): the survey runs
    on it as on the real one, and nothing reaches ``state_dir`` (``once --dry-run``)."""
    return SqliteJournal(settings.journal_path, clock=clock, copy=True)
