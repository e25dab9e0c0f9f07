"""The commands that look at and steer the queue: status, queue, cancel, priority, retry.

Each opens the journal, calls ``runtime.control`` / ``runtime.views`` and prints; a running
daemon hears every change within a second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from daemon.app import load_settings, open_journal
from daemon.cli.exits import EXIT_FAILED, EXIT_OK
from daemon.config import Settings
from daemon.errors import DropforgeError
from daemon.runtime import control, views
from daemon.runtime.presence import running_daemon
from daemon.store.rows import Job
from daemon.values import JobState


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(jobs: tuple[Job, ...]) -> str:
    return ", ".join(j.input for j in jobs)


def _heard(settings: Settings) -> str:
    """Whether a daemon will act on the change now."""
    if running_daemon(settings) is not None:
        return "the running daemon stops it at its next step"
    return "no daemon is running: it is canceled when dropforge runs again"


def cmd_status(args: argparse.Namespace) -> int:
    """`dropforge status`."""
    settings = load_settings(args.config)
    if settings.cluster is not None or settings.journal_path.exists():
        with open_journal(settings) as journal:
            status = views.collect_status(settings, journal, now=time.time())
    else:
        status = views.collect_status(settings, None, now=time.time())
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        print(views.format_status(status), end="")
    return EXIT_OK


def cmd_queue(args: argparse.Namespace) -> int:
    """`dropforge queue`."""
    settings = load_settings(args.config)
    with open_journal(settings) as journal:
        view = views.queue_view(journal, now=time.time(), limit=args.limit)
    if args.json:
        print(json.dumps(view, indent=2, ensure_ascii=False))
    else:
        print(views.format_queue(view), end="")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """`dropforge cancel PATH… | --all [--running]`."""
    settings = load_settings(args.config)
    if args.running and not args.all:
        raise DropforgeError("--running goes with --all (name a running job's path to stop it)")
    if bool(args.paths) == args.all:
        raise DropforgeError("cancel needs PATH… or --all")
    unknown: tuple[str, ...] = ()
    with open_journal(settings) as journal:
        if args.all:
            summary = control.cancel_all(journal, running=args.running)
        else:
            found = control.find_jobs(settings, journal, args.paths)
            unknown = found.unknown
            summary = control.cancel(journal, found.jobs)
    for path in unknown:
        print(f"{path}: not in the journal (never seen, or still settling)", file=sys.stderr)
    for job in summary.untouched:
        print(f"{job.input}: {job.state.value}, nothing to cancel", file=sys.stderr)
    print(f"canceled {_plural(len(summary.canceled), 'job')}", end="")
    print(f": {_names(summary.canceled)}" if summary.canceled else "")
    if summary.stopping:
        print(f"stopping {_names(summary.stopping)}: {_heard(settings)}")
    return EXIT_FAILED if unknown else EXIT_OK


def cmd_priority(args: argparse.Namespace) -> int:
    """`dropforge priority PATH --top | --bottom | N`."""
    settings = load_settings(args.config)
    chosen: list[Any] = [
        v for v in ("top" if args.top else None, "bottom" if args.bottom else None, args.value)
        if v is not None
    ]  # fmt: skip
    if len(chosen) != 1:
        raise DropforgeError("priority needs exactly one of --top, --bottom or a number N")
    to = chosen[0]
    if isinstance(to, int) and not -1000 <= to <= 1000:
        raise DropforgeError(f"priority must be -1000..1000, got {to}")
    with open_journal(settings) as journal:
        found = control.find_jobs(settings, journal, [args.path])
        if found.unknown or len(found.jobs) != 1:
            raise DropforgeError(f"{args.path}: not one job in the journal")
        job = control.prioritize(journal, found.jobs[0], to)
        ahead = (
            [j.id for j in journal.queue(control.EVERY_JOB)].index(job.id)
            if (job.state is JobState.queued)
            else None
        )
    where = f"; {ahead} queued job{'s' if ahead != 1 else ''} ahead" if ahead is not None else ""
    print(f"{job.input}: priority {job.priority}{where}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """`dropforge retry`."""
    settings = load_settings(args.config)
    if not (args.paths or args.failed or args.quarantined or args.canceled):
        raise DropforgeError("retry needs PATH…, --failed, --quarantined or --canceled")
    states = [
        state
        for state, on in (
            (JobState.failed, args.failed),
            (JobState.quarantined, args.quarantined),
            (JobState.canceled, args.canceled),
        )
        if on
    ]
    with open_journal(settings) as journal:
        found = control.find_jobs(settings, journal, args.paths)
        count = control.retry(journal, found.jobs, states=states, force=args.force)
    for path in found.unknown:
        print(f"{path}: not in the journal yet (run dropforge once)", file=sys.stderr)
    print(f"requeued {_plural(count, 'job')}")
    return EXIT_OK if not found.unknown else EXIT_FAILED
