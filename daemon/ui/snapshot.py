"""What the queue page shows, as one JSON-ready dict: the status (``runtime.views``), the
running job as a grid of tiles (its planned images, finished ones with a link, those being
made with their step), the queue in order, and the folders (drops) that still have work."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from daemon.config import Settings, display_path
from daemon.runtime.views import collect_status, queue_view
from daemon.store.protocols import JobStore

QUEUE_SHOWN = 200
DROPS_SHOWN = 1000
STEP = re.compile(r"step (\d+)/(\d+)")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


def file_url(settings: Settings, inbox: str, rel: str, version: int = 0) -> str | None:
    """The ``/files/`` address of an output (relative to its inbox's output root)."""
    for index, candidate in enumerate(settings.inboxes):
        if str(candidate.path) == inbox:
            return f"/files/{index}/{quote(rel)}?v={version}"
    return None


def tiles(settings: Settings, job: dict[str, Any], max_batch: int) -> list[dict[str, Any]]:
    """The running job's planned outputs: done (with a link to the image), active (being made
    now, with the step) or queued. The active ones are the next ``max_batch`` unfinished."""
    finished = set(job["finished"])
    match = STEP.search(job["note"] or "")
    step = (int(match.group(1)), int(match.group(2))) if match else None
    active = [i for i in range(len(job["planned"])) if i not in finished][:max_batch]
    found = []
    for index, planned in enumerate(job["planned"]):
        rel: str = planned["file"]
        state = "done" if index in finished else "active" if index in active else "queued"
        url = None
        if state == "done" and rel.lower().endswith(IMAGE_SUFFIXES):
            url = file_url(settings, job["inbox"], rel, len(finished))
        found.append(
            {
                "index": index,
                "name": rel.rsplit("/", 1)[-1],
                "seed": planned["seed"],
                "state": state,
                "step": list(step) if state == "active" and step else None,
                "url": url,
            }
        )
    return found


def snapshot(settings: Settings, store: JobStore, *, now: float) -> dict[str, Any]:
    """Everything the queue page shows."""
    status = collect_status(settings, store, now=now)
    queue = queue_view(store, now=now, limit=QUEUE_SHOWN)
    for job in status["running"]:
        job["tiles"] = tiles(settings, job, settings.max_batch)
        job["loading"] = (job["note"] or "").startswith("loading model")
        del job["planned"], job["finished"]
    for job in status["interrupted"]:
        del job["planned"], job["finished"]
    drops: list[dict[str, Any]] = []
    for (inbox, folder), active in store.active_folders(DROPS_SHOWN).items():
        where = folder or display_path(inbox, settings).rstrip("/") + "/"
        drops.append({"key": f"{inbox}\n{folder}", "folder": where, "active": active})
    counts = status["counts"]
    idle = not (counts["queued"] or counts["running"] or counts["waiting"])
    return {
        "daemon": status["daemon"],
        "hosts": status["hosts"],  # a cluster's live worker processes (empty on one host)
        "counts": counts,
        "running": status["running"],
        "interrupted": status["interrupted"],
        "queued": queue["queued"],
        "queued_total": queue["queued_total"],
        "waiting": status["waiting"],
        "failures": status["failures"],
        "canceled": status["canceled"],
        "drops": sorted(drops, key=lambda d: str(d["folder"])),
        "all_done": idle and counts["done"] > 0,
        "idle": idle,
    }
