"""The SQLite journal itself: its file, schema, the stat → sha256 cache and pruning (the job
rows it shares with every job store are in test_store_contract.py)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import ConfigError, FileChangedError
from daemon.store import sqlite_base
from daemon.store.sqlite import SqliteJournal
from daemon.values import AttemptEnd, AttemptStage, JobState
from tests.helpers import JOB_INBOX, SettableClock, add_job


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def journal(tmp_path: Path, clock: SettableClock) -> Iterator[SqliteJournal]:
    with SqliteJournal(tmp_path / "state" / "journal.sqlite3", clock=clock) as j:
        yield j


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the database file ---------------------------------------------------------------------


def test_a_copy_reads_the_journal_and_writes_nothing_back(
    journal: SqliteJournal, tmp_path: Path
) -> None:
    """A copy (for the dry run) has the file's rows; its writes stay in memory."""
    add_job(journal, "cat.png")
    before = journal.path.read_bytes()
    with SqliteJournal(journal.path, copy=True) as copy:
        assert copy.get_job(JOB_INBOX, "cat.png") is not None
        add_job(copy, "dog.png")
        assert copy.get_job(JOB_INBOX, "dog.png") is not None
    assert journal.get_job(JOB_INBOX, "dog.png") is None
    assert journal.path.read_bytes() == before
    missing = tmp_path / "none" / "journal.sqlite3"
    with SqliteJournal(missing, copy=True) as empty:
        assert empty.jobs() == []
    assert not missing.parent.exists()


