"""SQLite journal: the stat → sha256 cache of input files, and jobs with states and leases.

One connection serves every thread (a lock keeps transactions whole); writes take
``BEGIN IMMEDIATE`` so that two processes on one file never claim the same job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from daemon.errors import ConfigError, DropforgeError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
BACKOFF_BASE_S = 30.0
BACKOFF_CAP_S = 3600.0
_CHUNK = 1 << 20

_SCHEMA = """
CREATE TABLE files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    inode TEXT NOT NULL, sha256 TEXT NOT NULL, seen_at REAL NOT NULL
);
CREATE INDEX files_seen ON files (seen_at);
CREATE TABLE tables (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, inbox TEXT NOT NULL, input TEXT NOT NULL,
    kind TEXT NOT NULL, fingerprint TEXT NOT NULL, job_key TEXT NOT NULL, out_dir TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, waits INTEGER NOT NULL DEFAULT 0,
    error TEXT, not_before REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    started_at REAL, finished_at REAL, seconds REAL, lease_owner TEXT, lease_expires REAL,
    progress_done INTEGER NOT NULL DEFAULT 0, progress_total INTEGER NOT NULL DEFAULT 0,
    progress_note TEXT NOT NULL DEFAULT '', force INTEGER NOT NULL DEFAULT 0,
    deps TEXT NOT NULL DEFAULT '[]',
    UNIQUE (inbox, input)
);
CREATE INDEX jobs_claim ON jobs (state, id);
CREATE INDEX jobs_state_updated ON jobs (state, updated_at);
"""

# What a done job's output folder looked like when it was last found complete (see
# output_stamp): a rescan that finds the same stamp need not read the manifest again.
_OUTPUT_STAMPS = """CREATE TABLE IF NOT EXISTS output_stamps (
    out_dir TEXT PRIMARY KEY, job_key TEXT NOT NULL, stamp TEXT NOT NULL
)"""
# For a done input last found complete: a digest of the stats of the files its job depends on,
# the settings, the job's fingerprint and its output folder's stamp (see survey.SurveyPass).
# A rescan that computes the same digest knows the input is still done without hashing.
_VERIFIED_INPUTS = """CREATE TABLE IF NOT EXISTS verified_inputs (
    inbox TEXT NOT NULL, input TEXT NOT NULL, signature TEXT NOT NULL,
    PRIMARY KEY (inbox, input)
)"""

# An inbox folder whose inputs were all found done, as it looked then (see survey.FolderMarks):
# ``listing`` digests its files' names and stats, the _defaults.toml chain above it and the
# settings; ``near`` the parts other files name in it; ``watch`` lists the output folders and
# outside dependencies of its inputs, NUL-separated, and ``watched`` digests their stats;
# ``parts`` is what its own sidecars and job files name (JSON). A rescan that finds all of
# these unchanged skips the folder's inputs without classifying or surveying them.
_FOLDER_MARKS = """CREATE TABLE IF NOT EXISTS folder_marks (
    inbox TEXT NOT NULL, folder TEXT NOT NULL, listing TEXT NOT NULL, near TEXT NOT NULL,
    watch TEXT NOT NULL, watched TEXT NOT NULL, parts TEXT NOT NULL, inputs INTEGER NOT NULL,
    PRIMARY KEY (inbox, folder)
)"""
# Any change to a job forgets the mark of the folder its input lies in (``folder`` is ""
# or "a/b/"; the input lies directly in it). Triggers, so that no write path can miss it.
# rtrim(X, replace(X, '/', '')) strips everything after the last "/": the input's folder.
_IN_FOLDER = "inbox = {row}.inbox AND folder = rtrim({row}.input, replace({row}.input, '/', ''))"
_FOLDER_MARK_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS folder_marks_{event.split()[0].lower()} AFTER {event} ON jobs
    BEGIN DELETE FROM folder_marks WHERE {_IN_FOLDER.format(row=row)}; END"""
    for event, row in (
        ("INSERT", "NEW"),
        ("DELETE", "OLD"),
        ("UPDATE OF inbox, input, state, fingerprint, job_key, out_dir, force, deps", "OLD"),
    )
]

