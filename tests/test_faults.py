"""Faults: a full disk, min_free_mb, a journal killed mid-transaction, a vanished inbox.

Where this machine lets us mount a small tmpfs, the disk really fills up; elsewhere those
tests skip and the same faults are injected at the write boundary (ENOSPC from fsync, as
filesystems with delayed allocation report it; a low free-space reading).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from structlog.testing import capture_logs

from daemon.config import load_config
from daemon.generators import GenerationEvents, ImageRequest
from daemon.outputs.files import TEMP_MARKER
from daemon.runtime.once import run_once
from daemon.runtime.worker import DISK_RETRY_S, Outcome, Progress
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import Launch, RunningService, SolidGenerator, wait_until
from tests.helpers import manifest, noise_image, snapshot, write_config

MODEL = "./models/none"
FAST = "settle_seconds = 0.1\nrescan_interval = 3600"
ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0  # longer than any backoff a test meets


class Clock:
    """A wall clock the test moves: waiting jobs become due without sleeping out a backoff."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class NoiseGenerator(SolidGenerator):
    """Like SolidGenerator, but noise images: their PNGs do not compress, so they fill disks."""

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """One noise image per spec, seeded by the spec's seed."""
        with self._lock:
            self.requests.append(request)
        for spec in request.images:
            events.on_step(1, 1)
            size = (request.width, request.height)
            data = random.Random(spec.seed).randbytes(size[0] * size[1] * 3)
            events.on_image(spec.index, Image.frombytes("RGB", size, data))


@pytest.fixture
def mounts() -> Iterator[Callable[[Path, str], None]]:
    """Mount small tmpfs filesystems (skipping the test where that is refused); unmount after."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if sys.platform != "linux" or shutil.which("mount") is None:
            pytest.skip("mounting a small filesystem needs Linux")
        command = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here: {result.stderr.strip()}")
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(folder: Path, leave: int) -> Path:
    """Write a ballast file into ``folder`` leaving about ``leave`` bytes free on its disk."""
    st = os.statvfs(folder)
    ballast = folder / "ballast.bin"
    ballast.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return ballast


def temporaries(folder: Path) -> list[str]:
    """Our temporary files anywhere under ``folder``."""
    return sorted(str(p) for p in folder.rglob(f"*{TEMP_MARKER}*"))


def job_of(running: RunningService, rel: str) -> Any:
    """The journal row of an input of the test inbox (None when there is none)."""
    journal = running.service.journal
    assert journal is not None
    inbox = str(running.service.settings.inboxes[0].path)
    return journal.get_job(inbox, rel)


def in_state(running: RunningService, rel: str, state: JobState) -> bool:
    """Whether the input's job is in ``state``."""
    job = job_of(running, rel)
    return job is not None and job.state is state


