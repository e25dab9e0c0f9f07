"""Queue control on a running service (fake generator): cancel, priority, retry and removals
reach the daemon at once, through the same journal the command line writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.cli import main
from daemon.outputs.ratings import Rating, read_rating
from daemon.store.sqlite import SqliteJournal
from daemon.values import CancelReason, JobState
from tests.fakes import Launch, RunningService, SolidGenerator, wait_until
from tests.helpers import manifest, noise_image, write_config

MODEL = "./models/none"
FAST = "settle_seconds = 0.2\nrescan_interval = 3600\nmax_batch = 1"


def journal_of(config: Path) -> SqliteJournal:
    """The journal beside a test config."""
    return SqliteJournal(config.parent / "state" / "journal.sqlite3")


def state_of(config: Path, rel: str) -> JobState | None:
    """The state of one input's job, or None."""
    with journal_of(config) as journal:
        job = journal.get_job(str(config.parent / "inbox"), rel)
    return None if job is None else job.state


def drop(config: Path, name: str, sidecar: str = "") -> Path:
    """Put an image (and its sidecar) into the inbox."""
    path = noise_image(config.parent / "inbox" / name)
    if sidecar:
        path.with_suffix(".toml").write_text(sidecar, encoding="utf-8")
    return path


def heard(service: RunningService) -> bool:
    """Whether the service's worker has heard a cancel of its running job."""
    assert service.service.loop is not None
    return service.service.loop.worker.cancel_reason() is not None


def cli(*argv: str) -> int:
    """Run a dropforge command."""
    return main(list(argv))


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Keep the service's log lines out of the command output the tests read."""
    with capture_logs():
        yield


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config with a fast settle time and no periodic rescan to hide behind."""
    return write_config(tmp_path, MODEL, extra_daemon=FAST, steps=4, size=64)


def test_cancel_of_a_queued_job_leaves_the_running_job_alone(
    config: Path, launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cancelling a pending job never stops the running one (InvokeAI's bug)."""
    gate = threading.Event()
    service = launch(config, generator=SolidGenerator(gate=gate), retry_tick=3600)
    drop(config, "a.png")
    wait_until(lambda: state_of(config, "a.png") is JobState.running, message="a running")
    waiting_b = drop(config, "b.png")
    wait_until(lambda: state_of(config, "b.png") is JobState.queued, message="b queued")
    assert cli("cancel", "-c", str(config), str(waiting_b)) == 0
    assert capsys.readouterr().out == "canceled 1 job: b.png\n"
    gate.set()
    wait_until(lambda: state_of(config, "a.png") is JobState.done, message="a done")
    assert state_of(config, "b.png") is JobState.canceled
    assert [r.rel for r in service.results] == ["a.png"]
    assert manifest(config.parent / "outbox" / "a")["status"] == "done"
    assert not (config.parent / "outbox" / "b").exists()


