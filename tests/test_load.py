"""Load: 10,000 prompt files dropped at once into a watched inbox are all journaled and
processed exactly once, and the daemon keeps no memory per job.

The real watch-mode service runs in-process (observers, settle tracker, intake thread, SQLite
journal, worker, atomic output writes) on the fast fake generator: this tests intake and the
journal, not diffusion. The harness is bench/load.py, which goes further by hand.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from watchdog.observers.polling import PollingObserver

from bench.load import LoadFigures, run_load
from daemon.runtime.arrivals import OVERFLOW_LOGGER
from daemon.runtime.worker import Outcome
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import start_service, wait_until
from tests.helpers import manifest, write_config

FILES = 10_000
WARMUP = 100


@dataclass(frozen=True)
class Load:
    """One load run and where it ran."""

    root: Path  # config and journal
    data: Path  # inbox and outbox
    figures: LoadFigures


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Load]:
    """One load run for the module: a warm-up of 100 files, then 10,000 dropped at once.

    The inbox and outbox go to tmpfs when there is room (else beside the journal): each job
    makes four fsyncs (image and manifest, file and folder), 10-20 ms a job on this project's
    virtual disks, which would make this a test of the disk instead of intake and the
    journal. The journal stays on disk.
    """
    root = tmp_path_factory.mktemp("load")
    shm = Path("/dev/shm")
    on_tmpfs = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 1 << 30
    data = Path(tempfile.mkdtemp(prefix="dropforge-load-", dir=shm if on_tmpfs else root))
    try:
        yield Load(root, data, run_load(root, FILES, warmup=WARMUP, data_dir=data, timeout=900))
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.soak
def test_ten_thousand_files_at_once_are_each_journaled_and_processed_once(load: Load) -> None:
    """Every file has one journal row (done, one attempt) and one done manifest of its own."""
    figures, data_dir, total = load.figures, load.data, FILES + WARMUP
    # A kernel event-queue overflow is survivable (it starts a rescan); nothing else may warn.
    assert [w for w in figures.warnings if "watch.overflow" not in w] == []
    assert figures.outcomes == {"done": total}
    assert figures.generated == total  # one generation per input: none twice, none skipped
    assert figures.states == {JobState.done.value: total}
    with SqliteJournal(load.root / "state" / "journal.sqlite3") as journal:
        jobs = journal.jobs(limit=total + 1)
    inputs = sorted(p.name for p in (data_dir / "inbox").iterdir())
    assert len(inputs) == total
    assert sorted(j.input for j in jobs) == inputs
    assert {(j.state, j.attempts) for j in jobs} == {(JobState.done, 1)}
    for name in inputs:
        recorded = manifest(data_dir / "outbox" / name.removesuffix(".txt"))
        assert recorded["status"] == "done"
        assert recorded["input"]["path"] == name
        data = (data_dir / "inbox" / name).read_bytes()
        assert recorded["input"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert len(recorded["outputs"]) == 1


@pytest.mark.soak
def test_memory_kept_after_ten_thousand_jobs_does_not_grow_per_job(load: Load) -> None:
    """At rest after the load, the daemon holds no more than after a 100-file warm-up.

    Python's allocated-block and gc-object counts are exact and not disturbed by the
    allocator or other processes: anything kept per job would add at least 10,000 of
    them, while measured runs add about 600 blocks and 50 objects (caches that fill once).
    RSS keeps what the allocator held at the peak of the burst: only a loose bound there.
    """
    figures = load.figures
    kept_blocks = figures.blocks_after - figures.blocks_before
    kept_objects = figures.objects_after - figures.objects_before
    assert kept_blocks < FILES // 2, figures
    assert kept_objects < FILES // 4, figures
    assert figures.rss_after_mb - figures.rss_before_mb < 150, figures


def test_lost_events_reported_by_watchdog_start_a_rescan(tmp_path: Path) -> None:
    """When the kernel's event queue overflows, the files it dropped are found by a rescan.

    watchdog reports the overflow only as a warning from its inotify module; the observer
    here reports nothing at all, so the file is found only if that warning starts a rescan.
    """
    inotify = pytest.importorskip("watchdog.observers.inotify_c")
    assert "Inotify queue overflowed" in inspect.getsource(inotify)  # what watchdog says
    config = write_config(
        tmp_path, "./models/none", extra_daemon="settle_seconds = 0.3\nrescan_interval = 3600"
    )
    running = start_service(config, native_observer=lambda: PollingObserver(timeout=3600))
    try:
        (tmp_path / "inbox" / "unseen.txt").write_text("a lost event\n", encoding="utf-8")
        logging.getLogger(OVERFLOW_LOGGER).warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        wait_until(lambda: running.results, 30, "the job of the unseen file")
    finally:
        running.stop()
    assert running.outcomes() == [("unseen.txt", Outcome.done)]
