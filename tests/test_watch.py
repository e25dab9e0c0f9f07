"""Watch mode: settle tracking, real observers and real files, feeding a fast fake generator."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from watchdog.events import FileMovedEvent
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon.intake.observers import InboxEventHandler
from daemon.intake.settle import SettleState, SettleTracker
from daemon.runtime.worker import Outcome
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import Launch, wait_until
from tests.helpers import manifest, noise_image, write_config

# The fake generator ignores the model; it only has to be a valid alias.
MODEL = "./models/none"
FAST = "settle_seconds = 0.4\nrescan_interval = 3600"


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def jobs_of(config: Path) -> dict[str, JobState]:
    """Every job in the journal beside ``config``: input → state."""
    with SqliteJournal(config.parent / "state" / "journal.sqlite3") as journal:
        return {j.input: j.state for j in journal.jobs(limit=10_000)}


def png_bytes(tmp_path: Path, seed: int) -> bytes:
    """The bytes of a noise PNG, made outside the inbox."""
    return noise_image(tmp_path / "staging" / f"made-{seed}.png", seed=seed).read_bytes()


# --- the settle tracker ---------------------------------------------------------------------


def test_tracker_settles_a_file_only_after_its_stat_stood_still(tmp_path: Path) -> None:
    """A change seen at the check restarts the settle time; then the file settles once."""
    clock = FakeClock()
    tracker = SettleTracker(clock)
    path = tmp_path / "cat.png"
    path.write_bytes(b"first half")
    tracker.touch(str(path), 1.0)
    clock.now += 0.5
    assert tracker.pop_settled() == []
    with open(path, "ab") as handle:  # grows without an event reaching the tracker
        handle.write(b", second half")
    clock.now += 0.5
    assert tracker.pop_settled() == []
    assert tracker.pending(str(path))
    clock.now += 1.0
    settled = tracker.pop_settled()
    assert [(s.path, s.state, s.waited) for s in settled] == [(str(path), SettleState.settled, 2.0)]
    assert not tracker.pending(str(path)) and tracker.next_due() is None


def test_tracker_sees_a_replacement_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    """A file renamed over the tracked one (new inode) starts its settle time again."""
    clock = FakeClock()
    tracker = SettleTracker(clock)
    path = tmp_path / "cat.png"
    path.write_bytes(b"version 1")
    tracker.touch(str(path), 1.0)
    replacement = tmp_path / ".cat.png.tmp"
    replacement.write_bytes(b"version 2")
    stat = path.stat()
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, path)
    clock.now += 1.0
    assert tracker.pop_settled() == []
    clock.now += 1.0
    assert [s.state for s in tracker.pop_settled()] == [SettleState.settled]


def test_tracker_reports_empty_and_vanished_files(tmp_path: Path) -> None:
    """An empty file is not settled but reported empty; a deleted one is reported gone."""
    clock = FakeClock()
    tracker = SettleTracker(clock)
    empty = tmp_path / "empty.png"
    empty.touch()
    gone = tmp_path / "gone.png"
    gone.write_bytes(b"data")
    tracker.touch(str(empty), 0.5, tag=3)
    tracker.touch(str(gone), 0.5, tag=4)
    gone.unlink()
    clock.now += 0.5
    found = sorted((Path(s.path).name, s.state, s.tag) for s in tracker.pop_settled())
    assert found == [("empty.png", SettleState.empty, 3), ("gone.png", SettleState.gone, 4)]


def test_an_event_without_a_change_keeps_the_timer_running(tmp_path: Path) -> None:
    """Repeated events for an unchanged file do not postpone its settling."""
    clock = FakeClock()
    tracker = SettleTracker(clock)
    path = tmp_path / "cat.png"
    path.write_bytes(b"data")
    tracker.touch(str(path), 1.0)
    clock.now += 0.9
    tracker.touch(str(path), 1.0)  # e.g. a close or attribute event
    clock.now += 0.1
    assert [s.state for s in tracker.pop_settled()] == [SettleState.settled]


# --- the event handler ----------------------------------------------------------------------


def test_handler_errors_are_logged_and_the_observer_keeps_running(tmp_path: Path) -> None:
    """A failing handler call is logged as watch.handler_failed; later events still arrive."""
    seen: list[str] = []

    def sink(index: int, path: str, is_dir: bool) -> None:
        if path.endswith("bad.png"):
            raise RuntimeError("boom")
        seen.append(os.path.basename(path))

    observer = Observer()
    observer.schedule(InboxEventHandler(0, sink), str(tmp_path), recursive=True)
    with capture_logs() as logs:
        observer.start()
        try:
            (tmp_path / "bad.png").write_bytes(b"x")
            wait_until(lambda: any(e["event"] == "watch.handler_failed" for e in logs))
            (tmp_path / "good.png").write_bytes(b"x")
            wait_until(lambda: "good.png" in seen, message="the event after the failure")
            assert observer.is_alive()
        finally:
            observer.stop()
            observer.join(5)
    failure = next(e for e in logs if e["event"] == "watch.handler_failed")
    assert failure["path"].endswith("bad.png") and failure["log_level"] == "error"


def test_handler_passes_both_ends_of_a_move(tmp_path: Path) -> None:
    """A rename reports where the file went (an arrival) and where it came from."""
    seen: list[tuple[str, bool]] = []
    handler = InboxEventHandler(0, lambda i, p, d: seen.append((p, d)))
    handler.dispatch(FileMovedEvent(str(tmp_path / ".cat.png.x1"), str(tmp_path / "cat.png")))
    assert seen == [(str(tmp_path / ".cat.png.x1"), False), (str(tmp_path / "cat.png"), False)]


# --- intake through a running service -------------------------------------------------------


def test_file_written_slowly_is_processed_once_when_complete(
    tmp_path: Path, launch: Launch
) -> None:
    """A file written in chunks over three seconds is taken once, with its final content."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    data = png_bytes(tmp_path, seed=1)
    running = launch(config)
    chunks = 20
    size = len(data) // chunks + 1
    with open(tmp_path / "inbox" / "slow.png", "wb") as handle:
        for i in range(chunks):
            handle.write(data[i * size : (i + 1) * size])
            handle.flush()
            time.sleep(0.15)  # a slow writer: every pause is shorter than settle_seconds
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("slow.png", Outcome.done)]
    assert len(running.generator.requests) == 1
    recorded = manifest(tmp_path / "outbox" / "slow")["input"]
    assert recorded["sha256"] == hashlib.sha256(data).hexdigest()
    assert recorded["bytes"] == len(data)


