"""The review side's routes: the gallery, thumbnails, detail, compare, player and mesh pages,
and the rating, restore and regenerate actions. They need the output roots (and, for restore,
the journal); ``dropforge serve --outbox`` serves them without a journal."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from daemon.config import Settings
from daemon.errors import DropforgeError
from daemon.runtime import control
from daemon.store.protocols import JobStore
from daemon.ui import gallery
from daemon.ui.catalog import Catalog
from daemon.ui.pages import PageData

NO_STORE = {"cache-control": "no-store"}
Action = Callable[[dict[str, Any]], dict[str, Any]]


class Review:
    """The review pages of one web UI."""

    def __init__(
        self, settings: Settings, store: JobStore | None, templates: Environment, csrf: str
    ) -> None:
        self.settings = settings
        self.store = store
        self.templates = templates
        self.csrf = csrf
        self.roots = tuple(inbox.output for inbox in settings.inboxes)
        self.catalog = Catalog(self.roots)
        self.names = [_root_name(inbox.output) for inbox in settings.inboxes]
        self.pages = PageData(settings, self.catalog)

    def routes(
        self, action: Callable[[Callable[[dict[str, Any]], dict[str, Any]]], Any]
    ) -> list[Route]:
        """The routes, with ``action`` wrapping the JSON actions (errors → status codes)."""
        return [
            Route("/gallery", self.gallery_page),
            Route("/api/gallery", self.gallery_json),
            Route("/thumbs/{root:int}/{path:path}", self.thumb),
            Route("/detail", self.page("detail.html", self.pages.detail)),
            Route("/compare", self.page("compare.html", self.pages.compare)),
            Route("/player", self.page("player.html", self.pages.player)),
            Route("/mesh", self.page("mesh.html", self.pages.mesh)),
            Route("/viewer", self.viewer),
            Route(
                "/api/rate", action(lambda body: gallery.rate(self.roots, body)), methods=["POST"]
            ),
            Route("/api/restore", action(self.restore), methods=["POST"]),
            Route("/api/regenerate", action(self.pages.regenerate), methods=["POST"]),
        ]

    async def gallery_page(self, request: Request) -> Response:
        data = await run_in_threadpool(self._data, request)
        html = self.templates.get_template("gallery.html").render(
            data=data, csrf=self.csrf, queue=self.store is not None
        )
        return HTMLResponse(html, headers=NO_STORE)

    async def gallery_json(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self._data, request), headers=NO_STORE)

    def _data(self, request: Request) -> dict[str, Any]:
        query = gallery.Query.parse(request.query_params, len(self.roots))
        return gallery.page_data(self.catalog, query, self.names)

    async def thumb(self, request: Request) -> Response:
        found = await run_in_threadpool(
            gallery.thumbnail,
            self.settings.state_dir,
            self.roots,
            request.path_params["root"],
            request.path_params["path"],
        )
        if found is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        # Named by the image's size and mtime: a changed image gets another address's content.
        return FileResponse(found, media_type="image/jpeg", headers={"cache-control": "no-cache"})

    def page(self, template: str, build: Callable[[Any], dict[str, Any] | None]) -> Any:
        async def endpoint(request: Request) -> Response:
            data = await run_in_threadpool(build, request.query_params)
            if data is None:
                return HTMLResponse(_not_found(), status_code=404, headers=NO_STORE)
            html = self.templates.get_template(template).render(
                data=data, csrf=self.csrf, queue=self.store is not None
            )
            return HTMLResponse(html, headers=NO_STORE)

        return endpoint

    async def viewer(self, request: Request) -> Response:
        html = await run_in_threadpool(self.pages.viewer_html, request.query_params)
        if html is None:
            return HTMLResponse(_not_found(), status_code=404, headers=NO_STORE)
        # The one page with inline script (trimesh's three.js viewer): sandboxed, no network.
        headers = {
            **NO_STORE,
            "content-security-policy": (
                "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; img-src data: blob:; connect-src data: blob:; "
                "frame-ancestors 'self'"
            ),
            "x-frame-options": "SAMEORIGIN",
        }
        return HTMLResponse(html, headers=headers)

    def rate(self, body: dict[str, Any]) -> dict[str, Any]:
        return gallery.rate(self.roots, body)

    def restore(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.store is None:
            raise DropforgeError(
                "restore needs the journal: restore on the machine that generates, "
                "or regenerate from the detail view"
            )
        path = gallery.output_path(self.roots, body.get("root"), body.get("path"))
        if path is None:
            raise LookupError(f"{body.get('path')}: not an output")
        job = control.restore_output(self.settings, self.store, path)
        return {"requeued": job.input, "at": time.time()}


def _root_name(path: Path) -> str:
    return path.name or str(path)


def _not_found() -> str:
    return "<!doctype html><title>not found</title><p>Not found.</p>"
