"""Several GPUs in one box: one worker process per device on one SQLite journal."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.runtime.pool import on_device, worker_devices
from tests.cluster.harness import Host
from tests.helpers import write_config

_STARTED: list[Host] = []


def request_stop(host: Host) -> None:
    """Stop ``host``'s daemon after the test even when the test fails (see the fixture)."""
    _STARTED.append(host)


@pytest.fixture(autouse=True)
def _stop_daemons() -> Iterator[None]:
    """Every daemon a test started is stopped afterwards, whatever the test's outcome."""
    yield
    while _STARTED:
        _STARTED.pop().stop()


def test_devices_are_listed_or_found(tmp_path: Path) -> None:
    """`devices` names the workers; `device = "auto"` takes every GPU when there are several."""
    config = write_config(tmp_path, "org/model", extra_daemon='devices = ["cuda:0", "cuda:1"]')
    assert worker_devices(load_config(config)) == ["cuda:0", "cuda:1"]
    settings = on_device(load_config(config), "auto")
    assert settings.devices == () and settings.device == "auto"
    assert worker_devices(settings, count=lambda: 3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert worker_devices(settings, count=lambda: 1) == ["auto"]


def test_two_worker_processes_share_one_journal(tmp_path: Path) -> None:
    """`devices = ["cpu", "cpu"]`: the daemon and its worker process both run jobs from one
    SQLite journal, each input exactly once."""
    write_config(
        tmp_path, "org/model", extra_daemon='devices = ["cpu", "cpu"]\nsettle_seconds = 0.2'
    )
    host = Host("one", tmp_path, tmp_path)
    for i in range(12):
        (tmp_path / "inbox" / f"p{i:02d}.txt").write_text(f"prompt {i}\n", encoding="utf-8")
    host.start(step_seconds=0.15)
    request_stop(host)
    journal = tmp_path / "state" / "journal.sqlite3"

    def done() -> int:
        try:
            with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
                found = db.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()
        except sqlite3.OperationalError:  # not made yet, or its schema not yet committed
            return 0
        return int(found[0])

    deadline = time.monotonic() + 90
    while done() < 12:
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(0.1)
    assert host.stop() == 0
    logs = tmp_path / "state" / "logs"
    per_process = {}
    for name in ("d.log", "worker-1.log"):
        lines = (logs / name).read_text(encoding="utf-8").splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        per_process[name] = sorted(e["input"] for e in events if e["event"] == "job.done")
    assert all(per_process.values()), per_process
    everything = sorted(i for inputs in per_process.values() for i in inputs)
    assert everything == [f"p{i:02d}.txt" for i in range(12)]
    for i in range(12):
        manifest = json.loads((tmp_path / "outbox" / f"p{i:02d}" / "manifest.json").read_text())
        assert manifest["status"] == "done"


def test_worker_processes_do_not_outlive_a_killed_daemon(tmp_path: Path) -> None:
    """kill -9 of `dropforge run` ends its worker processes too (no orphan claims jobs)."""
    import os

    write_config(tmp_path, "org/model", extra_daemon='devices = ["cpu", "cpu"]')
    host = Host("one", tmp_path, tmp_path)
    host.start(step_seconds=0.1)
    log = tmp_path / "state" / "logs" / "worker-1.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "pool.worker_started" in log.read_text(encoding="utf-8")):
        assert time.monotonic() < deadline, "the worker process did not start"
        time.sleep(0.1)
    started = json.loads(
        next(line for line in log.read_text().splitlines() if "pool.worker_started" in line)
    )
    child = int(started["pid"])
    host.kill()
    deadline = time.monotonic() + 30
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the worker process outlived the daemon"
        time.sleep(0.1)
    assert "pool.orphaned" in log.read_text(encoding="utf-8")


def test_a_cancel_reaches_the_job_a_worker_process_runs(tmp_path: Path) -> None:
    """`dropforge cancel` of every running job stops the one in the daemon's own worker and
    the one in its worker process alike (each process watches the journal)."""
    import os
    import subprocess
    import sys

    write_config(
        tmp_path, "org/model", extra_daemon='devices = ["cpu", "cpu"]\nsettle_seconds = 0.2'
    )
    host = Host("one", tmp_path, tmp_path)
    for name in ("a", "b"):
        (tmp_path / "inbox" / f"{name}.txt").write_text(f"prompt {name}\n", encoding="utf-8")
        (tmp_path / "inbox" / f"{name}.toml").write_text("count = 20\n", encoding="utf-8")
    host.start(step_seconds=0.2)
    request_stop(host)
    journal = tmp_path / "state" / "journal.sqlite3"

    def states() -> list[str]:
        try:
            with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
                return [r[0] for r in db.execute("SELECT state FROM jobs ORDER BY input")]
        except sqlite3.OperationalError:  # not made yet, or its schema not yet committed
            return []

    deadline = time.monotonic() + 60
    while states() != ["running", "running"]:
        assert time.monotonic() < deadline, f"both jobs did not start: {states()}"
        time.sleep(0.1)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    config = str(tmp_path / "config.toml")
    subprocess.run(
        [sys.executable, "-m", "daemon", "cancel", "--all", "--running", "-c", config],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + 20
    while states() != ["canceled", "canceled"]:
        assert time.monotonic() < deadline, f"the jobs were not canceled: {states()}"
        time.sleep(0.1)
    assert host.stop() == 0
    worker_log = (tmp_path / "state" / "logs" / "worker-1.log").read_text(encoding="utf-8")
    assert "job.cancel_heard" in worker_log