def assert_outputs_intact(out_dir: Path) -> dict[str, Any]:
    """A done manifest whose every output exists, decodes and matches its sha256."""
    data = manifest(out_dir)
    assert data["status"] == "done"
    for entry in data["outputs"]:
        blob = (out_dir / entry["file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
        with Image.open(out_dir / entry["file"]) as image:
            image.load()
    return data


# --- a full disk ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["small filesystem", "ENOSPC at fsync"])
def test_disk_full_during_a_write_leaves_no_partial_file_and_the_job_waits(
    tmp_path: Path,
    launch: Launch,
    mounts: Callable[[Path, str], None],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """ENOSPC mid-write: no partial file, the job waits, and finishes once space returns."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST, size=128)
    outbox = tmp_path / "outbox"
    ballast: Path | None = None
    full = True
    if fault == "small filesystem":
        mounts(outbox, "512k")
        ballast = fill(outbox, leave=16 * 1024)  # a 128x128 noise PNG needs ~49 KB
    else:
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)  # as daemon.outputs calls it
    inbox = tmp_path / "inbox"
    (inbox / "a.toml").write_text("count = 2\nseed = 1\n", encoding="utf-8")
    (inbox / "a.txt").write_text("a lighthouse\n", encoding="utf-8")
    clock = Clock()
    running = launch(config, generator=NoiseGenerator(), clock=clock, retry_tick=0.05)
    wait_until(lambda: in_state(running, "a.txt", JobState.waiting), message="the job waiting")
    out_dir = outbox / "a"
    job = job_of(running, "a.txt")
    assert job.error == f"no space left writing {out_dir / 'a-1.png'}"
    assert job.attempts == 0  # a wait is not a crash: no step toward quarantine
    assert temporaries(outbox) == []
    assert not out_dir.exists() or sorted(p.name for p in out_dir.iterdir()) == []
    # The worker thread lets go of the job a moment after the journal says it waits.
    wait_until(
        lambda: running.service.status_line() == "0 queued, 1 waiting, 0 failed",
        message="the status line without a running job",
    )

    if ballast is not None:
        ballast.unlink()
    full = False
    clock.now += HOUR
    wait_until(lambda: in_state(running, "a.txt", JobState.done), message="the job done")
    data = assert_outputs_intact(out_dir)
    assert [o["file"] for o in data["outputs"]] == ["a-1.png", "a-2.png", "contact.png"]
    assert sorted(p.name for p in out_dir.iterdir()) == [
        *(o["file"] for o in data["outputs"]),
        "manifest.json",
    ]
    assert running.outcomes() == [("a.txt", Outcome.waiting), ("a.txt", Outcome.done)]


@pytest.mark.parametrize("fault", ["small filesystem", "low free-space reading"])
def test_min_free_mb_holds_every_job_until_space_is_freed(
    tmp_path: Path,
    launch: Launch,
    mounts: Callable[[Path, str], None],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """Below min_free_mb no job generates anything; each waits with the reason, looks again
    every minute, and resumes within a minute of space being freed."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST + "\nmin_free_mb = 2")
    text = config.read_text(encoding="utf-8").replace("min_free_mb = 0\n", "", 1)
    config.write_text(text, encoding="utf-8")
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    ballast: Path | None = None
    free_mb = 1
    if fault == "small filesystem":
        mounts(outbox, "4m")
        ballast = fill(outbox, leave=1024 * 1024 + 512 * 1024)
    else:
        real_usage = shutil.disk_usage

        def disk_usage(path: Any) -> Any:
            usage = real_usage(path)
            return usage._replace(free=free_mb * 1024 * 1024 + 1000)

        monkeypatch.setattr(shutil, "disk_usage", disk_usage)  # as the worker calls it
    names = ["a.txt", "b.txt", "c.txt"]
    for name in names:
        (tmp_path / "inbox" / name).write_text(f"a picture of {name}\n", encoding="utf-8")
    clock = Clock()
    generator = SolidGenerator()
    running = launch(config, generator=generator, clock=clock, retry_tick=0.05)
    wait_until(
        lambda: all(in_state(running, n, JobState.waiting) for n in names), message="3 waiting"
    )
    reason = (
        f"only 1 MB free on {outbox}, below min_free_mb = 2: free some space; "
        "the job resumes by itself"
    )
    assert [job_of(running, n).error for n in names] == [reason] * 3
    assert generator.requests == []  # nothing was generated, nothing written
    assert sorted(p.name for p in outbox.iterdir()) == (["ballast.bin"] if ballast else [])
    assert running.service.status_line() == "0 queued, 3 waiting, 0 failed"

    # Still short of space at each look; the wait stays at a minute (no 1 h backoff).
    assert all(job_of(running, n).waits == 1 for n in names)
    for look in range(2, 6):
        clock.now += DISK_RETRY_S + 1
        wait_until(
            lambda look=look: all(job_of(running, n).waits == look for n in names),
            message=f"look {look}",
        )
    assert all(job_of(running, n).not_before <= clock.now + DISK_RETRY_S for n in names)
    if ballast is not None:
        ballast.unlink()
    free_mb = 100
    clock.now += DISK_RETRY_S + 1
    wait_until(lambda: all(in_state(running, n, JobState.done) for n in names), message="done")
    for name in names:
        assert_outputs_intact(outbox / name.removesuffix(".txt"))
    assert len(generator.requests) == 3


# --- the journal killed mid-transaction --------------------------------------------------------

_OPEN_TRANSACTION = """
import sys, time
from pathlib import Path
from daemon.store.sqlite import SqliteJournal
journal = SqliteJournal(Path(sys.argv[1]))
journal.upsert_job(inbox="in", input="committed.png", kind="image", fingerprint="f",
                   job_key="k", out_dir="out/committed")
with journal._tx() as db:  # never committed: the process is killed inside
    db.execute("UPDATE jobs SET state = 'failed', error = 'uncommitted'")
    db.execute("INSERT INTO jobs (inbox, input, kind, fingerprint, job_key, out_dir, state,"
               " created_at, updated_at) VALUES ('in', 'uncommitted.png', 'image', 'f', 'k',"
               " 'out/u', 'queued', 0, 0)")
    for i in range(30000):  # more than the page cache holds: pages spill into the WAL
        db.execute("INSERT INTO files VALUES (?, 1, 1, '1', ?, 0)", (f"f{i}", "ab" * 64))
    print("inside", flush=True)
    time.sleep(120)
"""

_COMMIT_LOOP = """
import sys
from pathlib import Path
from daemon.store.sqlite import SqliteJournal
journal = SqliteJournal(Path(sys.argv[1]))
first = int(sys.argv[2])
for i in range(first, first + 100000):
    journal.upsert_job(inbox="in", input=f"{i:06d}.png", kind="image", fingerprint="f",
                       job_key="k", out_dir=f"out/{i}")
    print(i, flush=True)
"""


def _python(code: str, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
    with open(log or os.devnull, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def _integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def test_journal_killed_inside_a_transaction_keeps_only_committed_work(tmp_path: Path) -> None:
    """SIGKILL with an open write transaction (pages already in the WAL): nothing of it stays."""
    path = tmp_path / "journal.sqlite3"
    child = _python(_OPEN_TRANSACTION, str(path))
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "inside\n"
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size > 1_000_000  # the uncommitted pages really are on disk
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with SqliteJournal(path) as journal:
        (job,) = journal.jobs()
        assert (job.input, job.state, job.error) == ("committed.png", JobState.queued, None)
        assert journal.cached_hash(path, os.stat(path)) is None
    assert _integrity(path) == "ok"
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 0
    finally:
        db.close()


def test_journal_killed_while_committing_keeps_every_acknowledged_commit(tmp_path: Path) -> None:
    """Five SIGKILLs in a stream of commits: the journal opens, and holds exactly a prefix that
    includes every commit acknowledged before the kill."""
    path = tmp_path / "journal.sqlite3"
    rng = random.Random(3)
    acknowledged = -1
    for _ in range(5):
        child = _python(_COMMIT_LOOP, str(path), str(acknowledged + 1))
        try:
            assert child.stdout is not None
            for _ in range(rng.randint(20, 200)):
                acknowledged = int(child.stdout.readline())
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert _integrity(path) == "ok"
        with SqliteJournal(path) as journal:
            inputs = [j.input for j in journal.jobs(limit=100_000)]
        # Lines printed after the ones read may be committed too; none may be missing.
        assert inputs == [f"{i:06d}.png" for i in range(len(inputs))]
        assert len(inputs) >= acknowledged + 1
        acknowledged = len(inputs) - 1


_FAKE_DAEMON = """
import sys
from pathlib import Path
from daemon.config import load_config
from daemon.runtime.logs import configure_logging
from daemon.runtime.service import Service
from tests.fakes import SolidGenerator
configure_logging("json")
Service(load_config(Path(sys.argv[1])), SolidGenerator).run()
"""


def test_daemon_killed_while_committing_intake_recovers(tmp_path: Path) -> None:
    """`run` (fake generator) SIGKILLed four times while it journals new files and runs jobs:
    the journal stays intact and the daemon finishes every input exactly once."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST + "\nmax_attempts = 100")
    names: list[str] = []

    def drop(count: int) -> None:
        for i in range(len(names), len(names) + count):
            names.append(f"p{i:03d}.txt")
            (tmp_path / "inbox" / names[-1]).write_text(f"picture {i}\n", encoding="utf-8")

    path = tmp_path / "state" / "journal.sqlite3"
    rng = random.Random(11)
    for life in range(4):
        drop(60)  # each life starts with new files to hash, journal and run
        log = tmp_path / f"life-{life}.log"
        child = _python(_FAKE_DAEMON, str(config), log=log)
        try:
            wait_until(lambda: "service.starting" in log.read_text(), 30, "the start")  # noqa: B023
            try:
                child.wait(rng.uniform(0.0, 0.5))
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
            assert child.wait(30) == -signal.SIGKILL, log.read_text()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert _integrity(path) == "ok"
    child = _python(_FAKE_DAEMON, str(config), log=tmp_path / "final.log")
    outbox = tmp_path / "outbox"
    try:
        wait_until(
            lambda: all(
                (outbox / n.removesuffix(".txt") / "manifest.json").exists() for n in names
            ),
            60,
            "every input done",
        )
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    for name in names:
        assert_outputs_intact(outbox / name.removesuffix(".txt"))
    assert temporaries(outbox) == []
    with SqliteJournal(path) as journal:
        assert journal.counts()[JobState.done] == len(names) == 240
        assert len(journal.jobs(limit=1000)) == len(names)


def a_looked_at(logs: list[dict[str, Any]]) -> bool:
    """Whether a rescan (or the settling of a.txt, when it was still fresh) surveyed a.txt."""
    return any(
        (e["event"] == "scan.finished" and e["done"] == 1)
        or (e["event"] == "intake.settled" and e["input"] == "a.txt")
        for e in logs
    )


# --- a vanished inbox --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["removed", "unmounted"])
def test_vanished_inbox_is_a_warning_and_recovers(
    tmp_path: Path,
    launch: Launch,
    mounts: Callable[[Path, str], None],
    how: str,
) -> None:
    """An inbox that disappears (removed, or its share unmounted) warns without failing a job
    or touching an output; once back, files dropped into it are processed."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    inbox = tmp_path / "inbox"
    if how == "unmounted":
        mounts(inbox, "1m")
    (inbox / "a.txt").write_text("a lighthouse\n", encoding="utf-8")
    running = launch(config)
    wait_until(lambda: in_state(running, "a.txt", JobState.done), message="a done")
    outbox = tmp_path / "outbox"
    before = snapshot(outbox)

    service = running.service
    assert service.watcher is not None and service.journal is not None
    if how == "removed":
        shutil.rmtree(inbox)
    else:
        subprocess.run(["umount", str(inbox)], check=True)
    with capture_logs() as logs:
        assert service.heartbeat().ok  # the scheduler's heartbeat: a warning, not unhealthy
        service.watcher.request_rescan()  # as rescan_interval would
        assert service.heartbeat().ok
    why = "is missing" if how == "removed" else "is no longer mounted"
    assert [e for e in logs if e["event"].startswith("inbox.")] == [
        {
            "event": "inbox.missing",
            "inbox": str(inbox),
            "message": f"{inbox} {why}: its files wait until it returns; no job fails and no "
            "output is touched",
            "log_level": "warning",
        }
    ]
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert service.status_line() == (
        f"inbox missing: {inbox} (waiting for it to return); 0 queued, 0 waiting, 0 failed"
    )
    assert snapshot(outbox) == before
    assert service.journal.counts()[JobState.failed] == 0

    if how == "removed":
        inbox.mkdir()
    else:
        mounts(inbox, "1m")  # the share is back (fresh: its files were copied in again)
    (inbox / "a.txt").write_text("a lighthouse\n", encoding="utf-8")
    with capture_logs() as logs:
        assert service.heartbeat().ok
        (inbox / "b.txt").write_text("a harbour\n", encoding="utf-8")
        wait_until(lambda: in_state(running, "b.txt", JobState.done), message="b done")
        wait_until(lambda: a_looked_at(logs), message="a.txt looked at again")
    assert [e["event"] for e in logs if e["event"].startswith("inbox.")] == ["inbox.returned"]
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert service.watcher.observer_modes() == {str(inbox): "native"}  # not degraded
    assert_outputs_intact(outbox / "b")
    assert {k: v for k, v in snapshot(outbox).items() if k.startswith("a/")} == before
    assert running.outcomes() == [("a.txt", Outcome.done), ("b.txt", Outcome.done)]
    assert service.status_line() == "0 queued, 0 waiting, 0 failed"


def test_input_vanishing_as_its_job_starts_is_not_a_failure(tmp_path: Path) -> None:
    """The inbox vanishes between planning and reading the image: no failed manifest; the job
    is dropped and runs once the file is back."""
    config = write_config(tmp_path, MODEL)
    inbox = tmp_path / "inbox"
    noise_image(inbox / "cat.png")
    aside = tmp_path / "aside"
    settings = load_config(config)

    def unmount(job: Any, total: int) -> None:
        inbox.rename(aside)

    report = run_once(settings, SolidGenerator, progress=Progress(on_start=unmount))
    assert report.failed == [] and report.results == []
    assert not (tmp_path / "outbox" / "cat").exists()
    with SqliteJournal(settings.journal_path) as journal:
        assert journal.jobs() == []
    aside.rename(inbox)
    report = run_once(settings, SolidGenerator)
    assert [(r.rel, r.outcome) for r in report.results] == [("cat.png", Outcome.done)]
    assert_outputs_intact(tmp_path / "outbox" / "cat")
