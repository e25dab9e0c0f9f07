"""The SQLite journal: stat → sha256 cache, job states, leases, claims and maintenance."""

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

from daemon import journal as journal_module
from daemon.errors import ConfigError
from daemon.journal import FileChangedError, Job, JobState, Journal

INBOX = "/srv/inbox"


class Clock:
    """A settable clock for the journal."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Iterator[Journal]:
    with Journal(tmp_path / "state" / "journal.sqlite3", clock=clock) as j:
        yield j


def add(journal: Journal, input: str = "cat.png", **kw: Any) -> tuple[Job, bool]:
    """Upsert a job with defaults for every field not given."""
    args: dict[str, Any] = {
        "inbox": INBOX,
        "input": input,
        "kind": "image",
        "fingerprint": "fp1",
        "job_key": "key1",
        "out_dir": f"/srv/outbox/{input}",
    }
    args.update(kw)
    return journal.upsert_job(**args)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the database file ---------------------------------------------------------------------


def test_database_is_wal_with_schema_version(journal: Journal) -> None:
    """The journal file is in WAL mode and carries the schema version."""
    other = sqlite3.connect(journal.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        other.close()


def test_reopening_keeps_rows(tmp_path: Path, clock: Clock) -> None:
    """A second open of the same file sees the rows of the first."""
    path = tmp_path / "journal.sqlite3"
    with Journal(path, clock=clock) as first:
        job, _ = add(first)
    with Journal(path, clock=clock) as second:
        assert second.get(job.id) == job


def test_unknown_schema_version_is_a_config_error(tmp_path: Path) -> None:
    """A journal written by another schema version is refused with advice."""
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(ConfigError) as info:
        Journal(path)
    assert str(info.value) == (
        f"{path}: journal schema 7 is not the one this dropforge uses (1); "
        "move the file aside to start a fresh journal"
    )


def test_garbage_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not SQLite is refused, naming the file."""
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError) as info:
        Journal(path)
    assert str(info.value) == (f"{path}: not a usable dropforge journal (file is not a database)")


def test_failed_statement_rolls_back(journal: Journal) -> None:
    """A statement that fails inside a transaction leaves the journal unchanged and usable."""
    with pytest.raises(sqlite3.IntegrityError):
        add(journal, kind=None)
    assert journal.jobs() == []
    assert add(journal)[1]


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


def test_hash_file_returns_sha256(journal: Journal, tmp_path: Path) -> None:
    """hash_file returns the file's hex sha256 and caches it by stat."""
    path = tmp_path / "cat.png"
    path.write_bytes(b"x" * 3_000_000)
    assert journal.cached_hash(path, path.stat()) is None
    assert journal.hash_file(path) == sha(b"x" * 3_000_000)
    assert journal.cached_hash(path, path.stat()) == sha(b"x" * 3_000_000)


def test_cache_hit_does_not_open_the_file(journal: Journal, tmp_path: Path) -> None:
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


def test_cache_trusts_size_mtime_and_inode(journal: Journal, tmp_path: Path) -> None:
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


def test_replaced_file_is_hashed_again(journal: Journal, tmp_path: Path) -> None:
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


def test_file_changed_while_hashing(journal: Journal, tmp_path: Path) -> None:
    """A file that grows between the read and the re-stat raises and is not cached."""
    path = tmp_path / "cat.png"
    path.write_bytes(b"first part")

    def append() -> None:
        with path.open("ab") as handle:
            handle.write(b", second part")

    with pytest.raises(FileChangedError) as info:
        journal.hash_file(path, _after_read=append)
    assert str(info.value) == f"{path}: changed while it was being read (still being written?)"
    assert journal.cached_hash(path, path.stat()) is None
    assert journal.hash_file(path) == sha(b"first part, second part")


def test_missing_file_raises_file_not_found(journal: Journal, tmp_path: Path) -> None:
    """Hashing a file that is gone raises FileNotFoundError for the caller to handle."""
    with pytest.raises(FileNotFoundError):
        journal.hash_file(tmp_path / "gone.png")


# --- upsert --------------------------------------------------------------------------------


