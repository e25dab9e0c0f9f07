"""End to end: `dropforge run` as a real process on the tiny pipeline, stopped and restarted."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import wait_until
from tests.helpers import manifest, noise_image, write_config
from tests.soak.crash_harness import start_daemon

pytestmark = pytest.mark.slow

STOP_TIMEOUT = 20
RUNNING = re.compile(r"Running: big\.png \(image \d+/10, step \d+/\d+, [\d.]+ s so far\)")


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM the process; return its exit code and how long it took to exit."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=STOP_TIMEOUT + 10)
    return code, time.monotonic() - started


def events(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a run (other lines, e.g. library warnings, are skipped)."""
    found = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, inode) of every generated image."""
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.glob("big-*.png")}


def test_sigterm_mid_job_then_restart_finishes_without_redoing_outputs(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM mid-batch exits 0 in time; the restarted daemon makes only the missing images."""
    config = write_config(
        tmp_path,
        str(tiny_models / "sd"),
        extra_daemon=f"max_batch = 1\nsettle_seconds = 0.3\nstop_timeout = {STOP_TIMEOUT}",
        steps=6,
    )
    noise_image(tmp_path / "inbox" / "big.png")
    (tmp_path / "inbox" / "big.toml").write_text("count = 10\nseed = 1\n", encoding="utf-8")
    out_dir = tmp_path / "outbox" / "big"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    proc = start_daemon(config, first_log)
    try:
        shown: list[str] = []

        def step_progress_shown() -> bool:
            assert main(["status", "-c", str(config)]) == 0
            text = capsys.readouterr().out
            shown[:] = [line for line in text.splitlines() if RUNNING.fullmatch(line)]
            return bool(shown)

        wait_until(step_progress_shown, timeout=120, message="step progress in dropforge status")
        wait_until(lambda: len(stamps(out_dir)) >= 3, timeout=120, message="three images")
        assert proc.poll() is None, "the job finished before it could be stopped"
        code, seconds = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, first_log.read_text(encoding="utf-8")
    assert seconds < STOP_TIMEOUT
    survivors = stamps(out_dir)
    assert 3 <= len(survivors) < 10
    assert not (out_dir / "manifest.json").exists()
    with SqliteJournal(tmp_path / "state" / "journal.sqlite3") as journal:
        (job,) = journal.jobs()
    assert (job.state, job.attempts) == (JobState.queued, 0)
    names = [e["event"] for e in events(first_log)]
    assert names.index("service.ready") < names.index("service.stopping")
    assert {"job.interrupted", "service.stopped"} <= set(names)

    proc = start_daemon(config, second_log)
    try:
        wait_until(
            lambda: (out_dir / "manifest.json").exists(), timeout=180, message="the manifest"
        )
        code, _ = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, second_log.read_text(encoding="utf-8")
    final = manifest(out_dir)
    assert final["status"] == "done"
    assert len([o for o in final["outputs"] if o["seed"] is not None]) == 10
    (stopped,) = final["attempts"]  # the claim the SIGTERM ended, and how far it got
    assert (stopped["attempt"], stopped["ended"], stopped["stage"], stopped["counted"]) == (
        1,
        "stopped",
        "generating",
        False,
    )
    assert (stopped["outputs"], stopped["total"]) == (len(survivors), 10)
    assert stopped["summary"].startswith(f"stopped at {len(survivors)}/10 outputs")
    after = stamps(out_dir)
    assert {name: after[name] for name in survivors} == survivors, "an image was made twice"
    (done,) = [e for e in events(second_log) if e["event"] == "job.done"]
    assert (done["generated"], done["kept"]) == (10 - len(survivors), len(survivors))
