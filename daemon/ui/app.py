"""The Starlette application: the queue page, the JSON API under ``/api/`` and the outputs
under ``/files/``. Every action is a call into ``runtime.control``, the library the command
line calls too; the journal it writes is what the daemon hears."""

from __future__ import annotations

import mimetypes
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from daemon.config import Settings
from daemon.errors import DropforgeError, JobNotFound
from daemon.runtime import control
from daemon.store.protocols import JobStore
from daemon.ui.gallery import BadRequest as GalleryBadRequest
from daemon.ui.review_routes import Review
from daemon.ui.security import Guard
from daemon.ui.snapshot import snapshot
from daemon.ui.stream import Broadcaster, events

HERE = Path(__file__).parent
# Only what the pages show and link to: images, meshes, manifests; never HTML or SVG.
FILE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".glb": "model/gltf-binary",
    ".ply": "application/octet-stream",
    ".obj": "text/plain",
    ".json": "application/json",
}


class BadRequest(DropforgeError):
    """A request body the API does not understand."""


def _templates() -> Environment:
    # Prompts and file names come from shared folders: everything is escaped.
    return Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )


def build_app(
    settings: Settings,
    store: JobStore | None,
    broadcaster: Broadcaster | None,
    *,
    csrf: str,
    port: Callable[[], int],
    stopped: threading.Event,
) -> Any:
    """The web UI as an ASGI application, guarded by ``security.Guard``. Without a journal
    (``serve --outbox``) it serves the review pages only."""
    templates = _templates()
    review = Review(settings, store, templates, csrf)
    if store is None or broadcaster is None:
        review_only = [Route("/", lambda request: RedirectResponse("/gallery", status_code=303))]
        routes = [*review_only, *review.routes(_action), *_shared(settings)]
        return Guard(Starlette(routes=routes), settings.ui, csrf, port)
    page = templates.get_template("queue.html")

    async def index(request: Request) -> Response:
        data = await run_in_threadpool(snapshot, settings, store, now=time.time())
        html = page.render(data=data, csrf=csrf)
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    async def queue(request: Request) -> Response:
        data = await run_in_threadpool(snapshot, settings, store, now=time.time())
        return JSONResponse(data, headers={"cache-control": "no-store"})

    async def stream(request: Request) -> Response:
        return StreamingResponse(
            events(broadcaster, stopped.is_set),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    action = _action

    def cancel(body: dict[str, Any]) -> dict[str, Any]:
        jobs = [store.get(i) for i in _ids(body)]
        return _summary(control.cancel(store, jobs))

    def cancel_all(body: dict[str, Any]) -> dict[str, Any]:
        return _summary(control.cancel_all(store, running=bool(body.get("running"))))

    def retry(body: dict[str, Any]) -> dict[str, Any]:
        return {"requeued": control.retry(store, [store.get(i) for i in _ids(body)])}

    def priority(body: dict[str, Any]) -> dict[str, Any]:
        to = body.get("to")
        if to not in ("top", "bottom") and (type(to) is not int or not -1000 <= to <= 1000):
            raise BadRequest('"to" must be "top", "bottom" or an integer in -1000..1000')
        job = control.prioritize(store, store.get(_id(body, "id")), to)
        return {"id": job.id, "priority": job.priority}

    def move(body: dict[str, Any]) -> dict[str, Any]:
        job = control.move_before(store, _id(body, "id"), _id(body, "before"))
        return {"id": job.id, "priority": job.priority}

    routes = [
        Route("/", index),
        Route("/api/queue", queue),
        Route("/api/events", stream),
        Route("/api/cancel", action(cancel), methods=["POST"]),
        Route("/api/cancel-all", action(cancel_all), methods=["POST"]),
        Route("/api/retry", action(retry), methods=["POST"]),
        Route("/api/priority", action(priority), methods=["POST"]),
        Route("/api/move", action(move), methods=["POST"]),
        *review.routes(_action),
        *_shared(settings),
    ]
    return Guard(Starlette(routes=routes), settings.ui, csrf, port)


def _shared(settings: Settings) -> list[Any]:
    """The output files and the static files, served by every mode."""

    async def files(request: Request) -> Response:
        found = _output_file(settings, request.path_params["inbox"], request.path_params["path"])
        if found is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return FileResponse(found, media_type=FILE_TYPES[found.suffix.lower()])

    return [
        Route("/files/{inbox:int}/{path:path}", files),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def _action(do: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[..., Any]:
    """A JSON action: the body to ``do`` in a thread; errors as 400, 404 or 409."""

    async def endpoint(request: Request) -> Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise BadRequest("send a JSON object")
            result = await run_in_threadpool(do, body)
        except (ValueError, BadRequest, GalleryBadRequest) as exc:
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
        except (JobNotFound, LookupError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except DropforgeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse(result)

    return endpoint


def _id(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if type(value) is not int:
        raise BadRequest(f'"{key}" must be a job id (an integer)')
    return value


def _ids(body: dict[str, Any]) -> list[int]:
    value = body.get("ids")
    if not isinstance(value, list) or not value or any(type(v) is not int for v in value):
        raise BadRequest('"ids" must be a non-empty list of job ids')
    return value


def _summary(summary: control.CancelSummary) -> dict[str, Any]:
    return {
        "canceled": [j.input for j in summary.canceled],
        "stopping": [j.input for j in summary.stopping],
        "untouched": [j.input for j in summary.untouched],
    }


def _output_file(settings: Settings, inbox: int, rel: str) -> Path | None:
    """An output file below an inbox's output root, of a type the UI serves; None otherwise
    (a name leading outside the root, through a link or ``..``, is never served)."""
    if not 0 <= inbox < len(settings.inboxes) or "\0" in rel:
        return None
    root = settings.inboxes[inbox].output
    path = root / rel
    if path.suffix.lower() not in FILE_TYPES or ".." in Path(rel).parts:
        return None
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if not real.startswith(real_root + os.sep) or not os.path.isfile(real):
        return None
    return Path(real)


mimetypes.add_type("text/javascript", ".js")  # some systems map .js to text/plain
