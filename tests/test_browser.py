"""The queue page in a real headless Chromium (Debian's package, driven by Playwright) against a
real `dropforge run` on the tiny model: offline, live tiles, cancel, reorder, notifications,
and the guards seen from a browser. Screenshots are kept in tests/artifacts/."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import wait_until
from tests.helpers import manifest, noise_image, write_config
from tests.soak.crash_harness import start_daemon

CHROMIUM = Path("/usr/lib/chromium/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|localhost|\[::1\])$")
# Records every tile's text and class as the page changes, and every notification shown.
RECORDER = """
window.__tiles = new Set();
window.__notices = [];
window.Notification = class { constructor(title, options) { window.__notices.push(options.body); }
  static get permission() { return 'granted'; } static requestPermission() { return 'granted'; } };
new MutationObserver(() => {
  for (const t of document.querySelectorAll('#running .tile')) {
    const label = t.querySelector('.state');
    window.__tiles.add(t.classList[1] + ':' + (label ? label.textContent : 'image'));
  }
}).observe(document, { subtree: true, childList: true });
"""

try:
    from playwright.sync_api import Browser, Page, Route, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None


def _skip_reason() -> str | None:
    if sync_playwright is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"Debian's chromium is not installed ({CHROMIUM}; apt-get install chromium)"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or ""),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, without network side channels."""
    assert sync_playwright is not None
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        launched.close()


