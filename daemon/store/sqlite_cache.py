"""This host's scan cache in SQLite: the stat → sha256 cache, parsed sidecars, output folder
stamps, signatures of verified inputs and folder marks (see ``protocols.ScanCache``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from daemon.errors import FileChangedError
from daemon.store.rows import FolderMark, stat_key
from daemon.store.sqlite_base import SqliteDatabase

_CHUNK = 1 << 20


class SqliteScanCache(SqliteDatabase):
    """The scan cache tables of a journal file."""

    def cached_hash(self, path: Path, st: os.stat_result) -> str | None:
        """The cached sha256 of ``path`` if its size, mtime and inode still match ``st``."""
        rows = self._query(
            "SELECT sha256 FROM files WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
            (str(path), *stat_key(st)),
        )
        return str(rows[0]["sha256"]) if rows else None

    def cached_hashes(self) -> dict[str, tuple[int, int, str, str]]:
        """The whole stat cache: path → (size, mtime_ns, inode, sha256), for a bulk rescan."""
        rows = self._query("SELECT path, size, mtime_ns, inode, sha256 FROM files")
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def verified_signatures(self, inbox: str) -> dict[str, str]:
        """input → the signature recorded when it was last verified done, for one inbox."""
        rows = self._query("SELECT input, signature FROM verified_inputs WHERE inbox = ?", (inbox,))
        return {r[0]: r[1] for r in rows}

    def set_verified_signatures(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Record (inbox, input, signature) triples in one transaction."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO verified_inputs (inbox, input, signature) VALUES (?, ?, ?)",
                rows,
            )

    def model_loaded(self, model: str) -> bool:
        """Whether the model (source, device and files, as ``model`` describes them) has
        loaded on this host before."""
        return bool(self._query("SELECT 1 FROM model_loads WHERE model = ?", (model,)))

    def note_model_loaded(self, model: str) -> None:
        """Record that the model described by ``model`` loaded on this host."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO model_loads (model, loaded_at) VALUES (?, ?)",
                (model, self.clock()),
            )

    def output_stamps(self) -> dict[str, tuple[str, str]]:
        """Every recorded output folder stamp: out_dir → (job_key, stamp)."""
        rows = self._query("SELECT out_dir, job_key, stamp FROM output_stamps")
        return {r[0]: (r[1], r[2]) for r in rows}

    def touch_files(self, paths: Iterable[str]) -> None:
        """Mark cached files as seen now, in one transaction (what keeps them from pruning)."""
        now = self.clock()
        with self._tx() as db:
            db.executemany("UPDATE files SET seen_at = ? WHERE path = ?", ((now, p) for p in paths))

    def folder_marks(self, inbox: str) -> dict[str, FolderMark]:
        """folder → its mark, for every marked folder of one inbox."""
        rows = self._query(
            "SELECT folder, listing, near, watch, watched, parts, inputs FROM folder_marks"
            " WHERE inbox = ?",
            (inbox,),
        )
        return {r[0]: FolderMark(*r) for r in rows}

    def set_folder_marks(self, marks: Iterable[tuple[str, FolderMark, dict[str, str]]]) -> None:
        """Record (inbox, mark, input → fingerprint) in one transaction, each mark only if
        the job of every input it vouches for is still done with the fingerprint that was
        verified (a job changed since, e.g. retried by another process, keeps its folder
        unmarked)."""
        with self._tx() as db:
            for inbox, mark, fingerprints in marks:
                if mark.folder:  # "a/b/": every input from "a/b/" up to "a/b0" (after "/")
                    rows = db.execute(
                        "SELECT input, state, fingerprint FROM jobs WHERE inbox = ?"
                        " AND input >= ? AND input < ?",
                        (inbox, mark.folder, mark.folder[:-1] + "0"),
                    ).fetchall()
                else:
                    rows = db.execute(
                        "SELECT input, state, fingerprint FROM jobs WHERE inbox = ?"
                        " AND instr(input, '/') = 0",
                        (inbox,),
                    ).fetchall()
                here = {r[0]: (r[1], r[2]) for r in rows}
                if any(here.get(rel) != ("done", fp) for rel, fp in fingerprints.items()):
                    continue
                db.execute(
                    "INSERT OR REPLACE INTO folder_marks (inbox, folder, listing, near, watch,"
                    " watched, parts, inputs) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (inbox, *mark),
                )

    def output_stamp(self, out_dir: str, job_key: str) -> str | None:
        """The stamp recorded when ``out_dir`` last held the complete outputs of ``job_key``."""
        rows = self._query(
            "SELECT stamp FROM output_stamps WHERE out_dir = ? AND job_key = ?", (out_dir, job_key)
        )
        return str(rows[0]["stamp"]) if rows else None

    def set_output_stamps(self, stamps: Iterable[tuple[str, str, str | None]]) -> None:
        """Record (out_dir, job_key, stamp) triples in one transaction; a None stamp forgets."""
        with self._tx() as db:
            for out_dir, job_key, stamp in stamps:
                if stamp is None:
                    db.execute("DELETE FROM output_stamps WHERE out_dir = ?", (out_dir,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO output_stamps (out_dir, job_key, stamp)"
                        " VALUES (?, ?, ?)",
                        (out_dir, job_key, stamp),
                    )

    def hash_file(self, path: Path) -> str:
        """Return the sha256 of a file, reading it only when its stat is not cached.

        Raises FileChangedError when the file changed while it was read, and
        FileNotFoundError when it is gone.
        """
        key = stat_key(os.stat(path))
        with self._tx() as db:
            hit = db.execute(
                "UPDATE files SET seen_at = ? "
                "WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ? RETURNING sha256",
                (self.clock(), str(path), *key),
            ).fetchone()
        if hit is not None:
            return str(hit["sha256"])
        digest = hashlib.sha256()
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                digest.update(view[:n])
        if stat_key(os.stat(path)) != key:
            raise FileChangedError(path)
        sha = digest.hexdigest()
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO files (path, size, mtime_ns, inode, sha256, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (str(path), *key, sha, self.clock()),
            )
        return sha

    def cached_table(
        self, path: str, parse: Callable[[str], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """A small TOML file's parsed table, re-read only when its stat changed.

        Rescans use it so that thousands of unchanged sidecars are not opened again.
        """
        try:
            key = stat_key(os.stat(path))
        except OSError:
            return None
        rows = self._query(
            "SELECT data FROM tables WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
            (path, *key),
        )
        if rows:
            cached: dict[str, Any] | None = json.loads(rows[0]["data"])
            return cached
        table = parse(path)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO tables (path, size, mtime_ns, inode, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (path, *key, json.dumps(table, default=str)),
            )
        return table

    def prune_cache(
        self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists
    ) -> int:
        """Forget cache rows unseen for ``older_than`` seconds whose file is gone, and the
        stamps and signatures of jobs that are no longer in the journal; return how many
        cache rows went.
        """
        cutoff = self.clock() - older_than
        files = self._query("SELECT path FROM files WHERE seen_at < ?", (cutoff,))
        gone_files = [(r[0], cutoff) for r in files if not exists(r[0])]
        with self._tx() as db:
            deleted = db.executemany(
                "DELETE FROM files WHERE path = ? AND seen_at < ?", gone_files
            ).rowcount
            db.execute("DELETE FROM output_stamps WHERE out_dir NOT IN (SELECT out_dir FROM jobs)")
            db.execute(
                "DELETE FROM verified_inputs WHERE NOT EXISTS (SELECT 1 FROM jobs"
                " WHERE jobs.inbox = verified_inputs.inbox AND jobs.input = verified_inputs.input)"
            )
        return int(deleted)