def test_new_job_is_queued(journal: Journal, clock: Clock) -> None:
    """A new input becomes a queued job with the given identity."""
    job, changed = add(journal, deps=["_defaults.toml", "a/mask.png"])
    assert changed
    assert job.state is JobState.queued
    assert (job.inbox, job.input, job.kind, job.fingerprint, job.job_key) == (
        INBOX,
        "cat.png",
        "image",
        "fp1",
        "key1",
    )
    assert (job.attempts, job.waits, job.error, job.force) == (0, 0, None, False)
    assert job.created_at == job.updated_at == clock.now
    assert job.deps == ("_defaults.toml", "a/mask.png")
    assert journal.get_job(INBOX, "cat.png") == job
    assert journal.get_job(INBOX, "dog.png") is None


def test_unchanged_job_is_left_alone(journal: Journal, clock: Clock) -> None:
    """Upserting the same fingerprint and key leaves a finished job finished."""
    job, _ = add(journal)
    journal.claim("w", 60)
    journal.mark_done(job.id, seconds=4.0)
    done = journal.get(job.id)
    clock.advance(10)
    again, changed = add(journal)
    assert not changed
    assert again == done
    assert again.state is JobState.done


@pytest.mark.parametrize("change", [{"fingerprint": "fp2"}, {"job_key": "key2"}])
def test_changed_identity_starts_over(
    journal: Journal, clock: Clock, change: dict[str, str]
) -> None:
    """A changed fingerprint or job key requeues a failed job with fresh counters."""
    job, _ = add(journal)
    journal.claim("w", 60)
    journal.mark_waiting(job.id, "no model", retry_in=5)
    clock.advance(5)
    journal.claim("w", 60)
    journal.mark_failed(job.id, "cat.png: not an image")
    failed = journal.get(job.id)
    assert (failed.attempts, failed.waits, failed.error) == (1, 1, "cat.png: not an image")
    again, changed = add(journal, out_dir="/srv/outbox/new", **change)
    assert changed
    assert again.id == job.id
    assert again.state is JobState.queued
    assert (again.attempts, again.waits, again.error, again.not_before) == (0, 0, None, None)
    assert again.out_dir == "/srv/outbox/new"


def test_force_requeues_an_unchanged_job_once(journal: Journal) -> None:
    """force requeues a done job and sets the flag; a repeat while queued changes nothing."""
    job, _ = add(journal)
    journal.mark_done(job.id, seconds=1.0)
    forced, changed = add(journal, force=True)
    assert changed
    assert (forced.state, forced.force) == (JobState.queued, True)
    assert add(journal, force=True) == (forced, False)


def test_running_job_is_not_reset_under_a_live_lease(journal: Journal, clock: Clock) -> None:
    """A changed input does not disturb a running job until its lease has expired."""
    add(journal)
    running = journal.claim("w", 60)
    assert running is not None
    assert add(journal, fingerprint="fp2") == (running, False)
    clock.advance(61)
    job, changed = add(journal, fingerprint="fp2")
    assert changed
    assert (job.state, job.fingerprint, job.lease_owner) == (JobState.queued, "fp2", None)


def test_update_identity_and_delete(journal: Journal) -> None:
    """update_identity rewrites the identity in place; delete removes the row."""
    job, _ = add(journal)
    journal.update_identity(job.id, "fp9", "key9", "/srv/outbox/x")
    updated = journal.get(job.id)
    assert (updated.fingerprint, updated.job_key, updated.out_dir) == (
        "fp9",
        "key9",
        "/srv/outbox/x",
    )
    assert journal.delete(job.id)
    assert not journal.delete(job.id)
    with pytest.raises(KeyError, match=f"no job {job.id} in the journal"):
        journal.get(job.id)


# --- claims and transitions ----------------------------------------------------------------


def test_claim_takes_jobs_in_arrival_order(journal: Journal, clock: Clock) -> None:
    """claim returns the oldest runnable job and leases it."""
    first, _ = add(journal, "b.png")
    second, _ = add(journal, "a.png")
    clock.advance(5)
    job = journal.claim("host:1", 600)
    assert job is not None
    assert job.id == first.id
    assert (job.state, job.attempts, job.lease_owner) == (JobState.running, 1, "host:1")
    assert (job.lease_expires, job.started_at) == (clock.now + 600, clock.now)
    assert journal.claim("host:1", 600) == journal.get(second.id)
    assert journal.claim("host:1", 600) is None


