"""Two real Syncthing instances deliver into the inbox of a running `dropforge run`.

Instance A shares a send-only folder, instance B receives it, receive-only and with simple
versioning on, into the inbox; both talk over 127.0.0.1 only (tests/syncthing.py). B pulls in
alphabetical order, one block in flight, at 800 KiB/s, so that what the issue saw at random
happens every time: large files sit in Syncthing's temporaries for longer than
``settle_seconds = 2``, and a sidecar written together with its image at the source arrives
seconds after it, once the large file pulled between them is done. Then an input is changed
at the source after it was done: B keeps the old version in ``.stversions``.

What must hold: every final content of every input is generated exactly once, no job starts on
a partial file, no image is generated without the sidecar written beside it at the source, and
nothing in ``.stversions`` is ever taken as an input.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.generators.tiny import TINY_SD_SUBDIR
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.helpers import manifest, noise_image, write_config
from tests.soak.crash_harness import log_events, start_daemon
from tests.syncthing import MISSING, SYNCTHING, Syncthing, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(SYNCTHING is None, reason=MISSING)]

SETTLE = 2.0
RECEIVE_KIBPS = 800
FOLDER = "drop"


class Arrivals:
    """When each name first and last showed in the receiving folder (listed every 20 ms)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = time.monotonic()
            for folder, dirs, files in os.walk(self.folder):
                for name in files + dirs:
                    rel = os.path.relpath(os.path.join(folder, name), self.folder)
                    self.first.setdefault(rel, now)
                    self.last[rel] = now

    def lifetime(self, name: str) -> float:
        """How long ``name`` was seen."""
        return self.last[name] - self.first[name]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Syncthing, Syncthing]]:
    """Instance A (sending) and B (receiving), running and connected; stopped afterwards."""
    a, b = Syncthing(tmp_path / "st-a"), Syncthing(tmp_path / "st-b")
    try:
        a.start()
        b.start()
        a.pair(b)
        b.pair(a)
        wait_for(lambda: a.connected(b) and b.connected(a), 60, "the two instances to connect")
        yield a, b
    finally:
        a.stop()
        b.stop()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_syncthing_deliveries_are_each_done_once_and_only_when_complete(
    tmp_path: Path, tiny_models: Path, pair: tuple[Syncthing, Syncthing]
) -> None:
    """Large files held in temporaries, a sidecar arriving seconds after its image, a file
    changed after it was done and versions kept in .stversions: each final content is done
    exactly once, whole, with its sidecar."""
    a, b = pair
    source, inbox, outbox = tmp_path / "source", tmp_path / "inbox", tmp_path / "outbox"
    source.mkdir()
    config = write_config(
        tmp_path,
        str(tiny_models / TINY_SD_SUBDIR),
        extra_daemon=f'settle_seconds = {SETTLE}\nlog_format = "json"\nstop_timeout = 20',
    )
    a.share(FOLDER, source, "sendonly", b, fsWatcherEnabled=True, fsWatcherDelayS=1)
    b.share(
        FOLDER,
        inbox,
        "receiveonly",
        a,
        order="alphabetic",
        copiers=1,
        pullerMaxPendingKiB=128,
        versioning={"type": "simple", "params": {"keep": "5"}},
    )
    b.api("PATCH", "/rest/config/options", {"maxRecvKbps": RECEIVE_KIBPS})
    wait_for(lambda: (inbox / ".stfolder").exists(), 60, "B to take up the folder")
    log = tmp_path / "dropforge.log"
    daemon = start_daemon(config, log)
    arrivals = Arrivals(inbox)
    try:
        wait_for(lambda: "service.ready" in {e["event"] for e in log_events(log)}, 120, "ready")

        # Written together at the source; B pulls cat.png, cat.psd (4 MB), cat.toml, ...
        noise_image(source / "cat.png", seed=1)
        (source / "cat.psd").write_bytes(os.urandom(4_000_000))
        (source / "cat.toml").write_text("count = 2\nseed = 10\n", encoding="utf-8")
        (source / "story.txt").write_text("a lighthouse at dusk\n", encoding="utf-8")
        noise_image(source / "wide.png", size=(1200, 1200), seed=2)  # 4.3 MB
        a.scan(FOLDER)
        first_round = {name: sha(source / name) for name in ("cat.png", "story.txt", "wide.png")}
        for name, digest in first_round.items():
            out = outbox / Path(name).stem
            wait_for(lambda out=out, digest=digest: _done_with(out, digest), 180, f"{name} done")

        # Changed at the source after it was done: B keeps the old one in .stversions.
        noise_image(source / "cat.png", seed=3)
        a.scan(FOLDER)
        second = sha(source / "cat.png")
        wait_for(lambda: _done_with(outbox / "cat", second), 180, "the changed cat.png done")
        versions = inbox / ".stversions"
        wait_for(lambda: any(versions.glob("cat~*.png")), 30, "the old cat.png versioned")
        time.sleep(3 * SETTLE)  # anything that would still be taken is taken now
    finally:
        arrivals.stop()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
    assert code == 0

    # The scenario happened as described.
    assert arrivals.lifetime(".syncthing.cat.psd.tmp") > SETTLE
    assert arrivals.lifetime(".syncthing.wide.png.tmp") > SETTLE
    assert arrivals.first["cat.toml"] - arrivals.first["cat.png"] > SETTLE
    kept = [p.name for p in (inbox / ".stversions").iterdir()]
    assert len(kept) == 1 and kept[0].startswith("cat~")
    print(
        f"cat.psd {arrivals.lifetime('.syncthing.cat.psd.tmp'):.1f} s and wide.png "
        f"{arrivals.lifetime('.syncthing.wide.png.tmp'):.1f} s in temporaries; cat.toml arrived "
        f"{arrivals.first['cat.toml'] - arrivals.first['cat.png']:.1f} s after cat.png"
    )

    events = log_events(log)
    done = Counter(e["input"] for e in events if e["event"] == "job.done")
    assert done == {"cat.png": 2, "story.txt": 1, "wide.png": 1}
    assert [e for e in events if e["event"] in ("job.failed", "job.waiting")] == []
    written = Counter((e["input"], e["file"]) for e in events if e["event"] == "output.written")
    assert written == {
        ("cat.png", "cat-10.png"): 2,  # the sidecar's seeds, for each content of cat.png
        ("cat.png", "cat-11.png"): 2,
        ("cat.png", "contact.png"): 2,
        ("story.txt", next(f for i, f in written if i == "story.txt")): 1,
        ("wide.png", next(f for i, f in written if i == "wide.png")): 1,
    }
    assert "intake.held" in {e["event"] for e in events}
    with SqliteJournal(tmp_path / "state" / "journal.sqlite3") as journal:
        jobs = {j.input: (j.state, j.attempts) for j in journal.jobs(limit=100)}
    assert jobs == {name: (JobState.done, 1) for name in ("cat.png", "story.txt", "wide.png")}
    final = {name: manifest(outbox / Path(name).stem) for name in first_round}
    assert final["cat.png"]["input"]["sha256"] == second
    assert final["cat.png"]["params"]["seeds"] == [10, 11]
    assert final["wide.png"]["input"] == {
        "path": "wide.png",
        "sha256": first_round["wide.png"],
        "bytes": (source / "wide.png").stat().st_size,
    }
    assert not (outbox / ".stversions").exists()


def _done_with(out_dir: Path, digest: str) -> bool:
    """Whether ``out_dir`` holds a done manifest of the input content ``digest``."""
    try:
        data = manifest(out_dir)
    except (OSError, ValueError):
        return False
    return data.get("status") == "done" and data.get("input", {}).get("sha256") == digest
