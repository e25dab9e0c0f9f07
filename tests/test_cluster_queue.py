"""Queue control in a cluster: a cancel, a priority or the web UI on one host reach the job
through the shared PostgreSQL store, whichever host runs it; `dropforge status` shows the
live hosts beside the interrupted, queued and canceled jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.cli import main
from daemon.config import load_config
from daemon.runtime.cluster import shared_settings
from daemon.store.cluster import ClusterJournal
from daemon.store.open import open_journal
from daemon.ui.server import WebUI
from daemon.values import CancelReason, JobState
from tests.fakes import Launch, SolidGenerator, wait_until
from tests.helpers import manifest, noise_image
from tests.test_ui import Client


def host_config(tmp_path: Path, pg_url: str, name: str, share: Path) -> Path:
    """A host's config: its own state folder, the shared inbox and outbox, one database."""
    root = tmp_path / name
    root.mkdir()
    config = root / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "state"\nmin_free_mb = 0\nsettle_seconds = 0.2\n\n'
        f'[cluster]\ndatabase = "{pg_url}"\nhost_name = "{name}"\npoll_seconds = 0.5\n\n'
        f'[[inbox]]\nname = "share"\npath = "{share}/inbox"\noutput = "{share}/outbox"\n\n'
        '[models]\ndefault = "org/model"\n\n[defaults]\nwidth = 64\nheight = 64\n\n'
        '[presets.standard]\nsteps = 4\n\n[ui]\nlisten = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    return config


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """The shared folder both hosts see (plain paths: this file tests the store's part)."""
    root = tmp_path / "share"
    (root / "inbox").mkdir(parents=True)
    (root / "outbox").mkdir()
    return root


def state(config: Path, rel: str) -> JobState | None:
    """The state of one input's job in the shared store, as a host sees it."""
    settings = load_config(config)
    with open_journal(settings) as journal:
        job = journal.get_job(str(settings.inboxes[0].path), rel)
    return None if job is None else job.state


