"""Notifications: the [notify] keys, per-job and per-drop notices, and a real Apprise POST to a
local JSON webhook server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.config import load_config
from daemon.errors import ConfigError
from daemon.runtime.notify import Notice, Notices
from daemon.runtime.worker import JobResult, Outcome
from daemon.store.sqlite import SqliteJournal
from tests.fakes import Launch, wait_until
from tests.helpers import noise_image, write_config

MODEL = "./models/none"
FAST = "settle_seconds = 0.2\nrescan_interval = 3600"


class Webhook:
    """A JSON webhook server on the loopback interface, recording what it receives."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                received.append({"path": self.path, **body})
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """The Apprise URL of this webhook."""
        return f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A running local webhook server."""
    hook = Webhook()
    yield hook
    hook.close()


def config_with(tmp_path: Path, notify: str) -> Path:
    """A test config with a [notify] table."""
    return write_config(tmp_path, MODEL, extra_daemon=FAST, extra=f"\n[notify]\n{notify}\n")


@pytest.mark.parametrize(
    ("notify", "message"),
    [
        ('urls = "json://x"', 'urls must be a list of Apprise URLs like "ntfy://ntfy.sh/topic", '
         'got "json://x"'),
        ('urls = ["json://x", "ntfy"]', 'urls[2] must be Apprise URLs like "ntfy://ntfy.sh/topic",'
         ' got "ntfy"'),
        ('urls = []\nevents = ["done"]', "events[1] must be one of job_done, job_failed, "
         'job_waiting, job_canceled, drop_done, got "done"'),
        ("url = []", "url: unknown key, did you mean urls?"),
    ],
)  # fmt: skip
def test_notify_keys_are_validated(tmp_path: Path, notify: str, message: str) -> None:
    """Each [notify] mistake names the key, the rule and the value."""
    with pytest.raises(ConfigError) as info:
        load_config(config_with(tmp_path, notify))
    assert str(info.value) == f"config.toml [notify]: {message}"


def test_notify_defaults(tmp_path: Path) -> None:
    """Without [notify] nothing is sent; the default events are failures, waits and drops."""
    settings = load_config(write_config(tmp_path, MODEL))
    assert settings.notify.urls == ()
    assert settings.notify.events == {"job_failed", "job_waiting", "drop_done"}


def test_a_url_apprise_refuses_is_named(tmp_path: Path) -> None:
    """A URL of no service Apprise knows stops the start with a message naming it."""
    settings = load_config(config_with(tmp_path, 'urls = ["nosuchservice://x"]'))
    with pytest.raises(ConfigError) as info:
        Notices(settings)
    assert str(info.value) == (
        'config.toml [notify]: urls[1] is not a URL Apprise can use, got "nosuchservice://x" '
        "(see the Apprise wiki for the services' URLs)"
    )


def test_a_waiting_job_is_told_once_per_reason(tmp_path: Path) -> None:
    """A job that waits again for the same reason is not notified again; a new reason is."""
    settings = load_config(config_with(tmp_path, 'urls = ["json://localhost/x"]'))
    sent: list[Notice] = []
    notices = Notices(settings, send=lambda n: sent.append(n) is None)
    with SqliteJournal(settings.journal_path) as journal:
        for message in ("model missing", "model missing", "disk full"):
            notices.job_ended(
                JobResult(str(tmp_path / "inbox"), "a.png", Outcome.waiting, 0.0, message),
                journal,
            )
    notices.close()
    assert [(n.title, n.body) for n in sent] == [
        ("dropforge: a.png waiting", "model missing"),
        ("dropforge: a.png waiting", "disk full"),
    ]


def test_a_real_apprise_post_reaches_a_local_webhook(
    tmp_path: Path, launch: Launch, webhook: Webhook
) -> None:
    """Jobs done and the drop finished arrive as Apprise JSON posts, the drop counted once."""
    events = '["job_done", "job_failed", "drop_done"]'
    config = config_with(tmp_path, f'urls = ["{webhook.url}"]\nevents = {events}')
    inbox = tmp_path / "inbox"
    (inbox / "cat").mkdir()
    with capture_logs():
        running = launch(config, retry_tick=3600)
        for n in range(3):
            noise_image(inbox / "cat" / f"c{n}.png", seed=n)
        (inbox / "cat" / "bad.png").write_text("not an image", encoding="utf-8")
        wait_until(lambda: len(webhook.received) >= 5, 30, "five notices")
        running.stop()
    titles = sorted(r["title"] for r in webhook.received)
    assert titles == [
        "dropforge: cat/ finished",
        "dropforge: cat/bad.png failed",
        "dropforge: cat/c0.png done",
        "dropforge: cat/c1.png done",
        "dropforge: cat/c2.png done",
    ]
    (drop,) = [r for r in webhook.received if r["title"] == "dropforge: cat/ finished"]
    assert drop["message"] == "3 of 4 images done in cat/ (1 failed)"
    assert drop["path"] == "/hook" and drop["type"] == "info" and drop["version"] == "1.0"
    (failed,) = [r for r in webhook.received if r["title"].endswith("failed")]
    assert failed["message"].startswith("cat/bad.png: ")
    (done,) = [r for r in webhook.received if r["title"] == "dropforge: cat/c0.png done"]
    assert done["message"].startswith("1 output in ") and done["message"].endswith(
        " s → outbox/cat/c0"
    )
