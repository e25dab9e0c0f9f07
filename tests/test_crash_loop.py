"""Crash loop: `dropforge run` on the tiny pipeline, killed again and again, loses nothing, and
the crash-loop guard quarantines a job that kills the process but not the jobs killed with it.

The harness (tests/soak/crash_harness.py) kills the daemon at seeded random moments: during
start-up and the first scan, right after journal commits (a job started, an output written,
a job done), while an output's temporary file is on disk, and a random few seconds into the
work. bench/soak_crash.py runs the same loop with hundreds of kills.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.generators.tiny import TINY_SD_SUBDIR
from daemon.store.sqlite import SqliteJournal
from daemon.values import AttemptEnd, AttemptStage, JobState
from tests.fakes import wait_until
from tests.helpers import manifest, write_config
from tests.soak.backends import EXIT_CODE
from tests.soak.crash_harness import (
    MOMENT_TRIGGER,
    TEMP_TRIGGER,
    log_events,
    run_crash_loop,
    start_daemon,
)

pytestmark = pytest.mark.slow

KILLS = 15  # each restart imports torch again (~5 s): this keeps the test near two minutes
INPUTS = 24
SEED = 6  # see the triggers asserted below


def test_kill_9_loop_loses_and_duplicates_nothing(tmp_path: Path, tiny_models: Path) -> None:
    """After fifteen SIGKILLs and restarts with the default max_attempts every input has one
    done manifest and intact outputs, none was quarantined and no image was made twice."""
    summary = run_crash_loop(
        tmp_path, tiny_models / TINY_SD_SUBDIR, kills=KILLS, inputs=INPUTS, seed=SEED, say=print
    )
    print("\n".join(summary.lines()))
    assert summary.problems == []
    assert len(summary.kills) == KILLS
    assert {kill.trigger.event for kill in summary.kills} == {
        TEMP_TRIGGER,
        "service.starting",
        "watch.ready",
        MOMENT_TRIGGER,
        "output.written",
        "job.done",
    }
    assert any(kill.trigger.delay > 0.5 for kill in summary.kills)  # random moments, too
    assert summary.restarts == KILLS + 1
    assert summary.inputs >= INPUTS
    assert summary.lost == 0
    assert summary.quarantined == 0
    assert sum(summary.deaths.values()) >= 5  # the kills did end claims, and were judged
    assert summary.duplicates <= KILLS
    # Images written before a kill are kept (their PNG chunk holds the job key): never redone.
    assert summary.duplicate_images == 0
    assert summary.outputs >= 2 * INPUTS  # every one of them verified, not assumed


def test_a_job_that_kills_the_process_at_the_same_step_is_quarantined(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt whose generation ends the process at step 2 every time (a real diffusers run,
    then os._exit) is quarantined after max_attempts claims of `dropforge run` that got no
    further (the first got further than where it started), restarted as systemd would; the
    other input is done, and status and its manifest say where each claim died."""
    config = write_config(
        tmp_path,
        str(tiny_models / TINY_SD_SUBDIR),
        extra_daemon='settle_seconds = 0.2\nlog_format = "json"\nstop_timeout = 20\n'
        'generator = "tests.soak.backends:exiting"',
        steps=4,
    )
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    (inbox / "crashy.txt").write_text("a lighthouse, exit at step 2\n", encoding="utf-8")
    (inbox / "calm.txt").write_text("a calm harbour\n", encoding="utf-8")
    (inbox / "calm.toml").write_text("count = 2\n", encoding="utf-8")
    codes = []
    for life in range(4):
        proc = start_daemon(config, tmp_path / f"life-{life}.log")
        try:
            codes.append(proc.wait(timeout=180))
        finally:
            if proc.poll() is None:
                proc.kill()
    assert codes == [EXIT_CODE] * 4
    log = tmp_path / "life-4.log"
    proc = start_daemon(config, log)
    try:
        wait_until(
            lambda: (
                (outbox / "calm" / "manifest.json").exists()
                and "service.ready" in {e["event"] for e in log_events(log)}
            ),
            timeout=180,
            message="calm done and the fifth life ready",
        )
        assert proc.poll() is None, "the fifth life died too"
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
    assert code == 0
    quarantined = [e["input"] for e in log_events(log) if e["event"] == "job.quarantined"]
    assert quarantined == ["crashy.txt"]
    error = (
        "quarantined: the process died 3 times without getting further (the last time at 0/1 "
        f"outputs and 2 steps into the next); run dropforge retry {inbox}/crashy.txt"
    )
    with SqliteJournal(tmp_path / "state" / "journal.sqlite3") as journal:
        crashy = journal.get_job(str(inbox), "crashy.txt")
        calm = journal.get_job(str(inbox), "calm.txt")
        assert crashy is not None and calm is not None
        assert (crashy.state, crashy.attempts, crashy.error) == (JobState.quarantined, 3, error)
        assert calm.state is JobState.done
        history = journal.attempts(crashy.id)
    assert [(a.ended, a.stage, a.point, a.counted) for a in history] == [
        (AttemptEnd.died, AttemptStage.generating, (0, 2), counted)
        for counted in (False, True, True, True)
    ]
    at_step_2 = "died at 0/1 outputs and 2 steps into the next"
    lines = [
        f"attempt 1: {at_step_2} (not counted: it got further than where it started)",
        *(f"attempt {n}: {at_step_2} (counted toward quarantine)" for n in (2, 3, 4)),
    ]
    written = manifest(outbox / "crashy")
    assert (written["status"], written["error"]) == ("failed", error)
    assert [f"attempt {a['attempt']}: {a['summary']}" for a in written["attempts"]] == lines
    assert len([o for o in manifest(outbox / "calm")["outputs"] if o["seed"] is not None]) == 2
    assert main(["status", "-c", str(config)]) == 0
    shown = capsys.readouterr().out.splitlines()
    at = shown.index(f"  [quarantined] crashy.txt: {error}")
    assert shown[at + 1 : at + 5] == [f"    {line}" for line in lines]
    assert main(["status", "--json", "-c", str(config)]) == 0
    (failure,) = json.loads(capsys.readouterr().out)["failures"]
    assert [a["counted"] for a in failure["attempts"]] == [False, True, True, True]
    assert main(["retry", "-c", str(config), str(inbox / "crashy.txt")]) == 0  # the way out
    with SqliteJournal(tmp_path / "state" / "journal.sqlite3") as journal:
        again = journal.get_job(str(inbox), "crashy.txt")
        assert again is not None and (again.state, again.attempts) == (JobState.queued, 0)
        assert journal.attempts(again.id) == []
