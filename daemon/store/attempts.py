"""The crash-loop rule, and how a claim's furthest point reads for people.

Every job store applies the same rule when it finds a claim whose process died: the claim
counts toward quarantine unless it got further than the claim before it that worked on the
job (more finished outputs, or as many and more denoising steps into the next one), or it
died while loading a model that has loaded on this host before (the job had not begun to
act). A job that makes
the process die at the same point every time is quarantined after ``max_attempts`` claims; a
healthy job killed from outside at random moments keeps getting further and is not.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from daemon.store.rows import Attempt
from daemon.values import AttemptEnd, AttemptStage

# The ends whose furthest point the next claim is compared with: claims cut short while they
# generated. A claim sent to wait (model missing, disk full, outside active_hours), or one
# that ended before its model was loaded, did no work on the job to compare with.
CUT_SHORT = frozenset({AttemptEnd.died, AttemptEnd.stopped})

_STAGES = {
    AttemptStage.preparing: "preparing",
    AttemptStage.first_load: "loading the model for the first time on this host",
    AttemptStage.loading: "loading the model",
}


def previous_cut_short(attempts: Sequence[Attempt], number: int) -> Attempt | None:
    """The latest claim before claim ``number`` that died or was stopped while generating."""
    earlier = [
        a
        for a in attempts
        if a.number < number and a.ended in CUT_SHORT and a.stage is AttemptStage.generating
    ]
    return max(earlier, key=lambda a: a.number, default=None)


def death_counts(current: Attempt, previous: Attempt | None) -> bool:
    """Whether a claim the process died in counts toward quarantine (see the module)."""
    if current.stage is AttemptStage.loading:
        return False
    if previous is None:
        return True  # no claim before it worked on the job: nothing to get further than
    return not current.point > previous.point


def describe_reach(attempt: Attempt) -> str:
    """How far a claim got, e.g. ``at 1/3 outputs and 12 steps into the next`` or
    ``while loading the model``."""
    if attempt.stage is AttemptStage.generating:
        text = f"at {attempt.outputs}/{attempt.total} outputs"
        if attempt.steps:
            text += f" and {attempt.steps} steps into the next"
        return text
    text = "while " + _STAGES[attempt.stage]
    if attempt.total:
        text += f" ({attempt.outputs}/{attempt.total} outputs done)"
    return text


def describe_attempts(attempts: Sequence[Attempt]) -> list[str]:
    """One line per claim, oldest first, e.g.
    ``attempt 2: died at 1/3 outputs (not counted: it got further than attempt 1)``."""
    lines = []
    for attempt in sorted(attempts, key=lambda a: a.number):
        head = f"attempt {attempt.number}: "
        if attempt.ended in (AttemptEnd.done, AttemptEnd.failed):
            lines.append(head + attempt.ended.value)
            continue
        verb = {
            AttemptEnd.running: "running",
            AttemptEnd.waiting: "sent to wait",
            AttemptEnd.stopped: "stopped",
            AttemptEnd.died: "died",
        }[attempt.ended]
        line = f"{head}{verb} {describe_reach(attempt)}"
        if attempt.ended is AttemptEnd.died:
            line += f" ({_verdict(attempt, previous_cut_short(attempts, attempt.number))})"
        lines.append(line)
    return lines


def _verdict(attempt: Attempt, previous: Attempt | None) -> str:
    if attempt.counted:
        return "counted toward quarantine"
    if attempt.stage is AttemptStage.loading:
        return "not counted: that model has loaded on this host before"
    number = previous.number if previous is not None else attempt.number - 1
    return f"not counted: it got further than attempt {number}"


def quarantine_message(inbox: str, input: str, deaths: int, last: Attempt) -> str:
    """The error of a quarantined job: how often and where the process died, and the way out."""
    retry_path = shlex.quote(str(Path(inbox) / input))
    return (
        f"quarantined: the process died {deaths} times without getting further (the last "
        f"time {describe_reach(last)}); run dropforge retry {retry_path}"
    )
