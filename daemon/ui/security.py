"""The web UI's guard, an ASGI middleware in front of every route.

- Host allow-list: only the names the UI is bound to (and ``[ui] hosts``) are served, so a
  page of another site whose name was rebound to 127.0.0.1 (DNS rebinding) gets 403.
- A token (``[ui] token``, required off loopback): ``Authorization: Bearer …``, or a cookie set
  by opening ``/?token=…`` once.
- State-changing requests need the per-process CSRF token (``X-CSRF-Token``, embedded in the
  page), an ``Origin`` (or ``Referer``) of this very server, and a JSON body: a cross-site
  form or fetch gets 403 before it reaches an action.
- No CORS: no ``Access-Control-*`` header is ever sent and preflights are refused.
- Every response carries a strict Content-Security-Policy (scripts and styles from this
  server only) and forbids framing and MIME sniffing; the one exception is the mesh viewer
  (``/viewer``), trimesh's inline three.js page, which is served with a CSP ``sandbox`` (an
  opaque origin that cannot reach the API) and may only be framed by the UI itself.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from daemon.config_ui import UiSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "dropforge_token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def allowed_hosts(ui: UiSettings, port: int) -> frozenset[str]:
    """The Host header values served: the bound name (loopback names when on loopback) and
    ``[ui] hosts``, each with the port."""
    names = {ui.host, *ui.hosts}
    if ui.loopback:
        names |= {"127.0.0.1", "localhost", "::1"}
    values = set()
    for name in names:
        shown = f"[{name}]" if ":" in name else name
        values.add(f"{shown}:{port}".lower())
        if port == 80:
            values.add(shown.lower())
    return frozenset(values)


class Guard:
    """The middleware: checks every request before the application sees it."""

    def __init__(self, app: ASGIApp, ui: UiSettings, csrf: str, port: Callable[[], int]) -> None:
        self.app = app
        self.ui = ui
        self.csrf = csrf
        self._port = port  # the bound port (known once the socket is bound: port 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A route may set its own policy (the sandboxed mesh viewer): that one stands.
                own = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in own]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        if refusal is not None:
            status, text = refusal
            await _respond(send_guarded, status, text)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self.ui.token and query.get("token") and scope["path"] == "/":
            # A link with the token logs the browser in: a cookie, then the bare page.
            cookie = f"{COOKIE}={self.ui.token}; Path=/; HttpOnly; SameSite=Strict"
            await send_guarded(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode())],
                }
            )
            await send_guarded({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send_guarded)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """Why a request is refused (status, message), or None."""
        host = headers.get("host", "").lower()
        if host not in allowed_hosts(self.ui, self._port()):
            return 403, f"forbidden host {host!r}"
        if self.ui.token and not self._authorized(scope, headers):
            return 401, "a token is required: open the link with ?token=… or send a bearer token"
        method = scope["method"]
        if method in SAFE_METHODS:
            return None
        if method == "OPTIONS":
            return 405, "no cross-origin requests"
        origin = headers.get("origin") or _origin_of(headers.get("referer", ""))
        if origin != f"http://{host}":
            return 403, "cross-site request refused"
        token = headers.get("x-csrf-token", "")
        if not hmac.compare_digest(token.encode(), self.csrf.encode()):
            return 403, "missing or wrong CSRF token"
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return 415, "send JSON (Content-Type: application/json)"
        return None

    def _authorized(self, scope: Scope, headers: dict[str, str]) -> bool:
        token = self.ui.token.encode()
        bearer = headers.get("authorization", "")
        if bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:].encode(), token):
            return True
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except CookieError:  # a malformed Cookie header: no cookie
            return False
        found = cookies.get(COOKIE)
        if found is not None and hmac.compare_digest(found.value.encode(), token):
            return True
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("token") or [""])[0].encode()
        return scope["path"] == "/" and hmac.compare_digest(given, token)


def _origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, or an empty string."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


async def _respond(send: Send, status: int, text: str) -> None:
    body = json.dumps({"error": text}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def new_csrf_token() -> str:
    """A fresh per-process CSRF token."""
    return secrets.token_urlsafe(32)
