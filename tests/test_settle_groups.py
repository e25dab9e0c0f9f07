"""Files that belong together settle together, and a folder a sync tool is delivering into
holds its new inputs: the settle tracker's groups, delivery detection, and watch mode with
real observers and files on the fast fake generator."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.config import load_config
from daemon.intake.candidates import candidate_for
from daemon.intake.deliveries import Deliveries, Temporaries, delivering, delivery_folder
from daemon.intake.names import is_delivery_temporary
from daemon.intake.settle import Settled, SettleState, SettleTracker
from daemon.runtime.worker import Outcome, Worker
from daemon.store.sqlite import SqliteJournal
from daemon.survey.survey import survey
from tests.fakes import Launch, SolidGenerator, wait_until
from tests.helpers import manifest, noise_image, write_config

MODEL = "./models/none"  # the fake generator ignores it
SETTLE = 0.5
FAST = f"settle_seconds = {SETTLE}\nrescan_interval = 3600"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def names(settled: list[Settled]) -> list[tuple[str, SettleState]]:
    """(file name, state) of what settled, sorted."""
    return sorted((Path(s.path).name, s.state) for s in settled)


# --- the settle tracker's groups --------------------------------------------------------------


def test_a_sidecar_arriving_restarts_the_timer_of_its_image(tmp_path: Path) -> None:
    """cat.png settles only with cat.toml, a settle time after the sidecar arrived; dog.png,
    another group, settles on its own time."""
    clock = FakeClock()
    tracker = SettleTracker(clock)
    for name in ("cat.png", "dog.png"):
        (tmp_path / name).write_bytes(b"image")
        tracker.touch(str(tmp_path / name), 1.0)
    clock.now += 0.8
    (tmp_path / "cat.toml").write_text("count = 2\n")
    tracker.touch(str(tmp_path / "cat.toml"), 1.0)
    clock.now += 0.2
    assert names(tracker.pop_settled()) == [("dog.png", SettleState.settled)]
    assert tracker.pending(str(tmp_path / "cat.png"))
    clock.now += 0.7
    assert tracker.pop_settled() == []
    clock.now += 0.1
    assert names(tracker.pop_settled()) == [
        ("cat.png", SettleState.settled),
        ("cat.toml", SettleState.settled),
    ]


def test_a_mask_or_a_change_of_any_member_restarts_the_group(tmp_path: Path) -> None:
    """The image, its sidecar and its mask are one group: a late mask, then a change to the
    settled-looking sidecar, each start the group's time again."""
    clock = FakeClock()
    tracker = SettleTracker(clock)
    image, sidecar, mask = tmp_path / "cat.png", tmp_path / "cat.toml", tmp_path / "cat.mask.png"
    image.write_bytes(b"image")
    sidecar.write_text("count = 1\n")
    for path in (image, sidecar):
        tracker.touch(str(path), 1.0)
    clock.now += 0.9
    mask.write_bytes(b"mask")
    tracker.touch(str(mask), 1.0)
    clock.now += 0.9
    sidecar.write_text("count = 3\n")  # no event: the check at the due time sees it
    clock.now += 0.1
    assert tracker.pop_settled() == []
    clock.now += 0.9
    assert tracker.pop_settled() == []
    clock.now += 0.1
    assert [n for n, _ in names(tracker.pop_settled())] == ["cat.mask.png", "cat.png", "cat.toml"]


def test_a_defaults_file_restarts_every_group_in_and_below_its_folder(tmp_path: Path) -> None:
    """_defaults.toml arriving postpones the inputs of its folder and its subfolders, not those
    of a sibling folder."""
    clock = FakeClock()
    tracker = SettleTracker(clock)
    for rel in ("a/cat.png", "a/deep/dog.png", "b/owl.png"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"image")
        tracker.touch(str(path), 1.0)
    clock.now += 0.5
    (tmp_path / "a" / "_defaults.toml").write_text("count = 2\n")
    tracker.touch(str(tmp_path / "a" / "_defaults.toml"), 1.0)
    clock.now += 0.5
    assert names(tracker.pop_settled()) == [("owl.png", SettleState.settled)]
    clock.now += 0.5
    assert names(tracker.pop_settled()) == [
        ("_defaults.toml", SettleState.settled),
        ("cat.png", SettleState.settled),
        ("dog.png", SettleState.settled),
    ]


