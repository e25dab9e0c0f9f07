"""A cluster's journal: the shared jobs and hosts in PostgreSQL, this host's scan cache in a
local SQLite file (``state_dir/scan-cache.sqlite3``).

Folder marks vouch that every job of a folder is done; the embedded journal forgets them
through triggers on its own jobs table. Here the jobs live on another engine and other hosts
change them, so each mark records a token of its folder's jobs in PostgreSQL — the highest
``rev`` (a sequence value every relevant change of a job takes, by trigger) and the number
of rows — and a mark counts only while the token is unchanged: any insert, change or
deletion of one of the folder's jobs, by any host, makes the token differ and the mark is
forgotten at the next look.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from daemon.store.pg_hosts import PostgresHosts
from daemon.store.pg_schema import JOBS
from daemon.store.portable import PortablePaths
from daemon.store.postgres import PostgresJobStore
from daemon.store.rows import FolderMark
from daemon.store.sqlite_cache import SqliteScanCache
from daemon.values import Clock

CACHE_NAME = "scan-cache.sqlite3"

_MARK_TOKENS = """CREATE TABLE IF NOT EXISTS folder_mark_tokens (
    inbox TEXT NOT NULL, folder TEXT NOT NULL, token TEXT NOT NULL, PRIMARY KEY (inbox, folder)
)"""


def _token(rev: Any, count: Any) -> str:
    return f"{int(rev or 0)}:{int(count or 0)}"


class ClusterJournal(PostgresJobStore, PostgresHosts):
    """``Journal`` and ``HostRegistry`` of a cluster host."""

    def __init__(
        self,
        url: str,
        paths: PortablePaths,
        cache_path: Path,
        *,
        clock: Clock | None = None,
        host_timeout: float = 30.0,
    ) -> None:
        super().__init__(url, paths, clock=clock, host_timeout=host_timeout)
        try:
            self.cache = SqliteScanCache(cache_path, clock=clock or self.clock)
            with self.cache._tx() as db:
                db.execute(_MARK_TOKENS)
        except BaseException:
            super().close()
            raise

    def close(self) -> None:
        """Close the database connection and the local cache."""
        try:
            self.cache.close()
        finally:
            super().close()

    # --- the scan cache (this host's) -----------------------------------------------------

    def hash_file(self, path: Path) -> str:
        """See ``ScanCache.hash_file``."""
        return self.cache.hash_file(path)

    def cached_hash(self, path: Path, st: os.stat_result) -> str | None:
        """See ``ScanCache.cached_hash``."""
        return self.cache.cached_hash(path, st)

    def cached_hashes(self) -> dict[str, tuple[int, int, str, str]]:
        """See ``ScanCache.cached_hashes``."""
        return self.cache.cached_hashes()

    def touch_files(self, paths: Iterable[str]) -> None:
        """See ``ScanCache.touch_files``."""
        self.cache.touch_files(paths)

    def cached_table(
        self, path: str, parse: Callable[[str], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """See ``ScanCache.cached_table``."""
        return self.cache.cached_table(path, parse)

    def model_loaded(self, model: str) -> bool:
        """See ``ScanCache.model_loaded``: a model's files and device are this host's, so
        what loaded here is remembered in this host's cache, not in the shared database."""
        return self.cache.model_loaded(model)

    def note_model_loaded(self, model: str) -> None:
        """See ``ScanCache.note_model_loaded``."""
        self.cache.note_model_loaded(model)

    def output_stamp(self, out_dir: str, job_key: str) -> str | None:
        """See ``ScanCache.output_stamp``."""
        return self.cache.output_stamp(out_dir, job_key)

    def output_stamps(self) -> dict[str, tuple[str, str]]:
        """See ``ScanCache.output_stamps``."""
        return self.cache.output_stamps()

    def set_output_stamps(self, stamps: Iterable[tuple[str, str, str | None]]) -> None:
        """See ``ScanCache.set_output_stamps``."""
        self.cache.set_output_stamps(stamps)

    def verified_signatures(self, inbox: str) -> dict[str, str]:
        """See ``ScanCache.verified_signatures``."""
        return self.cache.verified_signatures(inbox)

    def set_verified_signatures(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """See ``ScanCache.set_verified_signatures``."""
        self.cache.set_verified_signatures(rows)

    # --- folder marks, checked against the shared jobs -------------------------------------

    def folder_marks(self, inbox: str) -> dict[str, FolderMark]:
        """folder → its mark, for every marked folder of one inbox whose jobs have not
        changed since it was marked (on any host); the others are forgotten."""
        marks = self.cache.folder_marks(inbox)
        if not marks:
            return {}
        tokens = {
            r[0]: r[1]
            for r in self.cache._query(
                "SELECT folder, token FROM folder_mark_tokens WHERE inbox = ?", (inbox,)
            )
        }
        rows = self._query(
            f"SELECT folder, max(rev) AS rev, count(*) AS n FROM {JOBS} WHERE inbox = %(inbox)s"
            " AND folder = ANY(%(folders)s) GROUP BY folder",
            {"inbox": self.paths.inbox_name(inbox), "folders": sorted(marks)},
        )
        now = {r["folder"]: _token(r["rev"], r["n"]) for r in rows}
        valid = {f: m for f, m in marks.items() if tokens.get(f) == now.get(f, _token(0, 0))}
        stale = [(inbox, f) for f in marks if f not in valid]
        if stale:
            with self.cache._tx() as db:
                db.executemany("DELETE FROM folder_marks WHERE inbox = ? AND folder = ?", stale)
                db.executemany(
                    "DELETE FROM folder_mark_tokens WHERE inbox = ? AND folder = ?", stale
                )
        return valid

    def set_folder_marks(self, marks: Iterable[tuple[str, FolderMark, dict[str, str]]]) -> None:
        """Record (inbox, mark, input → fingerprint), each mark only if the job of every input
        it vouches for is still done with the fingerprint that was verified, with the token
        of its folder's jobs as they were then."""
        keep: list[tuple[str, FolderMark, str]] = []
        for inbox, mark, fingerprints in marks:
            rows = self._query(
                f"SELECT input, state, fingerprint, rev FROM {JOBS} WHERE inbox = %(inbox)s"
                " AND folder = %(folder)s",
                {"inbox": self.paths.inbox_name(inbox), "folder": mark.folder},
            )
            here = {r["input"]: (r["state"], r["fingerprint"]) for r in rows}
            if any(here.get(rel) != ("done", fp) for rel, fp in fingerprints.items()):
                continue
            token = _token(max((r["rev"] for r in rows), default=0), len(rows))
            keep.append((inbox, mark, token))
        if not keep:
            return
        with self.cache._tx() as db:
            for inbox, mark, token in keep:
                db.execute(
                    "INSERT OR REPLACE INTO folder_marks (inbox, folder, listing, near, watch,"
                    " watched, parts, inputs) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (inbox, *mark),
                )
                db.execute(
                    "INSERT OR REPLACE INTO folder_mark_tokens (inbox, folder, token)"
                    " VALUES (?, ?, ?)",
                    (inbox, mark.folder, token),
                )

    # --- pruning --------------------------------------------------------------------------

    def prune_cache(
        self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists
    ) -> int:
        """Forget cache rows unseen for ``older_than`` seconds whose file is gone, and the
        stamps and signatures of jobs no longer in the shared store; return how many cache
        rows went."""
        cutoff = self.cache.clock() - older_than
        files = self.cache._query("SELECT path FROM files WHERE seen_at < ?", (cutoff,))
        gone = [(r[0], cutoff) for r in files if not exists(r[0])]
        jobs = self._query(f"SELECT inbox, input, out_dir FROM {JOBS}")
        out_dirs = {(self.paths.out_dir_path(r["inbox"], r["out_dir"]),) for r in jobs}
        inputs = {(self.paths.inbox_path(r["inbox"]), r["input"]) for r in jobs}
        with self.cache._tx() as db:
            deleted = db.executemany(
                "DELETE FROM files WHERE path = ? AND seen_at < ?", gone
            ).rowcount
            stamps = [(r[0],) for r in db.execute("SELECT out_dir FROM output_stamps")]
            db.executemany(
                "DELETE FROM output_stamps WHERE out_dir = ?",
                [s for s in stamps if s not in out_dirs],
            )
            verified = [tuple(r) for r in db.execute("SELECT inbox, input FROM verified_inputs")]
            db.executemany(
                "DELETE FROM verified_inputs WHERE inbox = ? AND input = ?",
                [v for v in verified if v not in inputs],
            )
        return int(deleted)

    def prune(self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists) -> int:
        """``prune_jobs`` (one host at a time), then ``prune_cache``; return how many rows."""
        removed = self.prune_jobs(older_than, exists=exists)
        return removed + self.prune_cache(older_than, exists=exists)


def cache_path(state_dir: Path) -> Path:
    """Where a cluster host keeps its scan cache."""
    return state_dir / CACHE_NAME
