"""`check`, `status` and `retry`: looking at inputs and the journal without generating."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from daemon.config import InboxConfig, Settings, display_path
from daemon.errors import ConfigError, DropforgeError, about
from daemon.intake.candidates import candidate_for
from daemon.intake.names import FileKind, classify
from daemon.store.attempts import describe_attempts
from daemon.store.open import open_journal
from daemon.store.protocols import JobStore
from daemon.tasks.prepare import prepare
from daemon.values import JobState


def locate(settings: Settings, path: Path) -> tuple[InboxConfig, str]:
    """Find the inbox holding ``path``; return it and the POSIX path inside it."""
    absolute = path.expanduser().absolute()
    for inbox in settings.inboxes:
        for base in (inbox.path, inbox.path.resolve()):
            try:
                rel = absolute.relative_to(base)
            except ValueError:
                continue
            return inbox, PurePosixPath(rel).as_posix()
    folders = ", ".join(str(i.path) for i in settings.inboxes)
    raise ConfigError(f"{path}: not inside any inbox ({folders})")


def _input_for(inbox: InboxConfig, path: Path) -> Path:
    """Map a sidecar or mask path to the input it belongs to."""
    kind = classify(path.name)
    if kind in (FileKind.sidecar, FileKind.mask):
        stem = path.name[: -len(".toml")] if kind is FileKind.sidecar else path.name.split(".")[0]
        for sibling in sorted(path.parent.iterdir()):
            if (
                sibling.name.startswith(stem + ".")
                and sibling != path
                and classify(sibling.name) in (FileKind.image, FileKind.prompt)
            ):
                return sibling
        raise DropforgeError(f"{path.name}: no input named {stem}.* beside it")
    return path


@dataclass(frozen=True)
class CheckResult:
    """The text `dropforge check` prints and whether the input is valid."""

    ok: bool
    text: str


def check_path(settings: Settings, path: Path) -> CheckResult:
    """Validate one input and its sidecar stack; describe the planned job."""
    inbox, _ = locate(settings, path)
    target = _input_for(inbox, path.expanduser().absolute())
    if not target.is_file():
        raise DropforgeError(f"{path}: no such file")
    candidate = candidate_for(inbox, target)
    if candidate is None:
        raise DropforgeError(
            f"{path}: not an input (ignored name, a mask, or a part of another job)"
        )
    with open_journal(settings) as journal:
        prepared = prepare(settings, journal, candidate)
    lines = [f"Input: {candidate.rel} ({candidate.kind.value})"]
    stack = [*candidate.defaults, *([candidate.sidecar] if candidate.sidecar else [])]
    if stack:
        lines.append(
            "Sidecars: "
            + ", ".join(PurePosixPath(p.relative_to(inbox.path)).as_posix() for p in stack)
        )
    if prepared.plan is None:
        lines.append(f"Error: {prepared.error}")
        return CheckResult(False, "\n".join(lines) + "\n")
    plan = prepared.plan
    lines.append(f"Task: {plan.task}")
    lines.append(f"Model: {plan.model.alias} ({plan.model.describe()})")
    if plan.task.makes_images:
        lines.append(f"Size: {plan.params.width}x{plan.params.height}")
    lines.append("Parameters:")
    for key in sorted(plan.record):
        lines.append(f"  {key} = {json.dumps(plan.record[key], ensure_ascii=False)}")
    lines.append(f"Outputs in {display_path(plan.out_dir, settings)}:")
    lines += [f"  {line}" for line in plan.describe_outputs()]
    lines.append("  manifest.json")
    if plan.notes:
        lines.append("Notes:")
        lines += [f"  {note}" for note in plan.notes]
    return CheckResult(True, "\n".join(lines) + "\n")


def _attempts(store: JobStore, job_id: int) -> list[dict[str, Any]]:
    """The claims of a job, each with how far it got and a line saying so."""
    history = store.attempts(job_id)
    return [
        {
            "attempt": a.number,
            "ended": a.ended.value,
            "stage": a.stage.value,
            "outputs": a.outputs,
            "total": a.total,
            "steps": a.steps,
            "counted": a.counted,
            "summary": line.split(": ", 1)[1],
        }
        for a, line in zip(history, describe_attempts(history), strict=True)
    ]


def collect_status(settings: Settings, *, now: float) -> dict[str, Any]:
    """Queue counts, running jobs with progress, queued jobs that ran before, waiting jobs,
    recent failures, each with how far every claim got, and the inbox folders that are
    missing (an unmounted share: their files wait until it returns)."""
    missing = [display_path(i.path, settings) for i in settings.inboxes if not i.path.is_dir()]
    if not settings.journal_path.exists():
        return {
            "journal": str(settings.journal_path),
            "counts": {s.value: 0 for s in JobState},
            "running": [],
            "requeued": [],
            "waiting": [],
            "failures": [],
            "missing_inboxes": missing,
        }
    with open_journal(settings) as journal:
        counts = journal.counts()
        running = [
            {
                "input": j.input,
                "inbox": j.inbox,
                "images_done": j.progress_done,
                "images_total": j.progress_total,
                "note": j.progress_note,
                "seconds": round(now - j.started_at, 1) if j.started_at else None,
                "owner": j.lease_owner,
                "attempts": _attempts(journal, j.id),
            }
            for j in journal.running()
        ]
        requeued = [
            {"input": j.input, "inbox": j.inbox, "attempts": attempts}
            for j in journal.jobs([JobState.queued], limit=20)
            if (attempts := _attempts(journal, j.id))
        ]
        waiting = [
            {
                "input": j.input,
                "inbox": j.inbox,
                "error": j.error,
                "retry_in": max(0.0, round((j.not_before or now) - now, 1)),
                "attempts": _attempts(journal, j.id),
            }
            for j in journal.jobs([JobState.waiting], limit=20)
        ]
        failures = [
            {
                "input": j.input,
                "inbox": j.inbox,
                "state": j.state.value,
                "error": j.error,
                "attempts": _attempts(journal, j.id),
            }
            for j in journal.recent_failures(10)
        ]
    return {
        "journal": str(settings.journal_path),
        "counts": {s.value: counts.get(s, 0) for s in JobState},
        "running": running,
        "requeued": requeued,
        "waiting": waiting,
        "failures": failures,
        "missing_inboxes": missing,
    }


def format_status(status: dict[str, Any]) -> str:
    """Human-readable status."""
    counts = status["counts"]
    lines = ["Jobs: " + ", ".join(f"{n} {state}" for state, n in counts.items())]
    for folder in status["missing_inboxes"]:
        lines.append(f"Inbox missing: {folder} (unmounted or removed; its files wait for it)")
    for r in status["running"]:
        progress = f"image {r['images_done']}/{r['images_total']}"
        note = f", {r['note']}" if r["note"] else ""
        lines.append(f"Running: {r['input']} ({progress}{note}, {r['seconds']} s so far)")
        if len(r["attempts"]) > 1:  # the claim before this one did not finish the job
            lines += _attempt_lines(r["attempts"], "  ")
    for q in status["requeued"]:
        lines.append(f"Queued again: {q['input']}")
        lines += _attempt_lines(q["attempts"], "  ")
    for w in status["waiting"]:
        error = about(w["input"], w["error"] or "")
        lines.append(f"Waiting: {w['input']} (retry in {w['retry_in']:.0f} s): {error}")
    if status["failures"]:
        lines.append("Recent failures:")
        for f in status["failures"]:
            lines.append(f"  [{f['state']}] {f['input']}: {about(f['input'], f['error'] or '')}")
            if f["state"] == JobState.quarantined.value:
                lines += _attempt_lines(f["attempts"], "    ")
    return "\n".join(lines) + "\n"


def _attempt_lines(attempts: list[dict[str, Any]], indent: str) -> list[str]:
    return [f"{indent}attempt {a['attempt']}: {a['summary']}" for a in attempts]


def retry(
    settings: Settings,
    paths: Iterable[Path],
    *,
    failed: bool,
    quarantined: bool,
    force: bool,
) -> tuple[int, list[Path]]:
    """Requeue named inputs and/or every failed / quarantined job."""
    states = [s for s, on in ((JobState.failed, failed), (JobState.quarantined, quarantined)) if on]
    pairs: list[tuple[str, str]] = []
    unknown: list[Path] = []
    with open_journal(settings) as journal:
        for path in paths:
            inbox, rel = locate(settings, path)
            if journal.get_job(str(inbox.path), rel) is None:
                unknown.append(path)
            else:
                pairs.append((str(inbox.path), rel))
        count = journal.retry(inputs=pairs, states=states, force=force)
    return count, unknown
