"""Sync tools for real: rsync and unison deliver into a watched inbox, and simulated clients
(Nextcloud, Dropbox, browsers, Syncthing) write their temporaries, placeholders and conflict
copies the way they do. Every input must be taken exactly once, and only when complete: the
generator sees the final content and the manifest records the final file's sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from structlog.testing import capture_logs

from daemon.generators import ImageRequest
from daemon.planning.sizes import choose_size
from daemon.runtime.worker import Outcome
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import Launch, RunningService, wait_until
from tests.helpers import manifest, write_config

# The fake generator ignores the model; it only has to be a valid alias.
MODEL = "./models/none"
SETTLE = 0.5
# rsync --inplace at 1000 KB/s writes 256 KiB about every 0.26 s: settling must outlast that.
SLOW_SETTLE = 1.5

needs_rsync = pytest.mark.skipif(
    shutil.which("rsync") is None,
    reason="rsync is not installed (apt-get install rsync; .ci/run installs it)",
)
needs_unison = pytest.mark.skipif(
    shutil.which("unison") is None,
    reason="unison is not installed (apt-get install unison; .ci/run installs it)",
)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Write each ``rel → data`` below ``root``, making folders as needed."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def config_for(tmp_path: Path, settle: float = SETTLE) -> Path:
    """A config whose inbox is settled after ``settle`` seconds and never rescanned by timer."""
    return write_config(
        tmp_path, MODEL, extra_daemon=f"settle_seconds = {settle}\nrescan_interval = 3600"
    )


def png(size: tuple[int, int], seed: int) -> bytes:
    """The bytes of a deterministic noise PNG (incompressible: its size is about w*h*3)."""
    data = random.Random(seed).randbytes(size[0] * size[1] * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, data).save(buffer, format="PNG")
    return buffer.getvalue()


def write_slowly(path: Path, data: bytes, chunks: int = 8, pause: float = 0.05) -> None:
    """Write ``data`` in ``chunks`` pieces with a pause after each, like a download."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = len(data) // chunks + 1
    with open(path, "wb") as handle:
        for start in range(0, len(data), size):
            handle.write(data[start : start + size])
            handle.flush()
            time.sleep(pause)


def content_of_request(request: ImageRequest) -> str:
    """What the generator was shown: the init image's pixels, or the prompt of a prompt file."""
    if request.init_image is not None:
        image = request.init_image
        return f"image {image.size} {hashlib.sha256(image.tobytes()).hexdigest()}"
    return "prompt " + request.images[0].prompt


