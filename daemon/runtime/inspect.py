"""`check`: looking at an input without generating; ``locate`` maps a path to its inbox."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon.config import InboxConfig, Settings, display_path
from daemon.errors import ConfigError, DropforgeError
from daemon.intake.candidates import candidate_for
from daemon.intake.names import FileKind, classify
from daemon.store.open import open_journal
from daemon.tasks.prepare import prepare


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
    if plan.params.priority:
        lines.append(f"Priority: {plan.params.priority}")
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
