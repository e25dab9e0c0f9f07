"""The SQLite database behind the embedded journal: one connection for every thread (a lock
keeps transactions whole), WAL, and the schema with what was added to it since version 1.

Writes take ``BEGIN IMMEDIATE`` so that two processes on one file never claim the same job.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from daemon.errors import ConfigError
from daemon.values import Clock

# 2: queue control (priority, position, cancel requests, planned outputs) and how far each
# claim of a job got (attempts, model_loads); a version 1 journal is upgraded in place when it
# is opened (_UPGRADES, then _ADDED).
# 3: fencing numbers: every claim takes a new number, and a worker's later writes of the job
# name it, so a process that lost its claim (frozen past its lease, say) cannot overwrite the
# new owner's.
SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 10.0

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

# The steps from each version to the next: a journal of version N runs _UPGRADES[N], then
# the later ones, in one transaction; a new journal is made at version 1 and upgraded.
_UPGRADES: dict[int, list[str]] = {
    # 1 → 2, queue control: claims by priority, then position (NULL: arrival, the id); a
    # cancel asked of a running job (or why a canceled job was canceled); the planned
    # outputs [[file, seed], …] and the indices of those finished, for the queue and the UI.
    1: [
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN position REAL",
        "ALTER TABLE jobs ADD COLUMN cancel TEXT",
        "ALTER TABLE jobs ADD COLUMN task TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN planned TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE jobs ADD COLUMN finished TEXT NOT NULL DEFAULT '[]'",
        "CREATE INDEX jobs_order ON jobs (state, priority DESC, coalesce(position, id))",
    ],
    # 2 → 3, fencing: the number of a job's latest claim (0: never claimed), drawn from the
    # highest number in the journal plus one (an index keeps that a lookup).
    2: [
        "ALTER TABLE jobs ADD COLUMN claim INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX jobs_claim_number ON jobs (claim)",
    ],
}

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

# Schema 2. Every claim of a job since it was last (re)queued: who held it, how it ended and
# the furthest point it reached (``outputs`` finished of ``total``, then ``steps`` denoising
# steps since the last finished output, ``stage`` before the first step; ``start_outputs``
# the outputs already there when it first reported). ``counted`` says whether a claim the
# process died in counted toward quarantine (see store.attempts).
_ATTEMPTS = """CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL, number INTEGER NOT NULL, owner TEXT, started_at REAL NOT NULL,
    ended_at REAL, ended TEXT NOT NULL DEFAULT 'running', stage TEXT NOT NULL DEFAULT 'preparing',
    outputs INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '',
    counted INTEGER NOT NULL DEFAULT 0, start_outputs INTEGER,
    PRIMARY KEY (job_id, number)
)"""
_ATTEMPTS_TRIGGER = """CREATE TRIGGER IF NOT EXISTS attempts_forget AFTER DELETE ON jobs
    BEGIN DELETE FROM attempts WHERE job_id = OLD.id; END"""
# Schema 2. Models (source, device, files' stats) that have loaded on this host: a process that
# dies while loading one of them again was not killed by the job it was loading it for.
_MODEL_LOADS = """CREATE TABLE IF NOT EXISTS model_loads (
    model TEXT PRIMARY KEY, loaded_at REAL NOT NULL
)"""

_ADDED = [
    _OUTPUT_STAMPS,
    _VERIFIED_INPUTS,
    _FOLDER_MARKS,
    *_FOLDER_MARK_TRIGGERS,
    _ATTEMPTS,
    _ATTEMPTS_TRIGGER,
    _MODEL_LOADS,
]
_ADDED_NAMES = {
    "output_stamps",
    "verified_inputs",
    "folder_marks",
    "folder_marks_insert",
    "folder_marks_delete",
    "folder_marks_update",
    "attempts",
    "attempts_forget",
    "model_loads",
}
_Database = TypeVar("_Database", bound="SqliteDatabase")


def fence(claim: int | None, table: str = "") -> str:
    """The condition a write of a claimed job adds: that claim is still the live one (``table``
    qualifies the columns, e.g. ``jobs.``)."""
    if claim is None:
        return ""
    return f" AND {table}state = 'running' AND {table}claim = :claim"


class SqliteDatabase:
    """An open journal file: its connection, transactions and schema."""

    def __init__(self, path: Path, *, clock: Clock = time.time, copy: bool = False) -> None:
        """Open the journal at ``path`` (created if missing).

        ``copy``: work on a private in-memory copy of it instead (empty when there is no file
        yet); the file is only read, never created or written. ``once --dry-run`` surveys
        such a copy, so that what it reports comes from the survey a real run makes.
        """
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        if not copy:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            ":memory:" if copy else path,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        self._db.row_factory = sqlite3.Row
        try:
            if copy and path.is_file():
                self._copy_from(path)
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(f"{path}: not a usable dropforge journal ({exc})") from None
        except BaseException:
            self._db.close()
            raise

    def _copy_from(self, path: Path) -> None:
        """Fill this (in-memory) database with the journal at ``path``, read-only."""
        source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            source.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            source.backup(self._db)
        finally:
            source.close()

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
                version = 1
            elif version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: journal schema {version} is newer than the one this "
                    f"dropforge uses ({SCHEMA_VERSION}); upgrade dropforge, or move the file "
                    "aside to start a fresh journal"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _UPGRADES[step]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # Tables and triggers added since version 1 (CREATE … IF NOT EXISTS): older journals
            # gain them; the version tells older code it would not keep them up.
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

    def __enter__(self: _Database) -> _Database:
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

    def revision(self) -> int:
        """A number that changes whenever another handle (any thread or process) commits.

        SQLite's ``PRAGMA data_version``: this handle's own commits do not change it, so a
        watcher keeps a handle of its own that only reads.
        """
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])
