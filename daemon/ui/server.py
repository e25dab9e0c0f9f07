"""Serving the web UI: uvicorn on a socket bound here, in a thread of its own. `dropforge run`
starts it beside the daemon (a busy port is a warning: generating goes on without the UI);
`dropforge serve` serves it alone (a busy port is an error)."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

import structlog

from daemon.config import Settings
from daemon.errors import ConfigError
from daemon.store.open import open_journal
from daemon.store.protocols import Journal
from daemon.ui.app import build_app
from daemon.ui.security import new_csrf_token
from daemon.ui.stream import Broadcaster
from daemon.values import Clock

if TYPE_CHECKING:
    import uvicorn

log = structlog.get_logger("dropforge.ui")

START_TIMEOUT_S = 10.0


class WebUI:
    """The web UI of one config: ``start()``, then ``stop(timeout)``; ``url`` once bound."""

    def __init__(
        self,
        settings: Settings,
        *,
        required: bool = False,
        clock: Clock = time.time,
        journal: bool = True,
    ) -> None:
        self.settings = settings
        self.with_journal = journal  # False: `serve --outbox`, the review pages only
        self.required = required  # `serve`: a busy port is an error; `run`: a warning
        self._clock = clock
        self.url: str | None = None
        self.port = 0
        self.stopped = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._journal: Journal | None = None
        self._broadcaster: Broadcaster | None = None

    def start(self) -> None:
        """Bind, then serve in a thread; wait until uvicorn accepts connections."""
        import uvicorn

        ui = self.settings.ui
        family = socket.AF_INET6 if ":" in ui.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ui.host, ui.port))
        except OSError as exc:
            sock.close()
            message = f"web UI cannot listen on {ui.host}:{ui.port}: {exc.strerror or exc}"
            if self.required:
                raise ConfigError(f"{message} (set [ui] listen to another port)") from None
            log.warning("ui.unavailable", error=message)
            return
        sock.listen(64)
        # Accepted connections inherit it: a response's headers and body go out at once
        # instead of waiting ~40 ms for the client's delayed ACK (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = sock.getsockname()[1]
        shown = f"[{ui.host}]" if ":" in ui.host else ui.host
        self.url = f"http://{shown}:{self.port}/"
        if self.with_journal:
            self._journal = open_journal(self.settings, clock=self._clock)
            self._broadcaster = Broadcaster(self.settings, self.stopped, clock=self._clock)
            self._broadcaster.start()
        app = build_app(
            self.settings,
            self._journal,
            self._broadcaster,
            csrf=new_csrf_token(),
            port=lambda: self.port,
            stopped=self.stopped,
        )
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="dropforge-ui", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info("ui.started", url=self.url)

    def stop(self, timeout: float = 3.0) -> None:
        """End every stream, stop uvicorn and the snapshot thread within ``timeout``."""
        deadline = time.monotonic() + timeout
        self.stopped.set()  # the streams end first, so uvicorn need not wait for them
        server = self._server
        if server is not None:
            server.should_exit = True
        for thread in (self._thread, self._broadcaster):
            if thread is not None and thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._journal is not None and not (self._thread and self._thread.is_alive()):
            self._journal.close()
            self._journal = None
        if self.url:
            log.info("ui.stopped", url=self.url)
