"""The web UI over real HTTP (uvicorn on a free loopback port): the page, the API on the
control library, the file route, the stream, and every guard of the security list."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from daemon.config import load_config
from daemon.errors import ConfigError
from daemon.store.sqlite import SqliteJournal
from daemon.ui.server import WebUI
from daemon.values import JobState
from tests.helpers import noise_image, write_config

MODEL = "./models/none"
EVIL = '<img src=x onerror="alert(1)">.png'


def ui_config(tmp_path: Path, ui: str = 'listen = "127.0.0.1:0"') -> Path:
    """A test config whose web UI listens on a free port."""
    return write_config(tmp_path, MODEL, extra=f"\n[ui]\n{ui}\n")


class Client:
    """An HTTP client of a running web UI, with its CSRF token and own origin."""

    def __init__(self, ui: WebUI) -> None:
        assert ui.url is not None
        self.ui = ui
        self.url = ui.url
        self.origin = ui.url.rstrip("/")
        self.http = httpx.Client(base_url=ui.url, timeout=10)
        page = self.http.get("/")
        found = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert found is not None
        self.csrf = found.group(1)

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        """A same-origin JSON POST with the CSRF token, as the page sends it."""
        sent = {"Origin": self.origin, "X-CSRF-Token": self.csrf, **headers}
        return self.http.post(path, json=body, headers=sent)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    """The journal of the test config, with three queued jobs (one with a hostile name)."""
    config = ui_config(tmp_path)
    settings = load_config(config)
    with SqliteJournal(settings.journal_path) as handle:
        for name in ("a.png", "b.png", EVIL):
            handle.upsert_job(
                inbox=str(tmp_path / "inbox"), input=name, kind="image", fingerprint="f",
                job_key="k", out_dir=str(tmp_path / "outbox" / name),
            )  # fmt: skip
        yield handle


@pytest.fixture
def client(tmp_path: Path, journal: SqliteJournal) -> Iterator[Client]:
    """A web UI on the test config, and a client of it."""
    with capture_logs():
        ui = WebUI(load_config(tmp_path / "config.toml"), required=True)
        ui.start()
        yield Client(ui)
        ui.stop()


def test_page_escapes_names_from_shared_folders(client: Client) -> None:
    """A file name carrying HTML is shown as text, never as markup."""
    page = client.http.get("/")
    assert page.status_code == 200
    assert EVIL not in page.text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;.png" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_foreign_host_header_is_refused(client: Client) -> None:
    """A Host other than the bound loopback names (DNS rebinding) gets 403."""
    port = client.ui.port
    for host in (f"attacker.example:{port}", "127.0.0.1:1", f"192.168.1.5:{port}"):
        response = client.http.get("/api/queue", headers={"Host": host})
        assert response.status_code == 403
        assert response.json() == {"error": f"forbidden host '{host}'"}
    assert client.http.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({"Origin": "http://evil.example"}, 403, "cross-site request refused"),
        ({"Referer": ""}, 403, "cross-site request refused"),
        ({"Referer": "http://evil.example/page"}, 403, "cross-site request refused"),
        ({"X-CSRF-Token": "guess"}, 403, "missing or wrong CSRF token"),
        ({"Content-Type": "text/plain"}, 415, "send JSON (Content-Type: application/json)"),
    ],
)
def test_state_changing_requests_need_origin_csrf_and_json(
    client: Client,
    journal: SqliteJournal,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    """A cross-site POST, a missing CSRF token or a form body never reaches an action."""
    sent = {"Origin": client.origin, "X-CSRF-Token": client.csrf, **headers}
    if "Referer" in headers:  # a request without Origin: the Referer must be this server
        del sent["Origin"]
    content_type = headers.get("Content-Type", "application/json")
    response = client.http.post(
        "/api/cancel", content=b'{"ids": [1]}', headers={**sent, "Content-Type": content_type}
    )
    assert (response.status_code, response.json()) == (status, {"error": error})
    assert journal.get(1).state is JobState.queued


def test_no_cors(client: Client) -> None:
    """Preflights are refused and no response allows another origin."""
    response = client.http.options(
        "/api/cancel",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 405
    for answer in (response, client.http.get("/api/queue", headers={"Origin": "http://x.y"})):
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]


def test_actions_call_the_control_library(client: Client, journal: SqliteJournal) -> None:
    """cancel, retry, priority and move through the API change the journal as the CLI does."""
    response = client.post("/api/priority", {"id": 3, "to": "top"})
    assert response.json() == {"id": 3, "priority": 0}
    assert [j.id for j in journal.queue()] == [3, 1, 2]
    assert client.post("/api/move", {"id": 2, "before": 3}).status_code == 200
    assert [j.id for j in journal.queue()] == [2, 3, 1]
    assert client.post("/api/cancel", {"ids": [3]}).json() == {
        "canceled": [EVIL],
        "stopping": [],
        "untouched": [],
    }
    assert client.post("/api/retry", {"ids": [3]}).json() == {"requeued": 1}
    assert client.post("/api/cancel-all", {}).json()["canceled"] == ["a.png", "b.png", EVIL]
    data = client.http.get("/api/queue").json()
    assert data["counts"]["canceled"] == 3 and data["queued"] == []


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/cancel", {"ids": "1"}, 400,
         'bad request: "ids" must be a non-empty list of job ids'),
        ("/api/cancel", [1], 400, "bad request: send a JSON object"),
        ("/api/priority", {"id": 1, "to": "up"}, 400,
         'bad request: "to" must be "top", "bottom" or an integer in -1000..1000'),
        ("/api/priority", {"id": 99, "to": "top"}, 404, "no job 99 in the journal"),
        ("/api/move", {"id": True, "before": 2}, 400,
         'bad request: "id" must be a job id (an integer)'),
    ],
)  # fmt: skip
def test_bad_requests_are_named(
    client: Client, path: str, body: Any, status: int, error: str
) -> None:
    """A malformed body or an unknown job is answered with a message saying what is wrong."""
    response = client.post(path, body)
    assert (response.status_code, response.json()) == (status, {"error": error})


def test_moving_a_finished_job_is_refused(client: Client, journal: SqliteJournal) -> None:
    """A job that is not queued cannot be moved: 409 with the reason."""
    journal.mark_done(1, seconds=1.0)
    response = client.post("/api/priority", {"id": 1, "to": "top"})
    assert (response.status_code, response.json()) == (
        409,
        {"error": "a.png: done, not in the queue: nothing to move"},
    )


def test_files_are_served_only_from_output_roots(tmp_path: Path, client: Client) -> None:
    """Images below an output root are served; other types, `..` and links out are not."""
    out = tmp_path / "outbox" / "cat"
    noise_image(out / "cat-1.png")
    (out / "notes.txt").write_text("secret", encoding="utf-8")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG outside")
    (out / "link.png").symlink_to(tmp_path / "secret.png")
    ok = client.http.get("/files/0/cat/cat-1.png")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    for path in ("/files/0/cat/notes.txt", "/files/0/cat/link.png", "/files/1/cat/cat-1.png",
                 "/files/0/../secret.png", "/files/0/cat/%2e%2e/%2e%2e/secret.png"):  # fmt: skip
        assert client.http.get(path).status_code == 404, path


def test_the_stream_sends_snapshots_and_ends_when_the_ui_stops(
    client: Client, journal: SqliteJournal
) -> None:
    """/api/events pushes a snapshot at once and after a change, and closes on stop."""
    received: list[str] = []
    first = threading.Event()
    changed = threading.Event()

    def listen() -> None:
        with client.http.stream("GET", "/api/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                received.append(line)
                if line.startswith("data: {") and '"daemon"' in line:
                    (changed if first.is_set() else first).set()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert first.wait(10)
    journal.cancel(ids=[1])
    assert changed.wait(10)
    client.ui.stop(timeout=5)
    thread.join(5)
    assert not thread.is_alive(), "the stream did not end when the UI stopped"
    assert "event: closed" in received


def test_binding_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    """listen on 0.0.0.0 without a token is refused, naming the fix."""
    with pytest.raises(ConfigError) as info:
        load_config(ui_config(tmp_path, 'listen = "0.0.0.0:8650"'))
    assert str(info.value) == (
        'config.toml [ui]: listen = "0.0.0.0:8650" serves beyond this machine: set token '
        "(a random string of at least 16 characters) or listen on 127.0.0.1"
    )
    with pytest.raises(ConfigError) as info:
        load_config(ui_config(tmp_path, 'listen = "localhost"'))
    assert str(info.value) == (
        'config.toml [ui]: listen must be HOST:PORT (e.g. "127.0.0.1:8650", port 0..65535), '
        'got "localhost"'
    )


def test_a_token_guards_every_request(tmp_path: Path) -> None:
    """With [ui] token every request needs it: a bearer header, or the cookie a link sets."""
    token = "0123456789abcdef-token"
    config = ui_config(tmp_path, f'listen = "127.0.0.1:0"\ntoken = "{token}"')
    with capture_logs():
        ui = WebUI(load_config(config), required=True)
        ui.start()
        try:
            http = httpx.Client(base_url=ui.url or "", timeout=10, follow_redirects=True)
            assert http.get("/api/queue").status_code == 401
            bearer = {"Authorization": f"Bearer {token}"}
            assert http.get("/api/queue", headers=bearer).status_code == 200
            login = http.get(f"/?token={token}")
            assert login.history and login.history[0].status_code == 303
            assert login.status_code == 200 and "csrf-token" in login.text
            assert http.get("/api/queue").status_code == 200  # the cookie now
        finally:
            ui.stop()


def test_a_busy_port_fails_serve_but_not_run(tmp_path: Path) -> None:
    """`serve` cannot do without its port; `run` goes on generating without the UI."""
    with capture_logs() as logs:
        first = WebUI(load_config(ui_config(tmp_path)), required=True)
        first.start()
        try:
            port = first.port
            busy = load_config(ui_config(tmp_path, f'listen = "127.0.0.1:{port}"'))
            with pytest.raises(ConfigError, match=f"web UI cannot listen on 127.0.0.1:{port}"):
                WebUI(busy, required=True).start()
            quiet = WebUI(busy)
            quiet.start()
            assert quiet.url is None
        finally:
            first.stop()
    assert "ui.unavailable" in [e["event"] for e in logs]


@pytest.mark.parametrize(
    ("ui", "message"),
    [
        ('listen = "127.0.0.1:99999"', 'listen must be HOST:PORT (e.g. "127.0.0.1:8650", port '
         '0..65535), got "127.0.0.1:99999"'),
        ('token = "short"', "token must be at least 16 characters"),
        ('hosts = ["box.lan:80"]', 'hosts[1] must be host names, got "box.lan:80"'),
        ("enabled = 1", "enabled must be true or false, got 1"),
        ('listn = "x"', "listn: unknown key, did you mean listen?"),
    ],
)  # fmt: skip
def test_ui_keys_are_validated(tmp_path: Path, ui: str, message: str) -> None:
    """Each [ui] mistake names the key, the rule and the value."""
    with pytest.raises(ConfigError) as info:
        load_config(ui_config(tmp_path, ui))
    assert str(info.value) == f"config.toml [ui]: {message}"


def test_ui_defaults_and_a_lan_binding_with_token(tmp_path: Path) -> None:
    """The default is loopback on the documented port; a LAN binding with a token is fine."""
    default = load_config(write_config(tmp_path, MODEL)).ui
    assert (default.enabled, default.host, default.port, default.loopback) == (
        True,
        "127.0.0.1",
        8650,
        True,
    )
    lan = load_config(
        ui_config(tmp_path, 'listen = "0.0.0.0:8650"\ntoken = "0123456789abcdef"\nhosts = ["a"]')
    ).ui
    assert (lan.loopback, lan.hosts) == (False, ("a",))


def test_dropforge_serve_serves_until_sigterm(tmp_path: Path) -> None:
    """`dropforge serve` prints its address, answers, and exits 0 on SIGTERM."""
    import signal
    import subprocess
    import sys

    config = ui_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.fullmatch(r"dropforge web UI on (http://127\.0\.0\.1:\d+/) \(Ctrl-C stops\)\n",
                             line)  # fmt: skip
        assert found is not None, line
        response = httpx.get(found.group(1) + "api/queue", timeout=10)
        assert response.status_code == 200 and response.json()["idle"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