def test_database_is_wal_with_schema_version(journal: SqliteJournal) -> None:
    """The journal file is in WAL mode and carries the schema version."""
    other = sqlite3.connect(journal.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == sqlite_base.SCHEMA_VERSION == 3
    finally:
        other.close()


def test_reopening_keeps_rows(tmp_path: Path, clock: SettableClock) -> None:
    """A second open of the same file sees the rows of the first."""
    path = tmp_path / "journal.sqlite3"
    with SqliteJournal(path, clock=clock) as first:
        job, _ = add_job(first)
    with SqliteJournal(path, clock=clock) as second:
        assert second.get(job.id) == job


def test_unknown_schema_version_is_a_config_error(tmp_path: Path) -> None:
    """A journal written by a newer schema version is refused with advice."""
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(ConfigError) as info:
        SqliteJournal(path)
    assert str(info.value) == (
        f"{path}: journal schema 7 is newer than the one this dropforge uses (3); "
        "upgrade dropforge, or move the file aside to start a fresh journal"
    )


def test_version_1_journal_is_upgraded_in_place(tmp_path: Path, clock: SettableClock) -> None:
    """A journal of schema 1 (before queue control) opens, keeps its jobs and gains the new
    columns: arrival order, no priority, no cancel, nothing planned."""
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(sqlite_base._SCHEMA + "PRAGMA user_version = 1;")
    for name in ("b.png", "a.png"):
        db.execute(
            "INSERT INTO jobs (inbox, input, kind, fingerprint, job_key, out_dir, state,"
            " created_at, updated_at) VALUES ('/in', ?, 'image', 'fp', 'k', '/out', 'queued',"
            " 1, 1)",
            (name,),
        )
    db.commit()
    db.close()
    with SqliteJournal(path, clock=clock) as journal:
        first, second = journal.jobs()
        assert (first.input, first.priority, first.position, first.cancel) == (
            "b.png",
            0,
            None,
            None,
        )
        assert (first.task, first.planned, first.finished) == ("", (), ())
        journal.move(second.id, to="top")
        claimed = journal.claim("w", 60)
        assert claimed is not None and claimed.input == "a.png"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    db.close()


def test_a_version_1_journal_is_upgraded_in_place(tmp_path: Path, clock: SettableClock) -> None:
    """A journal written before the attempts table opens as version 3 (attempts, then claim
    numbers) with its rows intact, its claim that a dead process left running is judged as
    every death was then, and its next claim takes the first fencing number."""
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.executescript((Path(__file__).parent / "data" / "journal-v1.sql").read_text())
    db.execute("PRAGMA user_version = 1")
    db.close()
    with SqliteJournal(path, clock=clock) as journal:
        assert journal._query("PRAGMA user_version")[0][0] == 3
        names = {r[0] for r in journal._query("SELECT name FROM sqlite_master")}
        assert {"attempts", "attempts_forget", "model_loads"} <= names
        crashy = journal.get_job(JOB_INBOX, "crashy.png")
        done = journal.get_job(JOB_INBOX, "done.png")
        assert crashy is not None and done is not None
        assert (crashy.state, crashy.attempts, crashy.progress_done) == (JobState.running, 2, 1)
        assert (crashy.claim, done.claim) == (0, 0)
        assert (done.state, done.attempts) == (JobState.done, 1)
        assert journal.attempts(crashy.id) == []
        assert journal.recover(max_attempts=3) == (1, 0)
        (died,) = journal.attempts(crashy.id)
        assert (died.number, died.ended, died.stage, died.point, died.counted) == (
            1,
            AttemptEnd.died,
            AttemptStage.generating,
            (1, 0),
            True,
        )
        assert journal.get(crashy.id).attempts == 2
        claimed = journal.claim("host:3", 60)
        assert claimed is not None and claimed.id == crashy.id and claimed.claim == 1
        assert [a.number for a in journal.attempts(crashy.id)] == [1, 2]
        assert not journal.mark_done(crashy.id, seconds=1.0, claim=0)
    with SqliteJournal(path, clock=clock) as again:  # opened as complete: no upgrade twice
        assert again._query("PRAGMA user_version")[0][0] == 3


def test_model_loads_are_remembered(journal: SqliteJournal, clock: SettableClock) -> None:
    """A model recorded as loaded is known afterwards; others are not."""
    assert not journal.model_loaded("/models/sd on cpu")
    journal.note_model_loaded("/models/sd on cpu")
    journal.note_model_loaded("/models/sd on cpu")
    assert journal.model_loaded("/models/sd on cpu")
    assert not journal.model_loaded("/models/sd on cuda")


def test_garbage_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not SQLite is refused, naming the file."""
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError) as info:
        SqliteJournal(path)
    assert str(info.value) == (f"{path}: not a usable dropforge journal (file is not a database)")


def test_failed_statement_rolls_back(journal: SqliteJournal) -> None:
    """A statement that fails inside a transaction leaves the journal unchanged and usable."""
    with pytest.raises(sqlite3.IntegrityError):
        add_job(journal, kind=None)
    assert journal.jobs() == []
    assert add_job(journal)[1]


# --- the hash cache ------------------------------------------------------------------------

_opened: list[str] = []
_watching: list[Path] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    path = args[0] if event == "open" and _watching else None
    if isinstance(path, (str, Path)) and Path(path) in _watching:
        _opened.append(str(path))


_hook_installed = False


def watch_opens(path: Path) -> None:
    """Record every open() of path from now on (audit hooks cannot be removed, so one hook)."""
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _opened.clear()
    _watching[:] = [path]


def test_hash_file_returns_sha256(journal: SqliteJournal, tmp_path: Path) -> None:
    """hash_file returns the file's hex sha256 and caches it by stat."""
    path = tmp_path / "cat.png"
    path.write_bytes(b"x" * 3_000_000)
    assert journal.cached_hash(path, path.stat()) is None
    assert journal.hash_file(path) == sha(b"x" * 3_000_000)
    assert journal.cached_hash(path, path.stat()) == sha(b"x" * 3_000_000)


def test_cache_hit_does_not_open_the_file(journal: SqliteJournal, tmp_path: Path) -> None:
    """A second hash of an unchanged file is answered without opening it."""
    path = tmp_path / "cat.png"
    path.write_bytes(b"meow")
    watch_opens(path)
    try:
        journal.hash_file(path)
        assert _opened == [str(path)]
        assert journal.hash_file(path) == sha(b"meow")
        assert _opened == [str(path)]
    finally:
        _watching.clear()


def test_cache_trusts_size_mtime_and_inode(journal: SqliteJournal, tmp_path: Path) -> None:
    """Content replaced in place keeping size and mtime gets the cached hash; a new mtime not."""
    path = tmp_path / "cat.png"
    path.write_bytes(b"aaaa")
    journal.hash_file(path)
    st = path.stat()
    with path.open("r+b") as handle:
        handle.write(b"bbbb")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert journal.hash_file(path) == sha(b"aaaa")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert journal.hash_file(path) == sha(b"bbbb")


def test_replaced_file_is_hashed_again(journal: SqliteJournal, tmp_path: Path) -> None:
    """A file renamed into place (new inode, same size and mtime) is read again."""
    path = tmp_path / "cat.png"
    path.write_bytes(b"aaaa")
    journal.hash_file(path)
    st = path.stat()
    new = tmp_path / "new.tmp"
    new.write_bytes(b"bbbb")
    keep = tmp_path / "keep"  # holds the old inode so it cannot be reused
    os.link(path, keep)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, path)
    assert path.stat().st_ino != st.st_ino
    assert journal.hash_file(path) == sha(b"bbbb")