def test_waiting_job_is_claimed_when_due(journal: Journal, clock: Clock) -> None:
    """A waiting job is skipped until its not_before, then taken in arrival order."""
    early, _ = add(journal, "early.png")
    assert journal.claim("w", 60) is not None
    journal.mark_waiting(early.id, "model not available", retry_in=100)
    late, _ = add(journal, "late.png")
    claimed = journal.claim("w", 60)
    assert claimed is not None and claimed.id == late.id
    journal.mark_done(late.id, seconds=1)
    assert journal.claim("w", 60) is None
    clock.advance(100)
    again = journal.claim("w", 60)
    assert again is not None and again.id == early.id


def test_backoff_grows_and_caps(journal: Journal, clock: Clock) -> None:
    """Default waits back off 30 s, 60 s, 120 s … up to one hour, without counting attempts."""
    job, _ = add(journal)
    delays = []
    for _ in range(9):
        assert journal.claim("w", 60) is not None
        journal.mark_waiting(job.id, "disk below min_free_mb")
        waiting = journal.get(job.id)
        assert waiting.not_before is not None
        delays.append(waiting.not_before - clock.now)
        clock.now = waiting.not_before
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    final = journal.get(job.id)
    assert (final.state, final.waits, final.attempts) == (JobState.waiting, 9, 0)
    assert (final.error, final.lease_owner) == ("disk below min_free_mb", None)


def test_mark_done_records_seconds_and_clears_lease(journal: Journal, clock: Clock) -> None:
    """mark_done ends the job, records its time and spends the force flag."""
    job, _ = add(journal, force=True)
    journal.claim("w", 60)
    clock.advance(7)
    journal.mark_done(job.id, seconds=6.5)
    done = journal.get(job.id)
    assert (done.state, done.seconds, done.finished_at) == (JobState.done, 6.5, clock.now)
    assert (done.lease_owner, done.lease_expires, done.force) == (None, None, False)


def test_mark_failed_records_error(journal: Journal) -> None:
    """mark_failed ends the job with the user-facing error."""
    job, _ = add(journal)
    journal.claim("w", 60)
    journal.mark_failed(job.id, "cat.toml: count must be 1..20, got 50")
    failed = journal.get(job.id)
    assert (failed.state, failed.error) == (
        JobState.failed,
        "cat.toml: count must be 1..20, got 50",
    )
    assert journal.claim("w", 60) is None


def test_mark_queued_does_not_count_the_claim(journal: Journal) -> None:
    """A job interrupted by a stop goes back to queued with its claim uncounted."""
    job, _ = add(journal)
    journal.claim("w", 60)
    journal.mark_queued(job.id)
    queued = journal.get(job.id)
    assert (queued.state, queued.attempts, queued.lease_owner) == (JobState.queued, 0, None)
    journal.mark_queued(job.id)
    assert journal.get(job.id).attempts == 0


def test_renew_lease_only_for_the_owner(journal: Journal, clock: Clock) -> None:
    """The owner can extend its lease; anyone else is told it does not hold it."""
    job, _ = add(journal)
    journal.claim("w1", 60)
    clock.advance(50)
    assert journal.renew_lease(job.id, "w1", 60)
    assert journal.get(job.id).lease_expires == clock.now + 60
    assert not journal.renew_lease(job.id, "w2", 60)
    journal.mark_done(job.id, seconds=1)
    assert not journal.renew_lease(job.id, "w1", 60)


def test_set_progress(journal: Journal) -> None:
    """set_progress records images done of total and a note; a new claim resets it."""
    job, _ = add(journal)
    journal.claim("w", 60)
    journal.set_progress(job.id, 2, 4, "step 3/20")
    running = journal.running()
    assert [(j.progress_done, j.progress_total, j.progress_note) for j in running] == [
        (2, 4, "step 3/20")
    ]
    journal.mark_queued(job.id)
    claimed = journal.claim("w", 60)
    assert claimed is not None
    assert (claimed.progress_done, claimed.progress_total, claimed.progress_note) == (0, 0, "")


