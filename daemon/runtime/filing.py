"""What a worker does around a job's files besides generating: filing a finished input away
(``after = "move"``), the free-space check before outputs are written, and which inboxes it
may claim from (a missing share's jobs are left to hosts that see it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import structlog

from daemon.config import Settings
from daemon.errors import DiskFull
from daemon.intake.paths import inbox_available
from daemon.tasks.context import Prepared

log = structlog.get_logger("dropforge.worker")


def move_after(prepared: Prepared, folder: str) -> None:
    """With ``after = "move"``, file a finished input (and its own sidecar and mask) away."""
    candidate = prepared.candidate
    if candidate.inbox.after != "move":
        return
    parts = [candidate.path]
    if candidate.sidecar is not None and candidate.sidecar != candidate.path:
        parts.append(candidate.sidecar)
    if candidate.mask is not None:
        parts.append(candidate.mask)
    for path in parts:
        rel = path.relative_to(candidate.inbox.path)
        target = candidate.inbox.path / folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while target.exists():
            target = target.with_name(f"{path.stem}-{n}{path.suffix}")
            n += 1
        try:
            path.replace(target)
        except OSError as exc:
            log.warning("input.unmovable", input=str(rel), error=str(exc))


def check_space(settings: Settings, out_dir: Path) -> None:
    """Raise DiskFull when the output's disk has less than ``min_free_mb`` free."""
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    free_mb = shutil.disk_usage(probe).free // (1024 * 1024)
    if free_mb < settings.min_free_mb:
        raise DiskFull(
            f"only {free_mb} MB free on {probe}, below min_free_mb = "
            f"{settings.min_free_mb}: free some space; the job resumes by itself"
        )


def claimable_inboxes(settings: Settings) -> list[str] | None:
    """The inboxes whose jobs a worker may claim: those whose inbox and output folders are
    here (an unmounted share's jobs are left to hosts that see it); None for all.

    On one host a missing output folder is made at the first write; in a cluster it must
    exist, as a share's folder that is not there may be an unmounted share.
    """
    cluster = settings.cluster is not None
    present = [str(i.path) for i in settings.inboxes if inbox_available(i, shared=cluster)]
    if not cluster and len(present) == len(settings.inboxes):
        return None  # on one host, jobs of inboxes no longer configured are claimed too
    return present
