"""Crash loop: `dropforge run` on the tiny pipeline, SIGKILLed again and again, loses nothing.

The harness (tests/soak/crash_harness.py) kills the daemon at seeded random moments: during
start-up and the first scan, right after journal commits (a job started, an output written,
a job done), and while an output's temporary file is on disk. bench/soak_crash.py runs the
same loop with hundreds of kills.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.generators.tiny import TINY_SD_SUBDIR
from tests.soak.crash_harness import TEMP_TRIGGER, run_crash_loop

pytestmark = pytest.mark.slow

KILLS = 10  # each restart imports torch again (~5 s): this keeps the test near a minute
INPUTS = 24
SEED = 6  # its ten triggers: 3 on temporaries, 3 after outputs / done jobs, 4 early


def test_kill_9_loop_loses_and_duplicates_nothing(tmp_path: Path, tiny_models: Path) -> None:
    """After ten SIGKILLs and restarts every input has one done manifest and intact outputs."""
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
        "job.started",
        "output.written",
        "job.done",
    }
    assert summary.restarts == KILLS + 1
    assert summary.inputs >= INPUTS
    assert summary.lost == 0
    assert summary.duplicates <= KILLS
    # Images written before a kill are kept (their PNG chunk holds the job key): never redone.
    assert summary.duplicate_images == 0
    assert summary.outputs >= 2 * INPUTS  # every one of them verified, not assumed
