"""What `dropforge status`, `dropforge queue` and the web UI show: plain dicts (JSON-ready)
built from the job store, telling the truth about a daemon that died (its running jobs are
shown as interrupted, not running) and naming the queued jobs in the order they will run.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from daemon.config import Settings, display_path, redact_url
from daemon.errors import about
from daemon.runtime.presence import running_daemon
from daemon.runtime.recovery import owner_alive, owner_id
from daemon.store.attempts import describe_attempts
from daemon.store.protocols import HostRegistry, JobStore
from daemon.store.rows import Job
from daemon.values import JobState

QUEUED_SHOWN = 10  # queued jobs `dropforge status` names
SEEDS_SHOWN = 8


def is_live(job: Job, now: float, members: Collection[str] | None = None) -> bool:
    """A running job whose lease a live process holds (else its process died: interrupted).

    In a cluster ``members`` are the owners with a live heartbeat row: the judge of every
    host's processes (a pid means nothing on another host)."""
    owner = job.lease_owner or ""
    if not owner or (job.lease_expires or 0.0) <= now:
        return False
    if members is not None:
        return owner in members
    return owner == owner_id() or owner_alive(owner)  # this process (the web UI of `run`)


def live_members(store: JobStore) -> Collection[str] | None:
    """The owners of a cluster's live worker processes; None on one host."""
    if isinstance(store, HostRegistry):
        return {h.owner for h in store.hosts()}
    return None


def hosts_view(store: JobStore) -> list[dict[str, Any]]:
    """A cluster's live worker processes: host, device, version, current job, last beat."""
    if not isinstance(store, HostRegistry):
        return []
    now = store.clock()
    return [
        {
            "host": h.host,
            "owner": h.owner,
            "device": h.device,
            "version": h.version,
            "job": h.job_input,
            "last_beat": round(max(0.0, now - h.beat_at), 1),
        }
        for h in store.hosts()
    ]


def daemon_view(settings: Settings) -> dict[str, Any]:
    """Whether `dropforge run` runs on this state_dir, its pid and web UI."""
    found = running_daemon(settings)
    if found is None:
        return {"running": False, "pid": None, "ui": None, "started_at": None}
    return {"running": True, "pid": found.pid, "ui": found.ui, "started_at": found.started_at}


def seeds_text(job: Job) -> str:
    """The seeds of a job's planned outputs, briefly (``100..103`` or ``7, 9, 12``)."""
    seeds = list(dict.fromkeys(p.seed for p in job.planned if p.seed is not None))
    if not seeds:
        return ""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}"
    shown = ", ".join(str(s) for s in seeds[:SEEDS_SHOWN])
    return shown + (", …" if len(seeds) > SEEDS_SHOWN else "")


def job_view(job: Job) -> dict[str, Any]:
    """The fields every listing shows of a job."""
    return {
        "id": job.id,
        "inbox": job.inbox,
        "input": job.input,
        "state": job.state.value,
        "priority": job.priority,
        "task": job.task,
        "outputs": job.progress_total or len(job.planned),
        "seeds": seeds_text(job),
        "error": job.error,
    }


def running_view(job: Job, now: float) -> dict[str, Any]:
    """A running job with its progress: images done of total, the step, seconds so far."""
    return {
        **job_view(job),
        "images_done": job.progress_done,
        "images_total": job.progress_total,
        "note": job.progress_note,
        "seconds": round(now - job.started_at, 1) if job.started_at else None,
        "owner": job.lease_owner,
        "canceling": job.cancel.value if job.cancel else None,
        "out_dir": job.out_dir,
        "planned": [{"file": p.file, "seed": p.seed} for p in job.planned],
        "finished": list(job.finished),
    }


def attempts_view(store: JobStore, job_id: int) -> list[dict[str, Any]]:
    """The claims of a job since it was last queued, each with how far it got and a line
    saying so."""
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


def collect_status(settings: Settings, store: JobStore | None, *, now: float) -> dict[str, Any]:
    """Queue counts, the daemon, running and interrupted jobs, the first queued jobs, queued
    jobs that ran before, waiting jobs, recent failures and cancels — each job with how far
    its claims got — and missing inbox folders (``None``: no journal yet)."""
    missing = [display_path(i.path, settings) for i in settings.inboxes if not i.path.is_dir()]
    where = str(settings.journal_path)
    if settings.cluster is not None:
        where = redact_url(settings.cluster.database)
    status: dict[str, Any] = {
        "journal": where,
        "daemon": daemon_view(settings),
        "cluster": settings.cluster is not None,
        "hosts": [],
        "counts": {s.value: 0 for s in JobState},
        "running": [],
        "interrupted": [],
        "queued": [],
        "queued_total": 0,
        "requeued": [],
        "waiting": [],
        "failures": [],
        "canceled": [],
        "missing_inboxes": missing,
    }
    if store is None:
        return status
    counts = store.counts()
    running = store.running()
    status["hosts"] = hosts_view(store)
    members = live_members(store)
    live = [j for j in running if is_live(j, now, members)]
    dead = [j for j in running if j not in live]
    status["counts"] = {s.value: counts.get(s, 0) for s in JobState}
    status["counts"]["running"] = len(live)
    status["running"] = [
        {**running_view(j, now), "attempts": attempts_view(store, j.id)} for j in live
    ]
    status["interrupted"] = [
        {**running_view(j, now), "attempts": attempts_view(store, j.id)} for j in dead
    ]
    status["queued"] = [job_view(j) for j in store.queue(QUEUED_SHOWN)]
    status["queued_total"] = counts.get(JobState.queued, 0)
    status["requeued"] = [
        {**job_view(j), "attempts": attempts}
        for j in store.queue(20)
        if (attempts := attempts_view(store, j.id))
    ]
    status["waiting"] = [
        {
            **job_view(j),
            "retry_in": max(0.0, round((j.not_before or now) - now, 1)),
            "attempts": attempts_view(store, j.id),
        }
        for j in store.jobs([JobState.waiting], limit=20)
    ]
    status["failures"] = [
        {**job_view(j), "attempts": attempts_view(store, j.id)} for j in store.recent_failures(10)
    ]
    status["canceled"] = [job_view(j) for j in store.recent_cancels(5)]
    return status


