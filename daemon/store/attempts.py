"""The crash-loop rule, and how a claim's furthest point reads for people.

Every job store applies the same rule when it finds a claim whose process died (``judge``).
Before its first denoising step a claim does what it did the time before — read the same
input, load the same model — so a death at a point passed before is not the job's doing: a
claim that died preparing when an earlier claim of the job got past that, or died loading a
model that has loaded on this host before, does not count. From the first step on, a claim
does not count when it got further than the claim before it that was generating (more
finished outputs, or as many and more steps into the next), or, with no such claim, than
where it started. Every other death counts toward ``max_attempts``: a job that kills the
process at the same point every time is quarantined; a healthy job killed from outside at
random moments keeps getting further and is not.
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


def judge(current: Attempt, history: Sequence[Attempt]) -> tuple[bool, str]:
    """Whether a claim the process died in counts toward quarantine, and why (see the
    module); ``history`` holds the job's claims (those after ``current`` are not looked at)."""
    if current.stage is AttemptStage.loading:
        return False, "not counted: that model has loaded on this host before"
    earlier = [a for a in history if a.number < current.number]
    if current.stage is AttemptStage.preparing and any(
        a.stage is not AttemptStage.preparing for a in earlier
    ):
        return False, "not counted: an earlier claim got past preparing"
    previous = previous_cut_short(earlier, current.number)
    if previous is not None:
        if current.point > previous.point:
            return False, f"not counted: it got further than attempt {previous.number}"
        return True, "counted toward quarantine"
    if current.point > (current.start_outputs or 0, 0):
        return False, "not counted: it got further than where it started"
    return True, "counted toward quarantine"


def describe_reach(attempt: Attempt) -> str:
    """How far a claim got, e.g. ``at 1/3 outputs and 12 steps into the next`` or
    ``while loading the model``."""
    if attempt.stage is AttemptStage.generating:
        text = f"at {attempt.outputs}/{attempt.total} outputs"
        if attempt.steps:
            text += f" and {attempt.steps} step{'s' if attempt.steps > 1 else ''} into the next"
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
            counted, why = judge(attempt, attempts)
            if counted != attempt.counted:  # judged otherwise when it died (an older journal)
                why = "counted toward quarantine" if attempt.counted else "not counted"
            line += f" ({why})"
        lines.append(line)
    return lines


def quarantine_message(inbox: str, input: str, deaths: int, last: Attempt) -> str:
    """The error of a quarantined job: how often and where the process died, and the way out."""
    retry_path = shlex.quote(str(Path(inbox) / input))
    return (
        f"quarantined: the process died {deaths} times without getting further (the last "
        f"time {describe_reach(last)}); run dropforge retry {retry_path}"
    )