def test_recover_requeues_or_quarantines(journal: Journal) -> None:
    """At start-up running jobs return to the queue, or to quarantine after max_attempts claims."""
    crashy, _ = add(journal, "my cat.png")
    fresh, _ = add(journal, "dog.png")
    for _ in range(2):
        journal.claim("dead:1", 60)
        journal.recover(max_attempts=3)
    journal.claim("dead:2", 60)  # crashy's third claim
    journal.claim("dead:2", 60)  # fresh's first
    assert journal.recover(max_attempts=3) == (1, 1)
    quarantined = journal.get(crashy.id)
    assert quarantined.state is JobState.quarantined
    assert quarantined.error == (
        "quarantined: 3 claims never finished (the process died each time); "
        "run dropforge retry '/srv/inbox/my cat.png'"
    )
    requeued = journal.get(fresh.id)
    assert (requeued.state, requeued.attempts, requeued.lease_owner) == (JobState.queued, 1, None)
    assert journal.recover(max_attempts=3) == (0, 0)


def test_two_journals_never_claim_the_same_job(tmp_path: Path) -> None:
    """Four threads over two Journal objects on one file claim every job exactly once."""
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as first, Journal(path) as second:
        ids = {add(first, f"{n:03}.png")[0].id for n in range(60)}
        claimed: list[list[int]] = [[] for _ in range(4)]
        barrier = threading.Barrier(4)

        def worker(index: int, journal: Journal) -> None:
            barrier.wait()
            while (job := journal.claim(f"w{index}", 60)) is not None:
                claimed[index].append(job.id)

        threads = [
            threading.Thread(target=worker, args=(i, (first, second)[i % 2])) for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        everything = [i for ids_of in claimed for i in ids_of]
        assert sorted(everything) == sorted(ids)
        assert all(ids_of == sorted(ids_of) for ids_of in claimed)
        assert first.counts()[JobState.running] == 60


# --- views and maintenance -----------------------------------------------------------------


def test_counts_include_zeros(journal: Journal) -> None:
    """counts names every state, zeros included, in enum order."""
    assert journal.counts() == {s: 0 for s in JobState}
    add(journal, "a.png")
    add(journal, "b.png")
    journal.claim("w", 60)
    assert list(journal.counts().items()) == [
        (JobState.queued, 1),
        (JobState.running, 1),
        (JobState.done, 0),
        (JobState.failed, 0),
        (JobState.waiting, 0),
        (JobState.quarantined, 0),
    ]


def test_jobs_filter_and_limit(journal: Journal) -> None:
    """jobs lists rows in arrival order, filtered by state and limited."""
    a = add(journal, "a.png")[0]
    b = add(journal, "b.png")[0]
    c = add(journal, "c.png")[0]
    journal.mark_failed(b.id, "bad")
    assert [j.id for j in journal.jobs()] == [a.id, b.id, c.id]
    assert [j.id for j in journal.jobs(limit=2)] == [a.id, b.id]
    assert [j.id for j in journal.jobs([JobState.queued])] == [a.id, c.id]
    assert [j.id for j in journal.jobs([JobState.failed, JobState.done])] == [b.id]
    assert journal.jobs([]) == []


def test_recent_failures_newest_first(journal: Journal, clock: Clock) -> None:
    """recent_failures lists failed and quarantined jobs, the newest first."""
    a = add(journal, "a.png")[0]
    b = add(journal, "b.png")[0]
    c = add(journal, "c.png")[0]
    add(journal, "d.png")
    journal.mark_failed(c.id, "c broke")
    clock.advance(1)
    journal.claim("w", 60)  # a
    journal.recover(max_attempts=1)
    clock.advance(1)
    journal.mark_failed(b.id, "b broke")
    assert [(j.input, j.state) for j in journal.recent_failures()] == [
        ("b.png", JobState.failed),
        ("a.png", JobState.quarantined),
        ("c.png", JobState.failed),
    ]
    assert [j.id for j in journal.recent_failures(limit=1)] == [b.id]
    assert a.id < b.id < c.id


def test_retry_by_input_and_state(journal: Journal) -> None:
    """retry requeues named inputs and whole states, counting each job once."""
    a = add(journal, "a.png")[0]
    b = add(journal, "b.png")[0]
    c = add(journal, "c.png")[0]
    for job in (a, b, c):
        journal.claim("w", 60)
        journal.mark_failed(job.id, "bad")
    journal.mark_done(c.id, seconds=1)
    count = journal.retry(inputs=[(INBOX, "a.png"), (INBOX, "c.png")], states=[JobState.failed])
    assert count == 3
    for job in (a, b, c):
        again = journal.get(job.id)
        assert (again.state, again.attempts, again.error, again.force) == (
            JobState.queued,
            0,
            None,
            False,
        )
    assert journal.retry(inputs=[(INBOX, "missing.png")]) == 0


def test_retry_force_and_live_lease(journal: Journal) -> None:
    """retry --force sets the flag; a job running under a live lease is not touched."""
    a = add(journal, "a.png")[0]
    b = add(journal, "b.png")[0]
    journal.mark_done(a.id, seconds=1)
    journal.claim("w", 60)  # b
    assert journal.retry(inputs=[(INBOX, "a.png"), (INBOX, "b.png")], force=True) == 1
    assert journal.get(a.id).force
    assert journal.get(b.id).state is JobState.running
    assert not journal.requeue(b.id)


def test_requeue_quarantined(journal: Journal) -> None:
    """requeue releases a quarantined job with a fresh attempt count."""
    job, _ = add(journal)
    journal.claim("w", 60)
    journal.recover(max_attempts=1)
    assert journal.requeue(job.id, force=True)
    again = journal.get(job.id)
    assert (again.state, again.attempts, again.error, again.force) == (
        JobState.queued,
        0,
        None,
        True,
    )


def test_forget_missing(journal: Journal) -> None:
    """Jobs of inputs gone from their inbox are deleted, except running ones."""
    add(journal, "kept.png")
    add(journal, "running.png")
    add(journal, "gone.png")
    add(journal, "gone.png", inbox="/srv/other")
    kept = journal.get_job(INBOX, "kept.png")
    assert kept is not None
    journal.mark_done(kept.id, seconds=1)
    journal.claim("w", 60)  # running.png is the oldest queued
    assert journal.forget_missing(INBOX, {"kept.png"}) == 1
    assert [j.input for j in journal.jobs()] == ["kept.png", "running.png", "gone.png"]
    assert journal.get_job("/srv/other", "gone.png") is not None


def test_prune_forgets_old_jobs_and_cache_rows_of_what_is_gone(
    journal: Journal, clock: Clock, tmp_path: Path
) -> None:
    """prune deletes done jobs and cache rows untouched for the given time whose input or file
    is gone; what is still there is kept however old (rescans of marked folders touch nothing)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "kept.png").write_bytes(b"k")
    old_done = add(journal, "old.png", inbox=str(inbox))[0]  # its input has gone
    old_kept = add(journal, "kept.png", inbox=str(inbox))[0]
    add(journal, "old-queued.png", inbox=str(inbox))
    journal.mark_done(old_done.id, seconds=1)
    journal.mark_done(old_kept.id, seconds=1)
    stale, seen, still = tmp_path / "stale.png", tmp_path / "seen.png", tmp_path / "still.png"
    for path in (stale, seen, still):
        path.write_bytes(path.name.encode())
        journal.hash_file(path)
    clock.advance(100)
    journal.hash_file(seen)  # a cache hit counts as seen
    stale.unlink()
    new_done = add(journal, "new.png", inbox=str(inbox))[0]
    journal.mark_done(new_done.id, seconds=1)
    assert journal.prune(older_than=50) == 2  # old.png's job and stale.png's cache row
    assert [j.input for j in journal.jobs()] == ["kept.png", "old-queued.png", "new.png"]
    cached = {r[0] for r in journal._query("SELECT path FROM files")}
    assert cached == {str(seen), str(still)}
    assert journal.cached_hash(still, still.stat()) == sha(b"still.png")


def test_an_older_journal_gains_the_tables_and_triggers_added_since(tmp_path: Path) -> None:
    """Opening checks for every added table and trigger, and creates the missing ones."""
    path = tmp_path / "journal.sqlite3"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TRIGGER folder_marks_update; DROP TABLE folder_marks; DROP TABLE output_stamps;"
    )
    db.close()
    with Journal(path) as journal:
        names = {r[0] for r in journal._query("SELECT name FROM sqlite_master")}
    assert {"folder_marks", "folder_marks_update", "output_stamps"} <= names
    for statement in journal_module._ADDED:  # each names what it creates in _ADDED_NAMES
        created = statement.split("IF NOT EXISTS", 1)[1].split()[0]
        assert created in journal_module._ADDED_NAMES
    assert len(journal_module._ADDED) == len(journal_module._ADDED_NAMES)