def test_a_cancel_on_another_host_stops_the_running_job(
    tmp_path: Path, pg_url: str, share: Path, launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dropforge cancel` on host b reaches the job host a runs through the database: a stops
    it at its next step, keeps the images it finished and writes a canceled manifest."""
    a = host_config(tmp_path, pg_url, "a", share)
    b = host_config(tmp_path, pg_url, "b", share)
    launch(a, generator=SolidGenerator(step_seconds=0.05), retry_tick=3600)
    noise_image(share / "inbox" / "big.png")
    (share / "inbox" / "big.toml").write_text("count = 6\nseed = 10\n", encoding="utf-8")
    out = share / "outbox" / "big"
    wait_until(lambda: len(list(out.glob("big-*.png"))) >= 2, message="two images")
    with capture_logs() as logs:
        asked = time.monotonic()
        assert main(["cancel", "-c", str(b), str(share / "inbox" / "big.png")]) == 0
        wait_until(lambda: any(e["event"] == "job.cancel_heard" for e in logs), 5, "a hears it")
        heard = time.monotonic() - asked
        wait_until(lambda: state(b, "big.png") is JobState.canceled, message="canceled")
    printed = capsys.readouterr().out.splitlines()  # (the daemon's log lines go there too)
    assert "canceled 0 jobs" in printed
    assert any(line.startswith("stopping big.png: ") for line in printed)
    record = manifest(out)
    assert record["status"] == "canceled"
    kept = [o["file"] for o in record["outputs"]]
    assert 2 <= len(kept) < 6
    assert sorted(p.name for p in out.glob("big-*.png")) == sorted(kept)
    with open_journal(load_config(b)) as journal:
        job = journal.get_job(str(share / "inbox"), "big.png")
        assert job is not None
        assert job.error == f"canceled on request ({len(kept)} of 6 outputs kept)"
        assert [a.ended.value for a in journal.attempts(job.id)] == ["canceled"]
    print(f"cancel heard by the other host after {heard:.2f} s")


def test_status_shows_live_hosts_and_the_queue_of_every_host(
    tmp_path: Path, pg_url: str, share: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status on a host names every live host, the job each runs, a dead host's job as
    interrupted (taken over by a live host), the queue in claim order and recent cancels."""
    config = host_config(tmp_path, pg_url, "b", share)
    settings = load_config(config)
    inbox, outbox = str(share / "inbox"), str(share / "outbox")
    with open_journal(settings) as journal:
        assert isinstance(journal, ClusterJournal)
        journal.join(
            "a:101",
            host="a",
            pid=101,
            device="cuda:0",
            version="0.1.0",
            settings=shared_settings(settings),
        )
        ids = {}
        for name in ("run.png", "dead.png", "q1.png", "q2.png", "gone.png"):
            job, _ = journal.upsert_job(
                inbox=inbox,
                input=name,
                kind="image",
                fingerprint="fp",
                job_key="k",
                out_dir=f"{outbox}/{name[:-4]}",
            )
            ids[name] = job.id
        running = journal.claim("a:101", 600)
        dead = journal.claim("z:99", 600)  # a host that never beat (or stopped beating)
        assert running is not None and dead is not None
        journal.set_progress(running.id, 1, 4, "step 2/4", claim=running.claim)
        journal.beat("a:101", device="cuda:0", job_id=running.id, job_input="run.png")
        journal.set_priority(ids["q2.png"], 3)
        journal.cancel(ids=[ids["gone.png"]])
        assert main(["status", "-c", str(config)]) == 0
        journal.leave("a:101")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Daemon: not running"  # on this host
    assert lines[1].startswith("Jobs: 2 queued, 1 running, ")
    assert lines[1].endswith(", 1 canceled, 1 interrupted")
    assert lines[2].startswith("Host: a:101 (cuda:0, dropforge 0.1.0): run.png; last beat ")
    assert lines[3].startswith("Running: run.png on a:101 (image 1/4, step 2/4, ")
    assert lines[4] == (
        "Interrupted: dead.png (image 0/0; its process z:99 is gone; a live host takes it over)"
    )
    assert lines[5] == "Queued (2): q2.png [priority 3], q1.png"
    assert lines[6:] == ["Recently canceled:", "  gone.png: canceled on request"]


@pytest.fixture
def cluster_ui(tmp_path: Path, pg_url: str, share: Path) -> Iterator[tuple[Client, Path]]:
    """The web UI of host b on the shared store, and a client of it."""
    config = host_config(tmp_path, pg_url, "b", share)
    with capture_logs():
        ui = WebUI(load_config(config), required=True)
        ui.start()
        yield Client(ui), config
        ui.stop()


def test_the_web_ui_steers_a_cluster(
    cluster_ui: tuple[Client, Path], tmp_path: Path, pg_url: str, share: Path, launch: Launch
) -> None:
    """The queue page of one host shows the job another host runs, and its cancel button
    asks that host to stop it through the database."""
    client, config_b = cluster_ui
    config_a = host_config(tmp_path, pg_url, "a", share)
    launch(config_a, generator=SolidGenerator(step_seconds=0.05), retry_tick=3600)
    noise_image(share / "inbox" / "cat.png")
    (share / "inbox" / "cat.toml").write_text("count = 6\n", encoding="utf-8")
    wait_until(lambda: state(config_b, "cat.png") is JobState.running, message="a runs it")
    data = client.http.get("/api/queue").json()
    (host,) = data["hosts"]
    assert host["host"] == "a"
    (running,) = data["running"]
    assert (running["input"], running["owner"]) == ("cat.png", host["owner"])
    response = client.post("/api/cancel", {"ids": [running["id"]]})
    assert response.status_code == 200
    assert response.json()["stopping"] == ["cat.png"]
    wait_until(lambda: state(config_b, "cat.png") is JobState.canceled, message="canceled")
    with open_journal(load_config(config_b)) as journal:
        assert journal.get(running["id"]).cancel is CancelReason.requested


def test_a_dry_run_on_another_host_sees_the_shared_jobs(
    tmp_path: Path, pg_url: str, share: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`once --dry-run` on host b knows what host a finished (the shared jobs, read, never
    written) and what is new, and changes nothing in the database."""
    from daemon.runtime.once import run_once
    from tests.test_dry_run import verdicts

    a = host_config(tmp_path, pg_url, "a", share)
    b = host_config(tmp_path, pg_url, "b", share)
    (share / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
    report = run_once(load_config(a), SolidGenerator)
    assert [r.rel for r in report.results] == ["cat.txt"]
    (share / "inbox" / "dog.txt").write_text("a dog\n", encoding="utf-8")
    with open_journal(load_config(b)) as journal:
        before = journal.jobs()
    assert main(["once", "--dry-run", "-c", str(b)]) == 0
    found = verdicts(capsys.readouterr().out)
    assert (found["cat.txt"], found["dog.txt"]) == ("skip (done)", "make (new)")
    with open_journal(load_config(b)) as journal:
        assert journal.jobs() == before