def test_temporary_name_then_rename_is_processed_once(tmp_path: Path, launch: Launch) -> None:
    """The rsync pattern without rsync: a hidden temporary is filled, then renamed into place."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    data = png_bytes(tmp_path, seed=2)
    running = launch(config)
    temporary = tmp_path / "inbox" / ".cat.png.Xa1b2C"
    with open(temporary, "wb") as handle:
        for i in range(0, len(data), 4096):
            handle.write(data[i : i + 4096])
            handle.flush()
            time.sleep(0.1)  # long enough for the temporary to be noticed, and ignored
    os.rename(temporary, tmp_path / "inbox" / "cat.png")
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("cat.png", Outcome.done)]
    assert jobs_of(config) == {"cat.png": JobState.done}


@pytest.mark.skipif(
    shutil.which("rsync") is None,
    reason="rsync is not installed (apt-get install rsync); "
    "test_temporary_name_then_rename_is_processed_once covers the same pattern",
)
def test_real_rsync_delivery_is_processed_once(tmp_path: Path, launch: Launch) -> None:
    """A file delivered by rsync (temporary name, then rename) is taken once."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    source = tmp_path / "staging"
    png_bytes(tmp_path, seed=3)
    (source / "made-3.png").rename(source / "dog.png")
    (source / "dog.toml").write_text("count = 2\nseed = 11\n", encoding="utf-8")
    running = launch(config)
    subprocess.run(["rsync", "-a", f"{source}/", f"{tmp_path / 'inbox'}/"], check=True)
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("dog.png", Outcome.done)]
    assert manifest(tmp_path / "outbox" / "dog")["params"]["seeds"] == [11, 12]