def content_of_input(rel: str, data: bytes) -> str:
    """What the generator must be shown for an input whose final bytes are ``data``: the image
    fitted within the configured 64x64, as the plan decides."""
    if rel.endswith(".png"):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        chosen = choose_size(rel, image.size, (64, 64))
        fitted = (chosen.width, chosen.height)
        if fitted != image.size:
            image = image.resize(fitted, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return f"image {image.size} {hashlib.sha256(image.tobytes()).hexdigest()}"
    return "prompt " + data.decode("utf-8").strip()


def assert_each_taken_once_and_complete(
    running: RunningService, root: Path, expected: dict[str, bytes]
) -> None:
    """Each expected input ran once, from its final bytes; a rescan finds nothing more to do.

    Stops the service.
    """
    wait_until(lambda: len(running.results) >= len(expected), 60, "every input's job")
    assert running.service.watcher is not None
    with capture_logs() as logs:
        running.service.watcher.request_rescan()
        wait_until(lambda: any(e["event"] == "scan.finished" for e in logs), 30, "the rescan")
    running.stop()
    scan = next(e for e in logs if e["event"] == "scan.finished")
    counts = (scan["found"], scan["queued"], scan["done"], scan["settling"])
    assert counts == (len(expected), 0, len(expected), 0)

    assert sorted(running.outcomes()) == sorted((rel, Outcome.done) for rel in expected)
    seen = Counter(content_of_request(r) for r in running.generator.requests)
    assert seen == Counter(content_of_input(rel, data) for rel, data in expected.items())
    with SqliteJournal(root / "state" / "journal.sqlite3") as journal:
        jobs = {j.input: (j.state, j.attempts) for j in journal.jobs(limit=1000)}
    assert jobs == dict.fromkeys(expected, (JobState.done, 1))
    for rel, data in expected.items():
        assert (root / "inbox" / rel).read_bytes() == data
        recorded = manifest(root / "outbox" / rel.rpartition(".")[0])
        assert recorded["status"] == "done"
        assert recorded["input"]["path"] == rel
        assert recorded["input"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert recorded["input"]["bytes"] == len(data)


# --- rsync --------------------------------------------------------------------------------


def watch_names(folder: Path, stop: threading.Event, seen: set[str]) -> None:
    """Collect every name that appears in ``folder`` until ``stop`` is set."""
    while not stop.is_set():
        seen.update(os.listdir(folder))
        time.sleep(0.01)


@needs_rsync
def test_rsync_delivers_a_batch_and_a_large_slow_file_each_taken_once(
    tmp_path: Path, launch: Launch
) -> None:
    """rsync's hidden temporaries (and a 1.5 MB file trickled at 500 KB/s) are never taken."""
    config = config_for(tmp_path)
    source = tmp_path / "source"
    source.mkdir()
    expected = {
        "big.png": png((700, 700), seed=1),
        "cat.png": png((64, 64), seed=2),
        "story.txt": b"a lighthouse at dusk\n",
        "album/dog.png": png((64, 64), seed=3),
    }
    write_tree(source, expected)
    running = launch(config)
    inbox = tmp_path / "inbox"
    stop, names = threading.Event(), set[str]()
    spy = threading.Thread(target=watch_names, args=(inbox, stop, names))
    spy.start()
    try:
        # big.png sorts first, so the small files arrive only after its slow transfer.
        subprocess.run(["rsync", "-a", "--bwlimit=500", f"{source}/", f"{inbox}/"], check=True)
    finally:
        stop.set()
        spy.join()
    # The slow transfer went through a hidden temporary that the daemon had to ignore.
    assert any(n.startswith(".big.png.") for n in names), sorted(names)
    assert_each_taken_once_and_complete(running, tmp_path, expected)


@needs_rsync
def test_rsync_inplace_grows_the_final_name_slowly_and_it_is_taken_once_complete(
    tmp_path: Path, launch: Launch
) -> None:
    """With --inplace the final name grows for ~1.5 s in 256 KiB steps; settling waits it out."""
    config = config_for(tmp_path, settle=SLOW_SETTLE)
    source = tmp_path / "source"
    source.mkdir()
    data = png((700, 700), seed=4)
    (source / "slow.png").write_bytes(data)
    running = launch(config)
    target = tmp_path / "inbox" / "slow.png"
    sizes: list[int] = []
    transfer = subprocess.Popen(
        ["rsync", "--inplace", "--bwlimit=1000", str(source / "slow.png"), str(target)]
    )
    try:
        while transfer.poll() is None:
            if target.exists():
                size = target.stat().st_size
                if not sizes or sizes[-1] != size:
                    sizes.append(size)
            time.sleep(0.01)
    finally:
        if transfer.poll() is None:
            transfer.kill()
        transfer.wait()
    assert transfer.returncode == 0
    # The final name was seen part-written: this is the case settling exists for.
    assert any(0 < s < len(data) for s in sizes), sizes
    assert_each_taken_once_and_complete(running, tmp_path, {"slow.png": data})


@needs_rsync
def test_rsync_delay_updates_moves_everything_into_place_at_the_end(
    tmp_path: Path, launch: Launch
) -> None:
    """--delay-updates stages files in a hidden .~tmp~ folder, then renames them all at once."""
    config = config_for(tmp_path)
    source = tmp_path / "source"
    expected = {f"set/p{i}.txt": f"prompt {i}\n".encode() for i in range(5)}
    expected["set/pic.png"] = png((64, 64), seed=5)
    write_tree(source, expected)
    running = launch(config)
    subprocess.run(
        ["rsync", "-a", "--delay-updates", f"{source}/", f"{tmp_path / 'inbox'}/"], check=True
    )
    assert_each_taken_once_and_complete(running, tmp_path, expected)


# --- unison -------------------------------------------------------------------------------


def unison(source: Path, inbox: Path, home: Path) -> None:
    """One batch-mode unison run between two local folders (no network involved)."""
    subprocess.run(
        ["unison", str(source), str(inbox), "-batch", "-auto", "-silent", "-times", "-ui", "text"],
        check=True,
        env={**os.environ, "UNISON": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@needs_unison
def test_unison_syncs_twice_and_each_input_is_taken_once(tmp_path: Path, launch: Launch) -> None:
    """Two unison runs: the first brings four inputs, the second one more; nothing runs twice."""
    config = config_for(tmp_path)
    source, home = tmp_path / "replica", tmp_path / "unison-home"
    source.mkdir()
    home.mkdir()
    expected = {
        "big.png": png((1000, 1000), seed=6),
        "cat.png": png((64, 64), seed=7),
        "story.txt": b"a harbour in the rain\n",
        "sub/dog.png": png((64, 64), seed=8),
    }
    write_tree(source, expected)
    running = launch(config)
    unison(source, tmp_path / "inbox", home)
    wait_until(lambda: len(running.results) >= len(expected), 60, "the first sync's jobs")
    expected["later.txt"] = b"a second sync brings one more\n"
    (source / "later.txt").write_bytes(expected["later.txt"])
    unison(source, tmp_path / "inbox", home)
    assert_each_taken_once_and_complete(running, tmp_path, expected)


# --- simulated sync clients and browsers ----------------------------------------------------


def nextcloud(inbox: Path, expected: dict[str, bytes]) -> None:
    """Nextcloud desktop: its sync database and log, a hidden ``.NAME.~id`` download renamed
    into place, a ``.part`` upload, a LibreOffice lock and a virtual-file placeholder."""
    for name in (".sync_4a8b1c2d.db", ".sync_4a8b1c2d.db-wal", ".owncloudsync.log"):
        (inbox / name).write_bytes(b"client state " * 50)
    (inbox / "nc-virtual.png.nextcloud").write_bytes(b"")
    expected["nc-photo.png"] = png((64, 64), seed=10)
    write_slowly(inbox / ".nc-photo.png.~1f2e3d", expected["nc-photo.png"])
    os.rename(inbox / ".nc-photo.png.~1f2e3d", inbox / "nc-photo.png")
    expected["nc-story.txt"] = b"a ferry crossing at night\n"
    (inbox / ".~lock.nc-story.txt#").write_bytes(b",user,host,01.01.2024 12:00,file:///\n")
    write_slowly(inbox / "nc-story.txt.part", expected["nc-story.txt"], chunks=4)
    os.rename(inbox / "nc-story.txt.part", inbox / "nc-story.txt")
    (inbox / ".~lock.nc-story.txt#").unlink()
    with open(inbox / ".sync_4a8b1c2d.db-wal", "ab") as handle:
        handle.write(b"more client state")


def dropbox(inbox: Path, expected: dict[str, bytes]) -> None:
    """Dropbox: ``.dropbox`` files, a download staged in ``.dropbox.cache`` and moved into
    place, and an Office-style ``~$`` temporary beside a file saved in place."""
    (inbox / ".dropbox").write_bytes(b'{"tag": "dropbox"}')
    (inbox / ".dropbox.cache" / "2024-05-01").mkdir(parents=True)
    expected["db-cat.png"] = png((64, 64), seed=11)
    staged = inbox / ".dropbox.cache" / "2024-05-01" / "db-cat.png.staging"
    write_slowly(staged, expected["db-cat.png"])
    os.rename(staged, inbox / "db-cat.png")
    expected["db-notes.txt"] = b"a quiet library\n"
    (inbox / "~$db-notes.txt").write_bytes(b"owner file of the editor")
    (inbox / "db-notes.txt").write_bytes(expected["db-notes.txt"])
    (inbox / "~$db-notes.txt").unlink()


def browsers(inbox: Path, expected: dict[str, bytes]) -> None:
    """Chrome's ``.crdownload``, Firefox's empty final name plus ``.part`` renamed over it,
    and Safari's ``NAME.download`` bundle folder (its download stalls for a while) whose
    file is moved out at the end."""
    expected["ch-cat.png"] = png((64, 64), seed=12)
    write_slowly(inbox / "ch-cat.png.crdownload", expected["ch-cat.png"])
    os.rename(inbox / "ch-cat.png.crdownload", inbox / "ch-cat.png")
    expected["ff-cat.png"] = png((64, 64), seed=13)
    (inbox / "ff-cat.png").write_bytes(b"")
    write_slowly(inbox / "ff-cat.png.part", expected["ff-cat.png"], chunks=20)
    os.replace(inbox / "ff-cat.png.part", inbox / "ff-cat.png")
    expected["sf-cat.png"] = png((64, 64), seed=14)
    bundle = inbox / "sf-cat.png.download"
    bundle.mkdir()
    (bundle / "Info.plist").write_bytes(b"<?xml version='1.0'?><plist/>")
    half = len(expected["sf-cat.png"]) // 2
    write_slowly(bundle / "sf-cat.png", expected["sf-cat.png"][:half])
    time.sleep(3 * SETTLE)  # the download stalls: the part-written file inside settles
    with open(bundle / "sf-cat.png", "ab") as handle:
        handle.write(expected["sf-cat.png"][half:])
    os.rename(bundle / "sf-cat.png", inbox / "sf-cat.png")
    shutil.rmtree(bundle)


def filled_later(inbox: Path, expected: dict[str, bytes]) -> None:
    """A final name created empty and filled in place after a pause three times settle."""
    (inbox / "late-text.txt").write_bytes(b"")
    (inbox / "late-image.png").write_bytes(b"")
    time.sleep(3 * SETTLE)
    expected["late-text.txt"] = b"a train arriving late\n"
    expected["late-image.png"] = png((64, 64), seed=15)
    for name in ("late-text.txt", "late-image.png"):
        with open(inbox / name, "r+b") as handle:  # same inode: filled in place
            handle.write(expected[name])


def syncthing(inbox: Path, expected: dict[str, bytes]) -> None:
    """Syncthing: ``.syncthing.NAME.tmp`` (and Windows' ``~syncthing~NAME.tmp``) renamed
    into place."""
    expected["st-cat.png"] = png((64, 64), seed=16)
    write_slowly(inbox / ".syncthing.st-cat.png.tmp", expected["st-cat.png"])
    os.rename(inbox / ".syncthing.st-cat.png.tmp", inbox / "st-cat.png")
    expected["st-two.txt"] = b"two boats\n"
    write_slowly(inbox / "~syncthing~st-two.txt.tmp", expected["st-two.txt"], chunks=3)
    os.rename(inbox / "~syncthing~st-two.txt.tmp", inbox / "st-two.txt")


CONFLICT_COPIES = (
    "st-cat.sync-conflict-20240501-101010-ABCDEFG.png",
    "st-two.sync-conflict-20240501-101010-ABCDEFG.txt",
    "db-cat (conflicted copy 2024-05-01).png",
    "db-notes (Jane's conflicted copy 2024-05-01).txt",
    "nc-photo (conflicted copy 2024-05-01 101010).png",
)


def test_simulated_sync_clients_and_browsers_each_input_taken_once_complete(
    tmp_path: Path, launch: Launch
) -> None:
    """Nextcloud, Dropbox, browser and Syncthing write patterns, a 0-byte name filled later,
    then conflict copies of finished inputs: 11 inputs, 11 jobs, all from their final bytes."""
    config = config_for(tmp_path)
    inbox = tmp_path / "inbox"
    running = launch(config)
    expected: dict[str, bytes] = {}
    for client in (nextcloud, dropbox, browsers, filled_later, syncthing):
        client(inbox, expected)
    wait_until(lambda: len(running.results) >= len(expected), 60, "the first round of jobs")
    # Conflict copies of finished inputs, as sync tools make them when two sides edit.
    for i, name in enumerate(CONFLICT_COPIES):
        data = png((64, 64), seed=100 + i) if name.endswith(".png") else b"a conflicting edit\n"
        (inbox / name).write_bytes(data)
    time.sleep(2 * SETTLE)  # long enough for a wrongly accepted copy to settle and queue
    assert len(expected) == 11
    assert_each_taken_once_and_complete(running, tmp_path, expected)