def format_status(status: dict[str, Any]) -> str:
    """Human-readable status."""
    counts = dict(status["counts"])
    if status["interrupted"]:
        counts["interrupted"] = len(status["interrupted"])
    daemon = status["daemon"]
    if daemon["running"]:
        ui = f", web UI {daemon['ui']}" if daemon["ui"] else ""
        lines = [f"Daemon: running (pid {daemon['pid']}{ui})"]
    else:
        lines = ["Daemon: not running"]
    lines.append("Jobs: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    for h in status.get("hosts", []):
        job = h["job"] or "idle"
        lines.append(
            f"Host: {h['owner']} ({h['device']}, dropforge {h['version']}): {job};"
            f" last beat {h['last_beat']:.1f} s ago"
        )
    for folder in status["missing_inboxes"]:
        lines.append(f"Inbox missing: {folder} (unmounted or removed; its files wait for it)")
    for r in status["running"]:
        progress = f"image {r['images_done']}/{r['images_total']}"
        note = f", {r['note']}" if r["note"] else ""
        stop = ", canceling" if r["canceling"] else ""
        owner = f" on {r['owner']}" if status.get("hosts") and r["owner"] else ""
        lines.append(
            f"Running: {r['input']}{owner} ({progress}{note}{stop}, {r['seconds']} s so far)"
        )
        if len(r["attempts"]) > 1:  # the claim before this one did not finish the job
            lines += _attempt_lines(r["attempts"], "  ")
    then = (
        "a live host takes it over"
        if status.get("cluster")
        else "it resumes when dropforge runs again"
    )
    for r in status["interrupted"]:
        lines.append(
            f"Interrupted: {r['input']} (image {r['images_done']}/{r['images_total']}; its "
            f"process {r['owner']} is gone; {then})"
        )
    if status["queued"]:
        names = ", ".join(_queued_name(q) for q in status["queued"])
        more = status["queued_total"] - len(status["queued"])
        tail = f" and {more} more" if more > 0 else ""
        lines.append(f"Queued ({status['queued_total']}): {names}{tail}")
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
    if status["canceled"]:
        lines.append("Recently canceled:")
        lines += [
            f"  {c['input']}: {about(c['input'], c['error'] or '')}" for c in status["canceled"]
        ]
    return "\n".join(lines) + "\n"


def _attempt_lines(attempts: list[dict[str, Any]], indent: str) -> list[str]:
    return [f"{indent}attempt {a['attempt']}: {a['summary']}" for a in attempts]


def _queued_name(job: dict[str, Any]) -> str:
    name = str(job["input"])
    return name + (f" [priority {job['priority']}]" if job["priority"] else "")


def queue_view(store: JobStore, *, now: float, limit: int = 1000) -> dict[str, Any]:
    """The jobs in the order they will run: the running ones, then the queued ones, with
    priority, planned outputs and seeds; waiting jobs (they rejoin when due) apart."""
    members = live_members(store)
    running = [running_view(j, now) for j in store.running() if is_live(j, now, members)]
    queued = store.queue(limit)
    waiting = store.jobs([JobState.waiting], limit=limit)
    return {
        "running": running,
        "queued": [
            {**job_view(j), "position": n, "planned": [p.file for p in j.planned]}
            for n, j in enumerate(queued, 1)
        ],
        "queued_total": store.count(JobState.queued),
        "waiting": [
            {**job_view(j), "retry_in": max(0.0, round((j.not_before or now) - now, 1))}
            for j in waiting
        ],
    }


def format_queue(view: dict[str, Any]) -> str:
    """`dropforge queue` as a table: position, priority, input, task, outputs, seeds."""
    rows = [("#", "priority", "input", "task", "outputs", "seeds")]
    for r in view["running"]:
        note = f" ({r['note']})" if r["note"] else ""
        rows.append(
            ("run", str(r["priority"]), r["input"] + note, r["task"], str(r["outputs"]), r["seeds"])
        )
    for q in view["queued"]:
        rows.append(
            (
                str(q["position"]),
                str(q["priority"]),
                q["input"],
                q["task"] or "?",
                str(q["outputs"]),
                q["seeds"],
            )
        )
    if len(rows) == 1:
        lines = ["Nothing queued."]
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows]  # fmt: skip
    more = view["queued_total"] - len(view["queued"])
    if more > 0:
        lines.append(f"… and {more} more queued")
    for w in view["waiting"]:
        error = about(w["input"], w["error"] or "")
        lines.append(f"Waiting: {w['input']} (retry in {w['retry_in']:.0f} s): {error}")
    return "\n".join(lines) + "\n"