_ADDED = [_OUTPUT_STAMPS, _VERIFIED_INPUTS, _FOLDER_MARKS, *_FOLDER_MARK_TRIGGERS]
_ADDED_NAMES = {
    "output_stamps",
    "verified_inputs",
    "folder_marks",
    "folder_marks_insert",
    "folder_marks_delete",
    "folder_marks_update",
}

# The columns a requeue resets; kept in one place so every path back to `queued` agrees.
_REQUEUE_SET = """state = 'queued', attempts = 0, waits = 0, error = NULL, not_before = NULL,
    lease_owner = NULL, lease_expires = NULL, progress_done = 0, progress_total = 0,
    progress_note = '', updated_at = :now"""
_NOT_LEASED = "NOT (state = 'running' AND lease_expires > :now)"


class JobState(str, Enum):
    """Where a job stands; see DESIGN.md "Journal and job states"."""

    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    waiting = "waiting"
    quarantined = "quarantined"


class FileChangedError(DropforgeError):
    """A file changed while it was hashed: it is still being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path}: changed while it was being read (still being written?)")


@dataclass(frozen=True)
class Job:
    """One row of the jobs table; times are seconds from the journal's clock."""

    id: int
    inbox: str
    input: str
    kind: str
    fingerprint: str
    job_key: str
    out_dir: str
    state: JobState
    attempts: int
    waits: int
    error: str | None
    not_before: float | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    seconds: float | None
    lease_owner: str | None
    lease_expires: float | None
    progress_done: int
    progress_total: int
    progress_note: str
    force: bool
    deps: tuple[str, ...]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        """Build a Job from a ``SELECT *`` row."""
        values: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
        values["state"] = JobState(values["state"])
        values["force"] = bool(values["force"])
        values["deps"] = tuple(json.loads(values["deps"]))
        return cls(**values)


class FolderMark(NamedTuple):
    """One row of ``folder_marks`` (see there), without its inbox."""

    folder: str
    listing: str
    near: str
    watch: str
    watched: str
    parts: str
    inputs: int


class JobDigest(NamedTuple):
    """The columns of a job row a rescan compares, without building a Job."""

    id: int
    fingerprint: str
    deps: str  # JSON list, parsed only when needed
    force: bool
    state: str
    out_dir: str
    job_key: str


def backoff(waits: int) -> float:
    """Seconds before a job sent to ``waiting`` for the (waits+1)-th time is retried."""
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(waits, 32)))