def test_file_changed_while_hashing(journal: SqliteJournal, tmp_path: Path) -> None:
    """A file written to while it is hashed raises and is not cached; once still, it is."""
    path = tmp_path / "cat.png"
    path.write_bytes(os.urandom(8 << 20))
    stop = threading.Event()

    def keep_writing() -> None:  # as a sync client or a slow copy would
        with path.open("ab") as handle:
            while not stop.is_set():
                handle.write(b"more")
                handle.flush()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        with pytest.raises(FileChangedError) as info:
            for _ in range(50):  # each read of 8 MiB overlaps many writes
                journal.hash_file(path)
    finally:
        stop.set()
        writer.join()
    assert str(info.value) == f"{path}: changed while it was being read (still being written?)"
    assert journal.cached_hash(path, path.stat()) is None
    assert journal.hash_file(path) == sha(path.read_bytes())
    assert journal.cached_hash(path, path.stat()) == sha(path.read_bytes())


def test_missing_file_raises_file_not_found(journal: SqliteJournal, tmp_path: Path) -> None:
    """Hashing a file that is gone raises FileNotFoundError for the caller to handle."""
    with pytest.raises(FileNotFoundError):
        journal.hash_file(tmp_path / "gone.png")


# --- upsert --------------------------------------------------------------------------------


# --- claims and transitions ----------------------------------------------------------------


# --- views and maintenance -----------------------------------------------------------------


def test_prune_forgets_old_jobs_and_cache_rows_of_what_is_gone(
    journal: SqliteJournal, clock: SettableClock, tmp_path: Path
) -> None:
    """prune deletes done jobs and cache rows untouched for the given time whose input or file
    is gone; what is still there is kept however old (rescans of marked folders touch nothing)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "kept.png").write_bytes(b"k")
    old_done = add_job(journal, "old.png", inbox=str(inbox))[0]  # its input has gone
    old_kept = add_job(journal, "kept.png", inbox=str(inbox))[0]
    add_job(journal, "old-queued.png", inbox=str(inbox))
    journal.mark_done(old_done.id, seconds=1)
    journal.mark_done(old_kept.id, seconds=1)
    stale, seen, still = tmp_path / "stale.png", tmp_path / "seen.png", tmp_path / "still.png"
    for path in (stale, seen, still):
        path.write_bytes(path.name.encode())
        journal.hash_file(path)
    clock.advance(100)
    journal.hash_file(seen)  # a cache hit counts as seen
    stale.unlink()
    new_done = add_job(journal, "new.png", inbox=str(inbox))[0]
    journal.mark_done(new_done.id, seconds=1)
    assert journal.prune(older_than=50) == 2  # old.png's job and stale.png's cache row
    assert [j.input for j in journal.jobs()] == ["kept.png", "old-queued.png", "new.png"]
    cached = {r[0] for r in journal._query("SELECT path FROM files")}
    assert cached == {str(seen), str(still)}
    assert journal.cached_hash(still, still.stat()) == sha(b"still.png")


def test_an_older_journal_gains_the_tables_and_triggers_added_since(tmp_path: Path) -> None:
    """Opening checks for every added table and trigger, and creates the missing ones."""
    path = tmp_path / "journal.sqlite3"
    SqliteJournal(path).close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TRIGGER folder_marks_update; DROP TABLE folder_marks; DROP TABLE output_stamps;"
    )
    db.close()
    with SqliteJournal(path) as journal:
        names = {r[0] for r in journal._query("SELECT name FROM sqlite_master")}
    assert {"folder_marks", "folder_marks_update", "output_stamps"} <= names
    for statement in sqlite_base._ADDED:  # each names what it creates in _ADDED_NAMES
        created = statement.split("IF NOT EXISTS", 1)[1].split()[0]
        assert created in sqlite_base._ADDED_NAMES
    assert len(sqlite_base._ADDED) == len(sqlite_base._ADDED_NAMES)
