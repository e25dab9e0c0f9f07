"""The embedded journal: one SQLite file in ``state_dir`` serving as both the job store and this
host's scan cache, so that changes to a job forget folder marks in the same transaction."""

from __future__ import annotations

import os
from collections.abc import Callable

from daemon.store.sqlite_cache import SqliteScanCache
from daemon.store.sqlite_jobs import SqliteJobStore


class SqliteJournal(SqliteJobStore, SqliteScanCache):
    """``journal.sqlite3``: a ``JobStore`` and a ``ScanCache`` over one connection."""

    def prune(self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists) -> int:
        """Forget what is gone: done jobs untouched for ``older_than`` seconds whose input has
        left the inbox, then cache rows unseen as long whose file is gone; return how many."""
        removed = self.prune_jobs(older_than, exists=exists)
        return removed + self.prune_cache(older_than, exists=exists)