def test_files_and_folders_renamed_into_place_are_processed_once(
    tmp_path: Path, launch: Launch
) -> None:
    """A file and a whole folder moved into the inbox count as arrivals."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    staging = tmp_path / "staging"
    noise_image(staging / "cat.png", seed=4)
    noise_image(staging / "album" / "a.png", seed=5)
    (staging / "album" / "b.txt").write_text("a lighthouse\n", encoding="utf-8")
    running = launch(config)
    os.rename(staging / "cat.png", tmp_path / "inbox" / "cat.png")
    os.rename(staging / "album", tmp_path / "inbox" / "album")
    wait_until(lambda: len(running.results) >= 3, message="three jobs")
    running.stop()
    assert sorted(running.outcomes()) == [
        ("album/a.png", Outcome.done),
        ("album/b.txt", Outcome.done),
        ("cat.png", Outcome.done),
    ]


JUNK = (
    ".syncthing.cat.png.tmp",
    "~syncthing~cat.png.tmp",
    "cat.sync-conflict-20240101-120000-ABCDEFG.png",
    "cat (conflicted copy 2024-01-01).png",
    ".~lock.story.txt#",
    "cat.png.part",
    "cat.png.crdownload",
    "cat.png.download",
    "cat.png.tmp",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    ".hidden.png",
    "~cat.png",
    "_done/old.png",
    "_failed/bad.png",
    ".stversions/cat.png",
)


def test_temporaries_and_junk_names_are_never_taken(tmp_path: Path, launch: Launch) -> None:
    """Sync-tool temporaries, conflict copies and ignored folders: never taken, even by rescans.
    (The temporaries are left over from interrupted transfers: live ones would hold ok.png
    until their delivery ends, see test_settle_groups.py.)"""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    data = png_bytes(tmp_path, seed=6)
    running = launch(config)
    left_over = time.time() - 600
    for name in JUNK:
        path = tmp_path / "inbox" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (left_over, left_over))
    (tmp_path / "inbox" / "ok.png").write_bytes(data)
    wait_until(lambda: running.results, message="ok.png")
    scan = running.rescan()
    running.stop()
    assert running.outcomes() == [("ok.png", Outcome.done)]
    assert jobs_of(config) == {"ok.png": JobState.done}
    assert (scan["found"], scan["queued"], scan["done"]) == (1, 0, 1)


def test_a_thousand_files_dropped_at_once_are_all_processed(tmp_path: Path, launch: Launch) -> None:
    """1,000 prompt files written in one burst each become exactly one finished job."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    running = launch(config)
    names = [f"p{i:04d}.txt" for i in range(1000)]
    for i, name in enumerate(names):
        (tmp_path / "inbox" / name).write_text(f"prompt number {i}\n", encoding="utf-8")
    wait_until(lambda: len(running.results) >= 1000, timeout=120, message="1,000 jobs")
    running.stop()
    assert sorted(running.outcomes()) == [(n, Outcome.done) for n in names]
    assert len(running.generator.requests) == 1000
    states = jobs_of(config)
    assert len(states) == 1000 and set(states.values()) == {JobState.done}


def test_sidecar_arriving_a_moment_after_its_image_is_honoured(
    tmp_path: Path, launch: Launch
) -> None:
    """cat.toml landing 0.1 s after cat.png shapes the one and only run of cat.png."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    running = launch(config)
    noise_image(tmp_path / "inbox" / "cat.png", seed=7)
    time.sleep(0.1)  # the sync tool delivers the sidecar a moment later
    (tmp_path / "inbox" / "cat.toml").write_text("count = 2\nseed = 5\n", encoding="utf-8")
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("cat.png", Outcome.done)]
    assert running.generator.inputs_seen() == [(5, 2, 2)]
    assert manifest(tmp_path / "outbox" / "cat")["params"]["seeds"] == [5, 6]


def test_sidecar_changed_later_reruns_its_input(tmp_path: Path, launch: Launch) -> None:
    """Editing a sidecar after the job finished requeues it; the new outputs replace the old."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    running = launch(config)
    noise_image(tmp_path / "inbox" / "cat.png", seed=8)
    (tmp_path / "inbox" / "cat.toml").write_text("count = 2\nseed = 5\n", encoding="utf-8")
    wait_until(lambda: running.results, message="the first run")
    (tmp_path / "inbox" / "cat.toml").write_text("seed = 9\n", encoding="utf-8")
    wait_until(lambda: len(running.results) >= 2, message="the second run")
    running.stop()
    assert running.outcomes() == [("cat.png", Outcome.done), ("cat.png", Outcome.done)]
    out = tmp_path / "outbox" / "cat"
    assert sorted(p.name for p in out.glob("cat-*.png")) == ["cat-9.png"]
    assert manifest(out)["params"]["seeds"] == [9]