def test_a_held_folder_keeps_its_groups_until_it_is_released(tmp_path: Path) -> None:
    """While hold(folder) is True a due group waits another settle time; it settles at the
    first look after the hold ends; the hold is asked once per folder and look."""
    clock = FakeClock()
    asked: list[str] = []
    busy = {str(tmp_path): True}

    def hold(folder: str) -> bool:
        asked.append(folder)
        return busy.get(folder, False)

    tracker = SettleTracker(clock, hold=hold)
    for name in ("cat.png", "dog.png"):
        (tmp_path / name).write_bytes(b"image")
        tracker.touch(str(tmp_path / name), 1.0)
    for _ in range(3):
        clock.now += 1.0
        assert tracker.pop_settled() == []
    busy[str(tmp_path)] = False
    clock.now += 1.0
    assert [n for n, _ in names(tracker.pop_settled())] == ["cat.png", "dog.png"]
    assert asked == [str(tmp_path)] * 4


# --- sync tools' temporaries -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        (".syncthing.cat.png.tmp", True),
        ("~syncthing~cat.png.tmp", True),
        (".cat.png.Ab12Cd", True),  # rsync
        (".~tmp~", True),  # rsync --delay-updates
        (".unison.cat.png.1f2e.unison.tmp", True),
        (".cat.png.~1f2e3d", True),  # Nextcloud
        ("cat.png.part", True),
        ("cat.png.crdownload", True),
        ("cat.png.download", True),
        ("cat.png", False),
        (".stfolder", False),
        (".stversions", False),
        (".stignore", False),
        (".sync_0a1b2c3d4e5f.db", False),
        (".sync_0a1b2c3d4e5f.db-wal", False),
        (".owncloudsync.log", False),
        (".DS_Store", False),
        (".dropbox", False),
    ],
)
def test_delivery_temporaries(name: str, temporary: bool) -> None:
    """The temporaries of sync tools and browsers count; their permanent files do not."""
    assert is_delivery_temporary(name) is temporary


def test_a_delivery_is_a_temporary_written_lately(tmp_path: Path) -> None:
    """A fresh temporary, or a staging folder with a fresh file, shows a delivery; one left
    untouched for the stall time, or a permanent dot-file, does not."""
    now = time.time()
    (tmp_path / ".stversions").mkdir()
    (tmp_path / ".DS_Store").write_bytes(b"x")
    stale = tmp_path / ".syncthing.old.png.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (now - 120, now - 120))
    assert delivering(str(tmp_path), now, stall=60) is None
    staging = tmp_path / ".~tmp~"
    staging.mkdir()
    os.utime(staging, (now - 120, now - 120))
    (staging / "big.png").write_bytes(b"growing")
    assert delivering(str(tmp_path), now, stall=60) == ".~tmp~"
    assert delivering(str(tmp_path), now + 3600, stall=60) is None
    assert delivering(str(tmp_path / "missing"), now) is None


def test_a_folder_is_listed_again_only_when_it_may_hold_a_temporary(tmp_path: Path) -> None:
    """A folder with no temporary is not listed again until an entry comes or goes; one with
    a temporary, even an abandoned one, is listed at every look, so that it is seen written
    again."""
    temporaries = Temporaries(stall=60)
    (tmp_path / "cat.png").write_bytes(b"image")
    now = time.time()
    assert temporaries.find(str(tmp_path), now) is None
    listed = tmp_path.stat()
    (tmp_path / "cat.png").write_bytes(b"image, rewritten in place")  # not an entry change
    assert tmp_path.stat().st_mtime_ns == listed.st_mtime_ns
    assert temporaries.find(str(tmp_path), now) is None
    partial = tmp_path / "dog.png.part"
    partial.write_bytes(b"half")
    os.utime(partial, (now - 120, now - 120))
    assert temporaries.find(str(tmp_path), now) is None  # abandoned
    partial.write_bytes(b"half, and more")  # resumed: its folder's mtime stays as it was
    assert temporaries.find(str(tmp_path), time.time()) == "dog.png.part"


def test_events_keep_a_folder_busy_for_the_quiet_time(tmp_path: Path) -> None:
    """A temporary's last event keeps its folder busy for the quiet time, even once it was
    renamed away; the folder it belongs to is that of the temporary or its staging folder."""
    clock = FakeClock()
    deliveries = Deliveries(clock, time.time)
    root = str(tmp_path)
    assert delivery_folder(f"{root}/a/.syncthing.cat.png.tmp", root) == f"{root}/a"
    assert delivery_folder(f"{root}/a/.~tmp~/cat.png", root) == f"{root}/a"
    assert delivery_folder(f"{root}/a/cat.png", root) is None
    deliveries.note(f"{root}/a", ".syncthing.cat.png.tmp")
    clock.now += 0.9
    assert deliveries.busy(f"{root}/a", 1.0) == ".syncthing.cat.png.tmp"
    assert deliveries.busy(f"{root}/b", 1.0) is None
    clock.now += 0.1
    assert deliveries.busy(f"{root}/a", 1.0) is None