class Daemon:
    """A `dropforge run` process on the tiny model, with its web UI on a free port."""

    def __init__(self, root: Path, tiny_models: Path, steps: int) -> None:
        self.root = root
        self.config = write_config(
            root,
            str(tiny_models / "sd"),
            extra_daemon="settle_seconds = 0.3\nmax_batch = 1\nstop_timeout = 20",
            steps=steps,
            extra='\n[ui]\nlisten = "127.0.0.1:0"\n',
        )
        self.log = root / "daemon.log"
        self.proc = start_daemon(self.config, self.log)
        presence = root / "state" / "daemon.json"
        wait_until(lambda: self._url(presence), 120, "the daemon's web UI")
        self.url: str = json.loads(presence.read_text())["ui"]

    @staticmethod
    def _url(presence: Path) -> bool:
        try:
            return bool(json.loads(presence.read_text()).get("ui"))
        except (OSError, ValueError):
            return False

    def state(self, rel: str) -> JobState | None:
        """The state of one input's job."""
        with SqliteJournal(self.root / "state" / "journal.sqlite3") as journal:
            job = journal.get_job(str(self.root / "inbox"), rel)
        return None if job is None else job.state

    def stop(self) -> None:
        """SIGTERM; the process (and the page's stream) must end within stop_timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise


@pytest.fixture
def daemon_factory(tmp_path: Path, tiny_models: Path) -> Iterator[Any]:
    """Start `dropforge run` (stopped after the test)."""
    started: list[Daemon] = []

    def make(steps: int) -> Daemon:
        started.append(Daemon(tmp_path, tiny_models, steps))
        return started[-1]

    yield make
    for daemon in started:
        daemon.stop()


def offline_page(browser: Browser, blocked: list[str]) -> Page:
    """A page whose every request to a non-loopback host is aborted (and noted)."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.add_init_script(RECORDER)

    def guard(route: Route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or LOOPBACK.match(host):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    return context.new_page()


def shot(page: Page, name: str) -> None:
    """Keep a screenshot as a test artifact."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_tiles_fill_in_live_offline_and_a_finished_drop_notifies(
    browser: Browser, daemon_factory: Any
) -> None:
    """With every non-loopback request aborted, the page shows the running job's tiles going
    queued → step k/n → done during `dropforge run`, then "All images complete!" and a
    browser notification for the finished drop."""
    daemon = daemon_factory(steps=8)
    blocked: list[str] = []
    page = offline_page(browser, blocked)
    page.goto(daemon.url)
    page.wait_for_selector("#stream.live")
    shot(page, "queue-empty")
    assert page.inner_text("#queue") == "The queue is empty."
    inbox = daemon.root / "inbox"
    (inbox / "cat").mkdir()
    noise_image(inbox / "cat" / "tabby.png")
    (inbox / "cat" / "tabby.toml").write_text("count = 6\nseed = 40\n", encoding="utf-8")
    page.wait_for_selector("#running .tile.active .bar", timeout=120_000)
    shot(page, "queue-running")
    page.wait_for_selector("#banner:not([hidden])", timeout=120_000)
    shot(page, "queue-all-done")
    seen = set(page.evaluate("[...window.__tiles]"))
    assert "queued:queued" in seen
    assert any(re.fullmatch(r"active:step \d+/4", s) for s in seen), seen  # 8 × strength 0.5
    assert "done:image" in seen
    assert page.inner_text("#banner") == "All images complete!"
    assert manifest(daemon.root / "outbox" / "cat" / "tabby")["status"] == "done"
    wait_until(lambda: page.evaluate("window.__notices.length") > 0, 10, "a notification")
    assert page.evaluate("window.__notices") == ["All jobs in cat/ are finished"]
    page.set_viewport_size({"width": 380, "height": 800})
    shot(page, "queue-narrow")
    assert blocked == []
    page.context.close()


def test_cancel_and_reorder_from_the_page_and_the_guards(
    browser: Browser, daemon_factory: Any
) -> None:
    """Buttons and drag reorder the queue and cancel a queued and the running job; a
    cross-site form POST and a foreign Host header get 403."""
    daemon = daemon_factory(steps=10)
    blocked: list[str] = []
    page = offline_page(browser, blocked)
    page.goto(daemon.url)
    inbox = daemon.root / "inbox"
    noise_image(inbox / "long.png")
    (inbox / "long.toml").write_text("count = 20\nseed = 1\n", encoding="utf-8")
    page.wait_for_selector("#running .tile.active .bar", timeout=120_000)  # model loaded
    for n, name in enumerate(("a.png", "b.png", "c.png")):
        noise_image(inbox / name, seed=n + 1)
    wait_until(lambda: page.locator("#queue li.queued").count() == 3, 30, "three queued")

    def order() -> list[str]:
        return page.locator("#queue li.queued .input").all_inner_texts()

    assert order() == ["a.png", "b.png", "c.png"]
    page.locator("#queue li.queued", has_text="c.png").get_by_role("button", name="Top").click()
    wait_until(lambda: order() == ["c.png", "a.png", "b.png"], 10, "c on top")
    source = page.locator("#queue li.queued", has_text="b.png")
    source.drag_to(page.locator("#queue li.queued", has_text="c.png"))
    wait_until(lambda: order() == ["b.png", "c.png", "a.png"], 10, "b dragged before c")
    shot(page, "queue-reordered")
    page.locator("#queue li.queued", has_text="a.png").get_by_role("button", name="Cancel").click()
    wait_until(lambda: order() == ["b.png", "c.png"], 10, "a canceled")
    assert "a.png" in page.inner_text("#canceled")
    assert daemon.state("a.png") is JobState.canceled

    # A page of another origin posting a form to the API: refused, nothing canceled.
    evil = "http://127.0.0.1:9/evil"
    page.route(evil, lambda route: route.fulfill(content_type="text/html", body=(
        f'<form method="post" action="{daemon.url}api/cancel-all" enctype="text/plain">'
        '<input name=\'{"running": true, "x": "\' value=\'"}\'></form>'
        "<script>document.forms[0].submit()</script>")))  # fmt: skip
    with page.expect_response(f"{daemon.url}api/cancel-all") as posted:
        page.goto(evil)
    assert posted.value.status == 403
    assert json.loads(posted.value.text()) == {"error": "cross-site request refused"}
    assert daemon.state("long.png") is JobState.running
    port = urlsplit(daemon.url).port
    foreign = page.request.get(f"{daemon.url}api/queue", headers={"Host": f"evil.example:{port}"})
    assert foreign.status == 403

    page.goto(daemon.url)
    page.wait_for_selector("#running .tile.done img", timeout=60_000)
    page.locator("#running .job", has_text="long.png").get_by_role("button", name="Cancel").click()
    wait_until(lambda: daemon.state("long.png") is JobState.canceled, 60, "long canceled")
    record = manifest(daemon.root / "outbox" / "long")
    assert record["status"] == "canceled" and 0 < len(record["outputs"]) < 20
    wait_until(lambda: daemon.state("c.png") is JobState.done, 120, "the queue went on")
    assert daemon.state("b.png") is JobState.done
    shot(page, "queue-after-cancel")
    started = time.monotonic()
    daemon.stop()
    assert time.monotonic() - started < 20
    page.wait_for_selector("#stream.down", timeout=10_000)
    assert blocked == []
    assert os.path.exists(ARTIFACTS / "queue-after-cancel.png")
    page.context.close()
