"""Recovery: jobs left running by a process that died, and the temporaries they left behind."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from daemon.config import Settings
from daemon.errors import DropforgeError
from daemon.intake.paths import read_small_table, root_present
from daemon.outputs.files import remove_stale_temporaries
from daemon.outputs.folders import escaping_output, foreign_output
from daemon.outputs.manifest import InputRecord, Manifest, ManifestStatus, write_manifest
from daemon.runtime.attempts import earlier_attempts
from daemon.store.protocols import Journal, ScanCache
from daemon.store.rows import Job
from daemon.values import JobState

log = structlog.get_logger("dropforge.runner")


def host_name(settings: Settings | None = None) -> str:
    """This host's name in leases: ``[cluster] host_name``, else the machine's name."""
    if settings is not None and settings.cluster is not None:
        return settings.cluster.host_name
    return socket.gethostname()


def owner_id(settings: Settings | None = None) -> str:
    """Identifies this process in job leases."""
    return f"{host_name(settings)}:{os.getpid()}"


def owner_alive(owner: str, host: str | None = None) -> bool:
    """Whether the process named in a lease still runs (other hosts: assumed alive, their
    heartbeats tell)."""
    name, _, pid = owner.rpartition(":")
    if name != (host or socket.gethostname()):
        return True
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def table_reader(journal: ScanCache) -> Callable[[str], dict[str, Any] | None]:
    """Read sidecars for the scan through the journal's cache (unchanged ones stay closed)."""
    return lambda path: journal.cached_table(path, read_small_table)


def recover(settings: Settings, journal: Journal, *, spare: str | None = None) -> int:
    """Requeue the jobs no process runs any more, remove the temporaries they left; return
    how many were requeued.

    At start-up that is the jobs of a dead process (or of an earlier process with this one's
    pid); in a running daemon also its own jobs that its worker dropped (``spare`` names the
    owner to leave alone while its worker is busy). Outputs are only written by running
    jobs, so temporaries are searched in the output folders of those jobs only, not in the
    whole output tree (a restart over thousands of finished folders stays cheap).
    """
    running = {job.id: (job.out_dir, job.claim) for job in journal.running()}
    if not running:
        return 0
    host = host_name(settings)
    requeued, quarantined = journal.recover(
        settings.max_attempts, alive=lambda owner: owner_alive(owner, host), spare=spare
    )
    still = {job.id: job.claim for job in journal.running()}
    if quarantined:
        for job_id in running:
            job = _get(journal, job_id)
            if job is not None and job.state is JobState.quarantined:
                _write_quarantine_manifest(settings, journal, job)
    removed = 0
    for job_id, (out_dir, claim) in sorted(running.items()):
        # Only the dead claim's temporaries: the job may already run again elsewhere.
        if still.get(job_id) != claim and os.path.isdir(out_dir):
            removed += len(remove_stale_temporaries(Path(out_dir), claims={claim}))
    if requeued or quarantined or removed:
        log.info(
            "journal.recovered", requeued=requeued, quarantined=quarantined, temporaries=removed
        )
    return requeued


def prune_guard(settings: Settings) -> Callable[[str], bool]:
    """For pruning: a file counts as there when it is, and when its inbox is missing or
    unmounted here (an unmounted share must never make rows go)."""

    def exists(path: str) -> bool:
        if os.path.exists(path):
            return True
        roots = [i.path for i in settings.inboxes if path.startswith(str(i.path) + os.sep)]
        return any(not root_present(root) for root in roots)

    return exists


def _get(journal: Journal, job_id: int) -> Job | None:
    try:
        return journal.get(job_id)
    except LookupError:  # its input left the inbox meanwhile (another process deleted it)
        return None


def _write_quarantine_manifest(settings: Settings, journal: Journal, job: Job) -> None:
    """Tell people who only see the outbox: a ``failed`` manifest with the quarantine message
    and how far each claim got. Built from the journal alone: nothing of the input is read,
    since reading it may be what killed the process."""
    log.warning("job.quarantined", input=job.input, inbox=job.inbox, error=job.error)
    inbox = next((i for i in settings.inboxes if str(i.path) == job.inbox), None)
    out_dir = Path(job.out_dir)
    if inbox is None or escaping_output(inbox.output, [out_dir], job.input):
        return
    if foreign_output(inbox.output, out_dir, job.input):
        return
    try:
        size: int | None = (inbox.path / job.input).stat().st_size
    except OSError:
        size = None
    history = journal.attempts(job.id)
    manifest = Manifest(
        status=ManifestStatus.failed,
        job_key=job.job_key,
        task=None,
        input=InputRecord(job.input, None, size),
        error=job.error or "quarantined",
        attempts=earlier_attempts(history, max((a.number for a in history), default=0) + 1),
    )
    try:
        write_manifest(out_dir, manifest)
    except (OSError, DropforgeError) as exc:  # e.g. disk full: the journal still says it
        log.error("manifest.unwritable", input=job.input, error=str(exc))
