"""What a run would do with each input, and why: the survey's verdict, read against the job row
as it was before and the manifest in the output folder.

``once --dry-run`` surveys a private copy of the journal (the same ``survey`` a real run makes),
then asks ``forecast`` to put each verdict in words: skip (done), make (new), remake (and what
changed: the input, a sidecar, the mask, a setting, a missing output, or a forced rerun), fail,
or later (a file still arriving).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from daemon.outputs.manifest import Manifest, ManifestStatus, read_manifest
from daemon.outputs.manifest_fields import FileRecord
from daemon.planning.model import Dependency, Plan
from daemon.store.rows import Job
from daemon.survey.entries import SurveyEntry, Verdict
from daemon.tasks.context import Prepared
from daemon.values import JobState

# Settings listed by name when they changed; more than this many are summed up.
_SHOWN_CHANGES = 4
# Follow from the input's content: when the input changed, their change says nothing more.
_DERIVED = frozenset({"seed", "seeds", "width", "height"})


class Action(str, Enum):
    """What a run would do with one input."""

    skip = "skip"  # finished, outputs intact
    make = "make"  # nothing made yet (or only a failed manifest)
    remake = "remake"  # outputs exist from an older version, or some are missing
    fail = "fail"  # the input (or its sidecars) is invalid
    later = "later"  # still arriving: looked at again by a later run

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Forecast:
    """One input's action and the reason, with its plan when it would run."""

    rel: str
    action: Action
    reason: str
    prepared: Prepared | None = None
    fails_now: bool = False  # a failure this run would record (not one recorded earlier)


def forecast(entry: SurveyEntry, before: Job | None, prepared: Prepared | None) -> Forecast:
    """Put a survey verdict in words; ``prepared`` is the input's plan for queued verdicts."""
    rel = entry.candidate.rel
    if entry.verdict is Verdict.done:
        return Forecast(rel, Action.skip, "done")
    if entry.verdict is Verdict.failed:
        return Forecast(rel, Action.fail, f"unchanged since it failed: {entry.message}")
    if entry.verdict is Verdict.deferred:
        return Forecast(rel, Action.later, entry.message)
    if prepared is None or prepared.plan is None:
        error = str(prepared.error) if prepared is not None else entry.message
        return Forecast(rel, Action.fail, error, prepared, fails_now=True)
    plan = prepared.plan
    forced = plan.force or (before is not None and before.force)
    old = read_manifest(plan.out_dir)
    if old is None or old.job_key is None:
        if before is not None and before.state is JobState.done:
            return Forecast(rel, Action.remake, "its output folder is gone", prepared)
        return Forecast(rel, Action.make, _pending(before) or "new", prepared)
    if old.status != ManifestStatus.done:
        # A failed manifest records no plan to compare settings with: only files.
        files = files_changed(plan, old) or ["the settings or a retry"]
        return Forecast(rel, Action.make, "failed before; changed: " + "; ".join(files), prepared)
    if forced:
        reason = "forced (force = true or dropforge retry --force)"
        return Forecast(rel, Action.remake, reason, prepared)
    if old.job_key == plan.job_key:
        missing = missing_outputs(plan.out_dir, old)
        if missing:
            return Forecast(rel, Action.remake, "outputs missing: " + ", ".join(missing), prepared)
        return Forecast(rel, Action.remake, _pending(before) or "sequences incomplete", prepared)
    return Forecast(rel, Action.remake, what_changed(plan, old), prepared)


def _pending(before: Job | None) -> str | None:
    if before is None:
        return None
    if before.state is JobState.waiting:
        return f"waiting: {before.error}" if before.error else "waiting"
    if before.state in (JobState.queued, JobState.running):
        return f"already {before.state.value}"
    return None


def missing_outputs(out_dir: Path, old: Manifest) -> list[str]:
    """The files a done manifest lists that have another size (one that is gone was deleted
    by a person: a discard, not made again)."""
    missing: list[str] = []
    for entry in old.outputs or ():
        if entry.file is None:
            continue
        path = out_dir / entry.file
        try:
            if path.stat().st_size != entry.bytes:
                missing.append(entry.file)
        except FileNotFoundError:
            continue
        except OSError:
            missing.append(entry.file)
    return missing


def what_changed(plan: Plan, old: Manifest) -> str:
    """What differs between the job a manifest recorded and the one planned now."""
    reasons = files_changed(plan, old)
    input_changed = old.input is None or old.input.sha256 != plan.input_sha256
    if old.task != plan.task.value:
        reasons.append(f"task {old.task} → {plan.task.value}")
    if old.model is not None and (old.model.alias, old.model.source) != (
        plan.model.alias,
        plan.model.describe(),
    ):
        reasons.append(f"model {old.model.alias} ({old.model.source}) → {plan.model.describe()}")
    skip = _DERIVED if input_changed else frozenset()
    settings = _settings_changed(old.params, plan.record, skip)
    if settings:
        reasons.append("settings changed: " + settings)
    if not reasons:
        reasons.append("settings changed (a new dropforge version or a setting it uses)")
    return "; ".join(reasons)


def files_changed(plan: Plan, old: Manifest) -> list[str]:
    """The files of the job (input, sidecars, mask) that differ from those a manifest lists."""
    found: list[str] = []
    if old.input is None or old.input.sha256 != plan.input_sha256:
        found.append("input changed")
    found += _files_changed("sidecar", old.sidecars, plan.sidecars)
    old_mask = (old.mask,) if old.mask else ()
    found += _files_changed("mask", old_mask, (plan.mask,) if plan.mask else ())
    return found


def _files_changed(
    what: str, old: tuple[FileRecord, ...], new: tuple[Dependency, ...]
) -> list[str]:
    before = {f.path: f.sha256 for f in old}
    now = {d.path: d.sha256 for d in new}
    found: list[str] = []
    for path in sorted(before.keys() | now.keys()):
        if path not in before:
            found.append(f"{what} added: {path}")
        elif path not in now:
            found.append(f"{what} removed: {path}")
        elif before[path] != now[path]:
            found.append(f"{what} changed: {path}")
    return found


def _settings_changed(old: Any, new: Any, skip: frozenset[str]) -> str:
    if not isinstance(old, dict):
        return ""
    keys = [k for k in new if k not in skip and _plain(old.get(k)) != _plain(new[k])]
    keys += [k for k in old if k not in new and k not in skip]
    shown = [f"{k} {_show(old.get(k))} → {_show(new.get(k))}" for k in keys[:_SHOWN_CHANGES]]
    if len(keys) > _SHOWN_CHANGES:
        shown.append(f"and {len(keys) - _SHOWN_CHANGES} more")
    return ", ".join(shown)


def _plain(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _show(value: Any) -> str:
    text = "(unset)" if value is None else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