def folder_stamp(folder: str | Path) -> str | None:
    """The inode and modification time of a folder: any file added, removed or renamed in it
    (every output and manifest is written by a rename) changes it. None when it is gone."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return f"{st.st_ino}:{st.st_mtime_ns}"


def _store_stamp(db: sqlite3.Connection, out_dir: str, job_key: str, stamp: str | None) -> None:
    if stamp is None:
        db.execute("DELETE FROM output_stamps WHERE out_dir = ?", (out_dir,))
    else:
        db.execute(
            "INSERT OR REPLACE INTO output_stamps (out_dir, job_key, stamp) VALUES (?, ?, ?)",
            (out_dir, job_key, stamp),
        )


def stat_key(st: os.stat_result) -> tuple[int, int, str]:
    """What the stat cache compares: size, mtime in nanoseconds and inode (as text)."""
    return _stat_key(st)


def _stat_key(st: os.stat_result) -> tuple[int, int, str]:
    # Inodes are stored as text: some filesystems report values beyond SQLite's int64.
    return st.st_size, st.st_mtime_ns, str(st.st_ino)


class Journal:
    """The SQLite journal in ``state_dir``; safe to share between threads."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(f"{path}: not a usable dropforge journal ({exc})") from None
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives process kills; a power loss may drop the newest
        # commits, which only means some work is redone.
        self._db.execute("PRAGMA synchronous = NORMAL")
        if self._complete():
            return  # the common case: no write transaction to open a journal
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: journal schema {version} is not the one this dropforge "
                    f"uses ({SCHEMA_VERSION}); move the file aside to start a fresh journal"
                )
            # Added without a version bump: older journals gain them, older code ignores them.
            for statement in _ADDED:
                db.execute(statement)

    def _complete(self) -> bool:
        """Whether the journal has this schema version and everything added since."""
        if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            return False
        names = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        return names >= _ADDED_NAMES

    def close(self) -> None:
        """Close the connection; the journal cannot be used afterwards."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction, taken before any read so that it cannot be overtaken."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- the stat → sha256 cache -------------------------------------------------------

    def cached_hash(self, path: Path, st: os.stat_result) -> str | None:
        """The cached sha256 of ``path`` if its size, mtime and inode still match ``st``."""
        rows = self._query(
            "SELECT sha256 FROM files WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
            (str(path), *_stat_key(st)),
        )
        return str(rows[0]["sha256"]) if rows else None

    def cached_hashes(self) -> dict[str, tuple[int, int, str, str]]:
        """The whole stat cache: path → (size, mtime_ns, inode, sha256), for a bulk rescan."""
        rows = self._query("SELECT path, size, mtime_ns, inode, sha256 FROM files")
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def job_digests(self, inbox: str) -> dict[str, JobDigest]:
        """input → the compared columns of its job, for every job of one inbox."""
        rows = self._query(
            "SELECT input, id, fingerprint, deps, force, state, out_dir, job_key FROM jobs"
            " WHERE inbox = ?",
            (inbox,),
        )
        return {r[0]: JobDigest(r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7]) for r in rows}

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

    def output_stamps(self) -> dict[str, tuple[str, str]]:
        """Every recorded output folder stamp: out_dir → (job_key, stamp)."""
        rows = self._query("SELECT out_dir, job_key, stamp FROM output_stamps")
        return {r[0]: (r[1], r[2]) for r in rows}

    def touch_files(self, paths: Iterable[str]) -> None:
        """Mark cached files as seen now, in one transaction (what keeps them from pruning)."""
        now = self.clock()
        with self._tx() as db:
            db.executemany("UPDATE files SET seen_at = ? WHERE path = ?", ((now, p) for p in paths))

    # --- folder marks ------------------------------------------------------------------

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

    # --- output folder stamps ----------------------------------------------------------

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
                _store_stamp(db, out_dir, job_key, stamp)

    def hash_file(self, path: Path, *, _after_read: Callable[[], None] | None = None) -> str:
        """Return the sha256 of a file, reading it only when its stat is not cached.

        Raises FileChangedError when the file changed while it was read, and
        FileNotFoundError when it is gone. ``_after_read`` lets tests act between the
        read and the re-stat.
        """
        key = _stat_key(os.stat(path))
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
        if _after_read is not None:
            _after_read()
        if _stat_key(os.stat(path)) != key:
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
            key = _stat_key(os.stat(path))
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

    # --- jobs ----------------------------------------------------------------------------

    def upsert_job(
        self,
        *,
        inbox: str,
        input: str,
        kind: str,
        fingerprint: str,
        job_key: str,
        out_dir: str,
        force: bool = False,
        deps: Iterable[str] = (),
    ) -> tuple[Job, bool]:
        """Queue a job for an input; return it and whether it was (re)queued.

        An unchanged row is left alone unless ``force``; a changed fingerprint or job key
        starts it over. A running job under a live lease is never touched.
        """
        now = self.clock()
        args = {
            "inbox": inbox,
            "input": input,
            "kind": kind,
            "fingerprint": fingerprint,
            "job_key": job_key,
            "out_dir": out_dir,
            "force": int(force),
            "deps": json.dumps(list(deps)),
            "now": now,
        }
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE inbox = ? AND input = ?", (inbox, input)
            ).fetchone()
            if row is None:
                new = db.execute(
                    "INSERT INTO jobs (inbox, input, kind, fingerprint, job_key, out_dir, state,"
                    " created_at, updated_at, force, deps) VALUES (:inbox, :input, :kind,"
                    " :fingerprint, :job_key, :out_dir, 'queued', :now, :now, :force, :deps)"
                    " RETURNING *",
                    args,
                ).fetchone()
                return Job.from_row(new), True
            job = Job.from_row(row)
            same = job.fingerprint == fingerprint and job.job_key == job_key
            leased = job.state is JobState.running and (job.lease_expires or 0.0) > now
            already_forced = job.state is JobState.queued and job.force
            if leased or (same and (not force or already_forced)):
                return job, False
            new = db.execute(
                f"UPDATE jobs SET {_REQUEUE_SET}, kind = :kind, fingerprint = :fingerprint,"
                " job_key = :job_key, out_dir = :out_dir, force = :force, deps = :deps,"
                " started_at = NULL, finished_at = NULL, seconds = NULL"
                " WHERE id = :id RETURNING *",
                {**args, "id": job.id},
            ).fetchone()
            return Job.from_row(new), True

    def update_identity(self, job_id: int, fingerprint: str, job_key: str, out_dir: str) -> None:
        """Record what a claimed job is actually about to do (its inputs may have changed)."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET fingerprint = ?, job_key = ?, out_dir = ?, updated_at = ?"
                " WHERE id = ?",
                (fingerprint, job_key, out_dir, self.clock(), job_id),
            )

    def get_job(self, inbox: str, input: str) -> Job | None:
        """The job of one input, or None."""
        rows = self._query("SELECT * FROM jobs WHERE inbox = ? AND input = ?", (inbox, input))
        return Job.from_row(rows[0]) if rows else None

    def get(self, job_id: int) -> Job:
        """The job with this id; KeyError when there is none."""
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise KeyError(f"no job {job_id} in the journal")
        return Job.from_row(rows[0])

    def delete(self, job_id: int) -> bool:
        """Remove a job row (its input left the inbox); True when there was one."""
        with self._tx() as db:
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def requeue(self, job_id: int, *, force: bool = False) -> bool:
        """Put a job back to queued with a fresh attempt count; False if it is leased or gone."""
        with self._tx() as db:
            return bool(self._requeue(db, "id = :id", {"id": job_id}, force))

    def _requeue(
        self, db: sqlite3.Connection, where: str, params: dict[str, Any], force: bool
    ) -> set[int]:
        rows = db.execute(
            f"UPDATE jobs SET {_REQUEUE_SET}, force = CASE WHEN :force THEN 1 ELSE force END"
            f" WHERE ({where}) AND {_NOT_LEASED} RETURNING id",
            {**params, "force": int(force), "now": self.clock()},
        ).fetchall()
        return {int(r[0]) for r in rows}

    def claim(self, owner: str, lease_seconds: float) -> Job | None:
        """Take the oldest runnable job (queued, or waiting and due) and lease it to owner."""
        now = self.clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT min(id) FROM (SELECT min(id) AS id FROM jobs WHERE state = 'queued'"
                " UNION ALL SELECT min(id) FROM jobs WHERE state = 'waiting'"
                " AND coalesce(not_before, 0) <= :now)",
                {"now": now},
            ).fetchone()
            if row[0] is None:
                return None
            claimed = db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1,"
                " lease_owner = :owner, lease_expires = :expires, started_at = :now,"
                " finished_at = NULL, seconds = NULL, progress_done = 0, progress_total = 0,"
                " progress_note = '', updated_at = :now WHERE id = :id RETURNING *",
                {"owner": owner, "expires": now + lease_seconds, "now": now, "id": row[0]},
            ).fetchone()
            return Job.from_row(claimed)

    def renew_lease(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        """Extend owner's lease on a running job; False when owner no longer holds it."""
        now = self.clock()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_expires = ?, updated_at = ?"
                " WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (now + lease_seconds, now, job_id, owner),
            )
            return cursor.rowcount > 0

    def mark_done(self, job_id: int, *, seconds: float) -> None:
        """The job's outputs are complete."""
        self._finish(job_id, "done", None, seconds)

    def mark_failed(self, job_id: int, error: str) -> None:
        """The input is bad; terminal until the input or its sidecar changes."""
        self._finish(job_id, "failed", error, None)

    def _finish(self, job_id: int, state: str, error: str | None, seconds: float | None) -> None:
        now = self.clock()
        with self._tx() as db:
            if state == "done":
                row = db.execute("SELECT out_dir, job_key FROM jobs WHERE id = ?", (job_id,))
                found = row.fetchone()
                if found is not None:
                    out_dir = found["out_dir"]
                    _store_stamp(db, out_dir, found["job_key"], folder_stamp(out_dir))
            # A forced regeneration is spent once it has ended one way or the other.
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, seconds = ?, finished_at = ?,"
                " updated_at = ?, not_before = NULL, lease_owner = NULL, lease_expires = NULL,"
                " force = 0 WHERE id = ?",
                (state, error, seconds, now, now, job_id),
            )

    def mark_waiting(self, job_id: int, error: str, *, retry_in: float | None = None) -> None:
        """The cause is outside the input: retry later (default: exponential backoff).

        A claim that ends here does not count toward attempts.
        """
        now = self.clock()
        with self._tx() as db:
            row = db.execute("SELECT waits FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            delay = backoff(row["waits"]) if retry_in is None else retry_in
            db.execute(
                "UPDATE jobs SET state = 'waiting', error = ?, not_before = ?, waits = waits + 1,"
                " attempts = CASE WHEN state = 'running' THEN max(attempts - 1, 0)"
                " ELSE attempts END, lease_owner = NULL, lease_expires = NULL, updated_at = ?"
                " WHERE id = ?",
                (error, now + delay, now, job_id),
            )

    def mark_queued(self, job_id: int) -> None:
        """A stop interrupted the job: queue it again without counting the claim."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', not_before = NULL,"
                " attempts = CASE WHEN state = 'running' THEN max(attempts - 1, 0)"
                " ELSE attempts END, lease_owner = NULL, lease_expires = NULL, updated_at = ?"
                " WHERE id = ?",
                (self.clock(), job_id),
            )

    def recover(
        self,
        max_attempts: int,
        *,
        alive: Callable[[str], bool] | None = None,
        spare: str | None = None,
    ) -> tuple[int, int]:
        """Requeue running jobs that no process runs any more; quarantine crash loops.

        ``alive(owner)`` tells whether a lease owner still runs (another dropforge on the
        same journal); its jobs are left alone until their lease runs out. The jobs of owner
        ``spare`` are left alone whatever their lease. Returns (requeued, quarantined).
        """
        now = self.clock()
        with self._tx() as db:
            rows = [
                r
                for r in db.execute(
                    "SELECT id, inbox, input, attempts, lease_owner, lease_expires FROM jobs"
                    " WHERE state = 'running'"
                ).fetchall()
                if (spare is None or r["lease_owner"] != spare)
                and (
                    alive is None
                    or not r["lease_owner"]
                    or (r["lease_expires"] or 0.0) <= now
                    or not alive(r["lease_owner"])
                )
            ]
            doomed = [r for r in rows if r["attempts"] >= max_attempts]
            for r in doomed:
                retry_path = shlex.quote(str(Path(r["inbox"]) / r["input"]))
                error = (
                    f"quarantined: {r['attempts']} claims never finished (the process died "
                    f"each time); run dropforge retry {retry_path}"
                )
                db.execute(
                    "UPDATE jobs SET state = 'quarantined', error = ?, finished_at = ?,"
                    " updated_at = ?, lease_owner = NULL, lease_expires = NULL WHERE id = ?",
                    (error, now, now, r["id"]),
                )
            doomed_ids = {r["id"] for r in doomed}
            for r in rows:
                if r["id"] in doomed_ids:
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires = NULL,"
                    " updated_at = ? WHERE id = ?",
                    (now, r["id"]),
                )
        return len(rows) - len(doomed), len(doomed)

    def set_progress(self, job_id: int, done: int, total: int, note: str = "") -> None:
        """Record how far a running job has come (shown by ``dropforge status``)."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET progress_done = ?, progress_total = ?, progress_note = ?,"
                " updated_at = ? WHERE id = ?",
                (done, total, note, self.clock(), job_id),
            )

    # --- views -------------------------------------------------------------------------

    def counts(self) -> dict[JobState, int]:
        """Number of jobs in every state, zeros included."""
        found = {
            r["state"]: r["n"]
            for r in self._query("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        }
        return {s: int(found.get(s.value, 0)) for s in JobState}

    def count(self, state: JobState) -> int:
        """Number of jobs in one state (an index range, however big the journal)."""
        rows = self._query("SELECT count(*) FROM jobs WHERE state = ?", (JobState(state).value,))
        return int(rows[0][0])

    def jobs(self, states: Iterable[JobState] | None = None, limit: int = 100) -> list[Job]:
        """Jobs in arrival order, optionally only those in the given states."""
        if states is None:
            rows = self._query("SELECT * FROM jobs ORDER BY id LIMIT ?", (limit,))
        else:
            wanted = [JobState(s).value for s in states]
            marks = ", ".join("?" * len(wanted))
            rows = self._query(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id LIMIT ?",
                (*wanted, limit),
            )
        return [Job.from_row(r) for r in rows]

    def recent_failures(self, limit: int = 10) -> list[Job]:
        """Failed and quarantined jobs, newest first."""
        rows = self._query(
            "SELECT * FROM jobs WHERE state IN ('failed', 'quarantined')"
            " ORDER BY updated_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [Job.from_row(r) for r in rows]

    def running(self) -> list[Job]:
        """Jobs in state running, in arrival order."""
        return self.jobs([JobState.running])

    # --- maintenance -------------------------------------------------------------------

    def retry(
        self,
        *,
        inputs: Iterable[tuple[str, str]] = (),
        states: Iterable[JobState] = (),
        force: bool = False,
    ) -> int:
        """Requeue the named (inbox, input) jobs and every job in ``states``; return how many.

        ``force`` makes the worker regenerate even when the outputs look complete.
        """
        done: set[int] = set()
        with self._tx() as db:
            for inbox, input in inputs:
                where = "inbox = :inbox AND input = :input"
                done |= self._requeue(db, where, {"inbox": inbox, "input": input}, force)
            for state in states:
                done |= self._requeue(db, "state = :state", {"state": state.value}, force)
        return len(done)

    def forget_missing(self, inbox: str, present: set[str]) -> int:
        """Delete the jobs of inputs no longer in the inbox (running ones stay)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, input FROM jobs WHERE inbox = ? AND state != 'running'", (inbox,)
            ).fetchall()
            gone = [(r["id"],) for r in rows if r["input"] not in present]
            db.executemany("DELETE FROM jobs WHERE id = ?", gone)
        return len(gone)

    def prune(self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists) -> int:
        """Forget what is gone: done jobs untouched for ``older_than`` seconds whose input has
        left the inbox, and cache rows unseen as long whose file is gone; return how many.

        A done input still in the inbox keeps its job and cache rows however old they are:
        a rescan that skips its folder as unchanged (folder marks) does not touch them, and
        forgetting them would mean reading every such input again.
        """
        cutoff = self.clock() - older_than
        jobs = self._query(
            "SELECT id, inbox, input FROM jobs WHERE state = 'done' AND updated_at < ?", (cutoff,)
        )
        files = self._query("SELECT path FROM files WHERE seen_at < ?", (cutoff,))
        gone_jobs = [(r[0], cutoff) for r in jobs if not exists(os.path.join(r[1], r[2]))]
        gone_files = [(r[0], cutoff) for r in files if not exists(r[0])]
        with self._tx() as db:
            deleted = db.executemany(
                "DELETE FROM jobs WHERE id = ? AND state = 'done' AND updated_at < ?", gone_jobs
            ).rowcount
            deleted += db.executemany(
                "DELETE FROM files WHERE path = ? AND seen_at < ?", gone_files
            ).rowcount
            db.execute("DELETE FROM output_stamps WHERE out_dir NOT IN (SELECT out_dir FROM jobs)")
            db.execute(
                "DELETE FROM verified_inputs WHERE NOT EXISTS (SELECT 1 FROM jobs"
                " WHERE jobs.inbox = verified_inputs.inbox AND jobs.input = verified_inputs.input)"
            )
        return int(deleted)