def test_cancel_of_the_running_job_stops_it_and_keeps_finished_images(
    config: Path, launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cancel stops the running job at a step, keeps the images it made and lists them in
    a canceled manifest; retry resumes it with those images kept."""
    generator = SolidGenerator(step_seconds=0.05)
    launch(config, generator=generator, retry_tick=3600)
    path = drop(config, "big.png", "count = 6\nseed = 10\n")
    out = config.parent / "outbox" / "big"
    wait_until(lambda: len(list(out.glob("big-*.png"))) >= 2, message="two images")
    with capture_logs() as logs:
        assert cli("cancel", "-c", str(config), str(path)) == 0
        wait_until(lambda: state_of(config, "big.png") is JobState.canceled, message="canceled")
    text = capsys.readouterr().out
    assert text.startswith("canceled 0 jobs\nstopping big.png: ")
    record = manifest(out)
    assert record["status"] == "canceled"
    kept = [o["file"] for o in record["outputs"]]
    assert 2 <= len(kept) < 6
    assert sorted(p.name for p in out.glob("big-*.png")) == sorted(kept)
    assert record["warnings"][-1] == f"canceled on request, {len(kept)} of 6 outputs finished"
    (event,) = [e for e in logs if e["event"] == "job.canceled"]
    assert (event["reason"], event["kept"]) == ("requested", len(kept))
    with journal_of(config) as journal:
        job = journal.get_job(str(config.parent / "inbox"), "big.png")
    assert job is not None and job.error == f"canceled on request ({len(kept)} of 6 outputs kept)"
    assert cli("retry", "-c", str(config), str(path)) == 0
    wait_until(lambda: state_of(config, "big.png") is JobState.done, message="resumed")
    assert manifest(out)["status"] == "done"
    seeds = [r.images[0].seed for r in generator.requests]
    assert len(seeds) == 6 + 1 - len(kept) or len(set(seeds)) == len(seeds)


def test_deleting_the_input_cancels_its_job_and_bringing_it_back_requeues(
    config: Path, launch: Launch
) -> None:
    """Deleting the input of the running job stops it (canceled: removed); a queued job whose
    input is deleted is canceled too; an input that comes back is queued again."""
    gate = threading.Event()
    service = launch(config, generator=SolidGenerator(gate=gate), retry_tick=3600)
    running = drop(config, "a.png", "count = 3\n")
    wait_until(lambda: state_of(config, "a.png") is JobState.running, message="a running")
    queued = drop(config, "b.png")
    wait_until(lambda: state_of(config, "b.png") is JobState.queued, message="b queued")
    data = queued.read_bytes()
    queued.unlink()
    wait_until(lambda: state_of(config, "b.png") is JobState.canceled, message="b canceled")
    running.unlink()
    wait_until(lambda: heard(service), message="the cancel of a.png heard")
    assert service.service.loop is not None
    assert service.service.loop.worker.cancel_reason() is CancelReason.removed
    gate.set()
    wait_until(lambda: state_of(config, "a.png") is JobState.canceled, message="a canceled")
    assert manifest(config.parent / "outbox" / "a")["status"] == "canceled"
    queued.write_bytes(data)
    wait_until(lambda: state_of(config, "b.png") is JobState.done, message="b done after return")


def test_priority_top_makes_the_job_the_next_claimed(
    config: Path, launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dropforge priority PATH --top` makes that job the next one claimed."""
    gate = threading.Event()
    service = launch(config, generator=SolidGenerator(gate=gate), retry_tick=3600)
    drop(config, "first.png")
    wait_until(lambda: state_of(config, "first.png") is JobState.running, message="running")
    for name in ("b.png", "c.png", "d.png"):
        drop(config, name)
    wait_until(
        lambda: all(state_of(config, n) is JobState.queued for n in ("b.png", "c.png", "d.png")),
        message="three queued",
    )
    inbox = config.parent / "inbox"
    assert cli("priority", "-c", str(config), str(inbox / "d.png"), "--top") == 0
    assert capsys.readouterr().out == "d.png: priority 0; 0 queued jobs ahead\n"
    assert cli("queue", "-c", str(config)) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in table[1:]] == [
        ["run", "0", "first.png"],
        ["1", "0", "d.png"],
        ["2", "0", "b.png"],
        ["3", "0", "c.png"],
    ]
    gate.set()
    wait_until(lambda: len(service.results) == 4, message="four jobs")
    assert [r.rel for r in service.results] == ["first.png", "d.png", "b.png", "c.png"]


def test_retry_reaches_a_running_daemon_at_once(config: Path, launch: Launch) -> None:
    """A retry from another process runs the job without waiting for a rescan or retry tick."""
    gate = threading.Event()
    service = launch(config, generator=SolidGenerator(gate=gate), retry_tick=3600)
    drop(config, "a.png")
    wait_until(lambda: state_of(config, "a.png") is JobState.running, message="a running")
    late = drop(config, "late.png")
    wait_until(lambda: state_of(config, "late.png") is JobState.queued, message="queued")
    assert cli("cancel", "-c", str(config), str(late)) == 0
    gate.set()
    wait_until(lambda: state_of(config, "a.png") is JobState.done, message="a done")
    assert cli("retry", "-c", str(config), str(late)) == 0
    wait_until(lambda: state_of(config, "late.png") is JobState.done, 5, "late done")
    assert [r.rel for r in service.results] == ["a.png", "late.png"]