def test_new_defaults_file_reruns_only_the_inputs_below_it(tmp_path: Path, launch: Launch) -> None:
    """A _defaults.toml dropped into a/ re-runs a/x.txt and leaves b/y.txt alone."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    for rel in ("a/x.txt", "b/y.txt"):
        (tmp_path / "inbox" / rel).parent.mkdir(parents=True)
        (tmp_path / "inbox" / rel).write_text(f"{rel}\n", encoding="utf-8")
    running = launch(config)
    wait_until(lambda: len(running.results) >= 2, message="the first runs")
    (tmp_path / "inbox" / "a" / "_defaults.toml").write_text("seed = 3\n", encoding="utf-8")
    wait_until(lambda: len(running.results) >= 3, message="the re-run")
    running.stop()
    assert sorted(running.outcomes()[:2]) == [("a/x.txt", Outcome.done), ("b/y.txt", Outcome.done)]
    assert running.outcomes()[2:] == [("a/x.txt", Outcome.done)]
    assert manifest(tmp_path / "outbox" / "a" / "x")["params"]["seeds"] == [3]


class ExhaustedObserver(PollingObserver):
    """Fails to start the way inotify does when fs.inotify.max_user_watches is reached."""

    def start(self) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


def test_native_observer_failure_falls_back_to_polling_with_a_warning(
    tmp_path: Path, launch: Launch
) -> None:
    """When inotify cannot start, the inbox is polled, a warning says why, and files still flow."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    inbox = tmp_path / "inbox"
    with capture_logs() as logs:
        running = launch(config, native_observer=ExhaustedObserver, poll_interval=0.2)
    warning = next(e for e in logs if e["event"] == "watch.fallback")
    assert warning["log_level"] == "warning"
    assert warning["message"] == (
        f"{inbox}: file events unavailable (inotify watch limit reached); polling every 0.2 s "
        "instead (on Linux, raise fs.inotify.max_user_watches / max_user_instances)"
    )
    assert running.service.watcher is not None
    assert running.service.watcher.observer_modes() == {str(inbox): "polling"}
    noise_image(inbox / "cat.png", seed=9)
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("cat.png", Outcome.done)]


def test_poll_true_inbox_uses_the_polling_observer(tmp_path: Path, launch: Launch) -> None:
    """An inbox with poll = true never asks for native events and still sees new files."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    text = config.read_text(encoding="utf-8").replace(
        'output = "outbox"', 'output = "outbox"\npoll = true'
    )
    config.write_text(text, encoding="utf-8")

    def refuse() -> BaseObserver:
        raise AssertionError("a poll = true inbox asked for native events")

    running = launch(config, native_observer=refuse, poll_interval=0.2)
    assert running.service.watcher is not None
    assert running.service.watcher.observer_modes() == {str(tmp_path / "inbox"): "polling"}
    (tmp_path / "inbox" / "note.txt").write_text("a harbour\n", encoding="utf-8")
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("note.txt", Outcome.done)]


def test_rescan_catches_files_the_events_missed(tmp_path: Path, launch: Launch) -> None:
    """With an observer that reports nothing, the periodic rescan still finds a new file."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    running = launch(config, native_observer=lambda: PollingObserver(timeout=3600))
    (tmp_path / "inbox" / "missed.txt").write_text("a quiet street\n", encoding="utf-8")
    assert jobs_of(config) == {}
    assert running.service.watcher is not None
    running.service.watcher.request_rescan()
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("missed.txt", Outcome.done)]


def test_files_present_at_start_are_processed_by_the_first_scan(
    tmp_path: Path, launch: Launch
) -> None:
    """What arrived while the daemon was down is queued by the start-up scan."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    noise_image(tmp_path / "inbox" / "early.png", seed=10)
    old = time.time() - 60
    os.utime(tmp_path / "inbox" / "early.png", (old, old))
    running = launch(config)
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("early.png", Outcome.done)]