# --- watch mode and the worker -----------------------------------------------------------------


@pytest.fixture
def writer() -> Iterator[threading.Event]:
    """A stop event for background writers; set after the test."""
    stop = threading.Event()
    yield stop
    stop.set()


def grow(path: Path, stop: threading.Event, step: float = 0.1) -> threading.Thread:
    """Append to ``path`` every ``step`` seconds until ``stop``, as a sync tool pulls blocks."""

    def run() -> None:
        with open(path, "ab") as handle:
            while not stop.wait(step):
                handle.write(os.urandom(4096))
                handle.flush()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_sidecar_late_by_more_than_the_settle_time_during_a_delivery_shapes_the_one_run(
    tmp_path: Path, launch: Launch, writer: threading.Event
) -> None:
    """While a Syncthing temporary grows in the folder, cat.png waits; its sidecar arriving
    4× the settle time later still shapes its one and only run, once the delivery is over."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    inbox = tmp_path / "inbox"
    running = launch(config)
    temporary = inbox / ".syncthing.big.psd.tmp"
    temporary.write_bytes(b"")
    with capture_logs() as logs:
        filling = grow(temporary, writer)
        noise_image(inbox / "cat.png", seed=3)
        time.sleep(4 * SETTLE)
        assert running.results == []
        (inbox / "cat.toml").write_text("count = 2\nseed = 40\n", encoding="utf-8")
        time.sleep(2 * SETTLE)
        assert running.results == []
        writer.set()
        filling.join(5)
        temporary.rename(inbox / "big.psd")
        wait_until(lambda: running.results, message="the job")
        time.sleep(2 * SETTLE)
    running.stop()
    assert running.outcomes() == [("cat.png", Outcome.done)]
    assert running.generator.inputs_seen() == [(40, 2, 2)]
    assert manifest(tmp_path / "outbox" / "cat")["params"]["seeds"] == [40, 41]
    held = [e for e in logs if e["event"] == "intake.held"]
    assert [(e["folder"], e["temporary"]) for e in held] == [(str(inbox), ".syncthing.big.psd.tmp")]


def test_a_job_whose_folder_is_being_delivered_into_waits(tmp_path: Path) -> None:
    """A job claimed while a sync tool writes into its input's folder waits, saying why, and
    runs once the temporary is gone."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    settings = load_config(config)
    inbox = settings.inboxes[0]
    (inbox.path / "a").mkdir()
    noise_image(inbox.path / "a" / "cat.png", seed=4)
    partial = inbox.path / "a" / "dog.png.part"
    partial.write_bytes(b"half a dog")
    with SqliteJournal(settings.journal_path) as journal:
        candidate = candidate_for(inbox, inbox.path / "a" / "cat.png")
        assert candidate is not None
        survey(settings, journal, candidate)
        worker = Worker(settings, journal, SolidGenerator, owner="host:1")
        job = journal.claim("host:1", 60)
        assert job is not None
        result = worker.run(job)
        message = (
            "a/cat.png: a sync tool is delivering into a (dog.png.part): the job starts once "
            "the delivery is done"
        )
        assert (result.outcome, result.message) == (Outcome.waiting, message)
        assert (journal.get(job.id).error, journal.get(job.id).attempts) == (message, 0)
        partial.unlink()
        time.sleep(SETTLE)
        job = journal.claim("host:1", 60)
        assert job is not None
        assert worker.run(job).outcome is Outcome.done


def test_a_file_renamed_in_with_an_old_mtime_settles_before_a_scan_takes_it(
    tmp_path: Path, launch: Launch
) -> None:
    """Sync tools keep the source's mtime; the rename that delivers a file sets its ctime, so
    the scan at start-up, a moment after the arrival, lets it settle instead of taking it."""
    config = write_config(
        tmp_path, MODEL, extra_daemon="settle_seconds = 2\nrescan_interval = 3600"
    )
    staged = noise_image(tmp_path / "staging" / "cat.png", seed=5)
    old = time.time() - 3600
    os.utime(staged, (old, old))
    staged.rename(tmp_path / "inbox" / "cat.png")
    with capture_logs() as logs:
        running = launch(config)
    (finished,) = [e for e in logs if e["event"] == "scan.finished"]
    assert (finished["queued"], finished["settling"]) == (0, 1)
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("cat.png", Outcome.done)]