def test_cancel_all_spares_the_running_job_unless_asked(
    config: Path, launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--all cancels the queue but not the running job; --all --running stops that too."""
    gate = threading.Event()
    service = launch(config, generator=SolidGenerator(gate=gate), retry_tick=3600)
    drop(config, "a.png")
    wait_until(lambda: state_of(config, "a.png") is JobState.running, message="a running")
    drop(config, "b.png")
    drop(config, "c.png")
    wait_until(lambda: state_of(config, "c.png") is JobState.queued, message="c queued")
    assert cli("cancel", "-c", str(config), "--all") == 0
    assert capsys.readouterr().out == "canceled 2 jobs: b.png, c.png\n"
    assert state_of(config, "a.png") is JobState.running
    assert cli("cancel", "-c", str(config), "--all", "--running") == 0
    out = capsys.readouterr().out
    assert out.startswith("canceled 0 jobs\nstopping a.png: the running daemon stops it")
    wait_until(lambda: heard(service), message="the cancel heard")  # else a.png may finish
    gate.set()
    wait_until(lambda: state_of(config, "a.png") is JobState.canceled, message="a canceled")


def test_deleted_output_of_a_done_job_is_a_discard_and_a_damaged_one_is_remade(
    config: Path, launch: Launch
) -> None:
    """The output watch records an image deleted from a done job as discarded (an XMP with
    rating -1 where it was) and does not remake it; a damaged image requeues the job."""
    service = launch(config, retry_tick=3600)
    drop(config, "a.png", "count = 2\nseed = 5\n")
    wait_until(lambda: state_of(config, "a.png") is JobState.done, message="a done")
    image = config.parent / "outbox" / "a" / "a-6.png"
    image.unlink()
    sidecar = image.with_name("a-6.png.xmp")
    wait_until(sidecar.exists, message="the discard recorded")
    assert read_rating(image) is Rating.discard
    assert 'xmp:Rating="-1"' in sidecar.read_text(encoding="utf-8")
    assert not image.exists() and state_of(config, "a.png") is JobState.done
    other = config.parent / "outbox" / "a" / "a-5.png"
    (other.parent / "tmp").write_bytes(other.read_bytes()[:100])
    os.replace(other.parent / "tmp", other)  # damaged (replaced by a sync tool), not deleted
    wait_until(lambda: other.stat().st_size > 100, message="a-5.png made again")
    wait_until(lambda: state_of(config, "a.png") is JobState.done, message="done again")
    assert [r.rel for r in service.results] == ["a.png", "a.png"]
    assert service.results[1].generated == 1
    assert not image.exists()


def test_status_names_queued_jobs_and_the_loading_model(
    config: Path, launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    """status shows the daemon, `loading model …` before the first step and the queued jobs."""
    gate = threading.Event()
    launch(config, generator=SolidGenerator(gate=gate), retry_tick=3600)
    drop(config, "a.png")
    wait_until(lambda: state_of(config, "a.png") is JobState.running, message="a running")
    for n in range(12):
        drop(config, f"q{n:02}.png", "priority = 3\n" if n == 11 else "")
    wait_until(
        lambda: all(state_of(config, f"q{n:02}.png") is JobState.queued for n in range(12)),
        message="twelve queued",
    )
    with journal_of(config) as journal:  # arrival order: the order their settling ended
        order = [j.input for j in journal.queue()]
    assert order[0] == "q11.png"
    assert cli("status", "-c", str(config)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Daemon: running (pid ")
    (running,) = [line for line in lines if line.startswith("Running: ")]
    assert running.startswith("Running: a.png (image 0/1, loading model default, ")
    (queued,) = [line for line in lines if line.startswith("Queued")]
    names = ", ".join(order[1:10])
    assert queued == f"Queued (12): q11.png [priority 3], {names} and 2 more"
    assert cli("status", "--json", "-c", str(config)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["queued_total"] == 12 and len(data["queued"]) == 10
    assert data["running"][0]["note"] == "loading model default"
    gate.set()


def test_status_shows_a_dead_daemons_job_as_interrupted(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job left running by a process that is gone is interrupted, not running."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    dead_owner = f"{socket.gethostname()}:{gone.stdout.strip()}"
    with journal_of(config) as journal:
        job, _ = journal.upsert_job(
            inbox=str(config.parent / "inbox"),
            input="cat.png",
            kind="image",
            fingerprint="fp",
            job_key="k",
            out_dir=str(config.parent / "outbox" / "cat"),
        )
        journal.claim(dead_owner, 600)
    assert cli("status", "-c", str(config)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Daemon: not running"
    assert lines[1].startswith("Jobs: 0 queued, 0 running, ") and lines[1].endswith("1 interrupted")
    assert lines[2] == (
        f"Interrupted: cat.png (image 0/0; its process {dead_owner} is gone; "
        "it resumes when dropforge runs again)"
    )
    assert job.id


def test_cancel_and_priority_name_their_mistakes(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unknown paths, finished jobs and missing arguments are named, with the exit code."""
    inbox = config.parent / "inbox"
    assert cli("cancel", "-c", str(config)) == 2
    assert capsys.readouterr().err == "Error: cancel needs PATH… or --all\n"
    assert cli("cancel", "-c", str(config), "--running") == 2
    assert capsys.readouterr().err == (
        "Error: --running goes with --all (name a running job's path to stop it)\n"
    )
    assert cli("cancel", "-c", str(config), str(inbox / "nope.png")) == 1
    assert capsys.readouterr().err == (
        f"{inbox / 'nope.png'}: not in the journal (never seen, or still settling)\n"
    )
    with journal_of(config) as journal:
        job, _ = journal.upsert_job(
            inbox=str(inbox), input="done.png", kind="image", fingerprint="f", job_key="k",
            out_dir="/o",
        )  # fmt: skip
        journal.mark_done(job.id, seconds=1)
    assert cli("cancel", "-c", str(config), str(inbox / "done.png")) == 0
    assert capsys.readouterr().err == "done.png: done, nothing to cancel\n"
    assert cli("priority", "-c", str(config), str(inbox / "done.png"), "--top") == 2
    assert capsys.readouterr().err == "Error: done.png: done, not in the queue: nothing to move\n"
    assert cli("priority", "-c", str(config), str(inbox / "done.png"), "5", "--top") == 2
    assert capsys.readouterr().err == (
        "Error: priority needs exactly one of --top, --bottom or a number N\n"
    )


def test_a_canceled_mesh_or_tween_writes_a_canceled_manifest(
    tmp_path: Path, launch: Launch
) -> None:
    """A mesh canceled mid-way lists no outputs; a tween lists the frames its sequence had
    (the copied endpoints) in the sequence's own canceled manifest."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST, steps=4, models={"mesh": MODEL})
    inbox = tmp_path / "inbox"
    gate = threading.Event()
    service = launch(config, generator=SolidGenerator(gate=gate), retry_tick=3600)
    drop(config, "chair.png", 'task = "mesh"\n')
    wait_until(lambda: state_of(config, "chair.png") is JobState.running, message="mesh running")
    assert cli("cancel", "-c", str(config), str(inbox / "chair.png")) == 0
    wait_until(lambda: heard(service), message="the mesh's cancel heard")
    gate.set()
    wait_until(lambda: state_of(config, "chair.png") is JobState.canceled, message="canceled")
    mesh = manifest(tmp_path / "outbox" / "chair")
    assert (mesh["status"], mesh["outputs"]) == ("canceled", [])
    assert mesh["warnings"] == ["canceled on request, 0 of 1 outputs finished"]

    gate.clear()
    noise_image(inbox / "walk" / "a.png", seed=1)
    noise_image(inbox / "walk" / "b.png", seed=2)
    (inbox / "walk" / "walk.job.toml").write_text(
        'start = "a.png"\nend = "b.png"\ndepth = 2\n', encoding="utf-8"
    )
    rel = "walk/walk.job.toml"
    wait_until(lambda: state_of(config, rel) is JobState.running, message="tween running")
    assert cli("cancel", "-c", str(config), str(inbox / rel)) == 0
    wait_until(lambda: heard(service), message="the tween's cancel heard")
    gate.set()
    wait_until(lambda: state_of(config, rel) is JobState.canceled, message="tween canceled")
    job = manifest(tmp_path / "outbox" / "walk" / "walk")
    assert (job["status"], job.get("sequences", [])) == ("canceled", [])
    sequence = manifest(tmp_path / "outbox" / "walk" / "sequences" / "walk")
    assert sequence["status"] == "canceled"
    assert [o["file"] for o in sequence["outputs"]] == ["000.png", "100.png"]
