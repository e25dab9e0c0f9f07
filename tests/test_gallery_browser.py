"""The review pages in a real headless Chromium (Debian's, driven by Playwright) on outputs the
tiny models made: the gallery and its keyboard triage writing XMP files, ratings made on disk,
deleting as discarding, regenerate with a seed, compare, the frame player, the mesh viewer, and
the file guards. Every non-loopback request is aborted; screenshots go to tests/artifacts/."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from structlog.testing import capture_logs

from daemon.cli import main
from daemon.config import load_config
from daemon.outputs.png import read_png_chunks
from daemon.outputs.ratings import Rating, read_rating
from daemon.ui.server import WebUI
from tests.fakes import wait_until
from tests.helpers import manifest, noise_image, write_config
from tests.test_browser import _skip_reason, offline_page, shot

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or ""),
]
EVIL = 'a red fox <script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, with software WebGL for the mesh viewer."""
    assert sync_playwright is not None
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path="/usr/lib/chromium/chromium",
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield launched
        launched.close()


def once(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`dropforge once` in-process; its report."""
    assert main(["once", "-c", str(config)]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    """Four images of a prompt holding HTML, a depth-2 tween and a mesh, made by the tiny
    models; the config's path. The tests below run in order on these outputs."""
    tmp_path = tmp_path_factory.mktemp("review")
    config = write_config(
        tmp_path,
        str(tiny_models / "sd"),
        models={"mesh": str(tiny_models / "mesh")},
        extra='\n[ui]\nlisten = "127.0.0.1:0"\n',
    )
    inbox = tmp_path / "inbox"
    (inbox / "fox").mkdir(parents=True)
    (inbox / "fox" / "fox.txt").write_text(EVIL + "\n", encoding="utf-8")
    (inbox / "fox" / "fox.toml").write_text("count = 4\nseed = 40\n", encoding="utf-8")
    noise_image(inbox / "walk" / "a.png", seed=10)
    noise_image(inbox / "walk" / "b.png", seed=11)
    (inbox / "walk" / "walk.job.toml").write_text(
        'start = "a.png"\nend = "b.png"\ndepth = 2\nseed = 3\nstrength = 0.5\n', encoding="utf-8"
    )
    noise_image(inbox / "chair.png", seed=4)
    (inbox / "chair.toml").write_text(
        'task = "mesh"\nformats = ["glb"]\nmesh_resolution = 64\nsteps = 2\n', encoding="utf-8"
    )
    assert main(["once", "-c", str(config)]) == 0
    return config


@pytest.fixture(scope="module")
def ui(made: Path) -> Iterator[WebUI]:
    """The web UI of that config (with its journal), on a free loopback port."""
    with capture_logs():
        web = WebUI(load_config(made), required=True)
        web.start()
        yield web
        web.stop()


def seeds_on_page(page: Page) -> dict[str, str]:
    """Each tile's file name → the seed it shows."""
    found = page.evaluate(
        "[...document.querySelectorAll('.card')].map(c => [c.dataset.path, "
        "c.querySelector('.seed').textContent])"
    )
    return {path.rsplit("/", 1)[-1]: seed for path, seed in found}


def test_gallery_triage_ratings_in_files_and_deleting_is_discarding(
    browser: Browser, made: Path, ui: WebUI, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every output shows with its manifest seed; F and X write XMP files and the filters
    agree after a reload; an XMP edited on disk shows up; after a discard and after deleting
    an image by hand `dropforge once` makes nothing; a prompt's `<script>` never runs."""
    root = made.parent
    fox = root / "outbox" / "fox" / "fox"
    blocked: list[str] = []
    page = offline_page(browser, blocked)
    page.goto(f"{ui.url}gallery?order=name")
    expected = {e["file"]: f"seed {e['seed']}" for e in manifest(fox)["outputs"] if e["seed"]}
    shown = seeds_on_page(page)
    assert {k: v for k, v in shown.items() if k in expected} == expected
    sequence = manifest(root / "outbox" / "walk" / "sequences" / "walk")
    frames = [e["file"] for e in sequence["outputs"] if e["file"].endswith(".png")]
    assert all(name in shown for name in frames) and "chair.glb" in shown
    loaded = "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
    wait_until(lambda: page.evaluate(loaded), 30, "every thumbnail loaded")
    shot(page, "gallery")

    names = sorted(expected)  # fox-40.png … fox-43.png
    page.goto(f"{ui.url}gallery?folder=fox&order=name")
    assert page.evaluate("document.activeElement.dataset.path") == f"fox/fox/{names[0]}"
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # The page's requests pass through a Python route handler: wait in the browser (which
    # lets Playwright dispatch it), for the tile to show the rating the server confirmed.
    page.keyboard.press("f")
    page.wait_for_selector(f'.card.favorite[data-path="fox/fox/{names[0]}"]')
    assert read_rating(fox / names[0]) is Rating.favorite
    page.keyboard.press("ArrowRight")
    page.keyboard.press("x")
    page.wait_for_selector(f'.card.discard[data-path="fox/fox/{names[1]}"]')
    assert read_rating(fox / names[1]) is Rating.discard
    assert page.evaluate("document.activeElement.dataset.path") == f"fox/fox/{names[1]}"
    assert 'xmp:Rating="5"' in (fox / f"{names[0]}.xmp").read_text(encoding="utf-8")
    assert 'xmp:Rating="-1"' in (fox / f"{names[1]}.xmp").read_text(encoding="utf-8")
    assert (fox / names[1]).is_file()  # a discard never deletes

    # darktable (or a synced laptop) rates the third image: the next page load shows it.
    (fox / f"{names[2]}.xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmp:Rating="5"/></rdf:RDF></x:xmpmeta>',
        encoding="utf-8",
    )
    page.goto(f"{ui.url}gallery?folder=fox&filter=favorites&order=name")
    assert sorted(seeds_on_page(page)) == sorted([names[0], names[2]])
    page.goto(f"{ui.url}gallery?folder=fox&filter=discarded")
    assert list(seeds_on_page(page)) == [names[1]]
    shot(page, "gallery-discarded")
    page.goto(f"{ui.url}gallery?folder=fox&filter=unselected")
    assert list(seeds_on_page(page)) == [names[3]]

    (fox / names[3]).unlink()  # deleted by hand in a file manager
    report = once(made, capsys)
    assert "Processed: 0" in report, report
    assert not (fox / names[3]).exists() and read_rating(fox / names[3]) is Rating.discard
    page.goto(f"{ui.url}gallery?folder=fox&filter=unselected")
    assert page.inner_text("#tiles-empty") == "No unselected outputs here."
    page.goto(f"{ui.url}gallery?folder=fox&filter=discarded&order=name")
    assert sorted(seeds_on_page(page)) == sorted([names[1], names[3]])
    assert page.evaluate("window.__xss") is None and errors == []
    page.set_viewport_size({"width": 380, "height": 800})
    shot(page, "gallery-narrow")

    # Restore the deleted one from its tile: the job is requeued and makes it again.
    page.locator(f'.card[data-path="fox/fox/{names[3]}"] [data-restore]').click()
    page.wait_for_selector(".placeholder:has-text('being made again')")
    assert not (fox / f"{names[3]}.xmp").exists()
    report = once(made, capsys)
    assert "Processed: 1" in report, report
    assert (fox / names[3]).is_file()
    assert read_rating(fox / names[1]) is Rating.discard and (fox / names[1]).is_file()
    assert blocked == []
    page.context.close()


def test_detail_regenerate_compare_player_mesh_and_guards(
    browser: Browser, made: Path, ui: WebUI, capsys: pytest.CaptureFixture[str]
) -> None:
    """The detail view shows the metadata as text and regenerates with seed 101 (a PNG whose
    parameters say `Seed: 101`); compare, the frame player and the mesh viewer render (the
    mesh is not blank); `../` and symlink escapes get 404."""
    root = made.parent
    blocked: list[str] = []
    page = offline_page(browser, blocked)
    page.goto(f"{ui.url}detail?root=0&path=fox/fox/fox-41.png")
    assert page.inner_text('[data-field="prompt"]') == EVIL
    assert page.inner_text('[data-field="seed"]') == "41"
    assert page.inner_text('[data-field="sampler"]') != ""
    assert page.evaluate("window.__xss") is None
    shot(page, "detail")
    page.fill("#regen input[name=seed]", "101")
    page.click("#regen button[type=submit]")
    page.wait_for_selector("#regen-result:has-text('seed 101')")
    written = root / "inbox" / "fox" / "fox-seed101.txt"
    assert written.read_text(encoding="utf-8") == EVIL
    once(made, capsys)
    made_png = root / "outbox" / "fox" / "fox-seed101" / "fox-seed101-101.png"
    assert "Seed: 101" in read_png_chunks(made_png)["parameters"]

    page.goto(f"{ui.url}gallery?folder=fox/fox&order=name")
    page.keyboard.press("c")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("c")
    page.click("#compare")
    page.wait_for_selector("#slider img")
    assert page.inner_text("#differ").splitlines()[1].startswith("seed")
    shot(page, "compare-slider")
    page.keyboard.press(" ")
    assert page.evaluate("document.getElementById('stage').dataset.mode") == "flip"
    page.click("[data-mode=side]")
    shot(page, "compare-side")

    page.goto(f"{ui.url}player?root=0&folder=walk/sequences/walk")
    page.fill("#fps", "30")
    page.dispatch_event("#fps", "input")
    seen = set()
    for _ in range(20):
        seen.add(page.evaluate("document.getElementById('frame').dataset.index"))
        page.wait_for_timeout(40)
    assert len(seen) >= 3, seen
    page.click("#play")
    page.click("#step")
    shot(page, "player")

    page.goto(f"{ui.url}mesh?root=0&path=chair/chair.glb")
    frame = page.frame_locator("#viewer")
    frame.locator("canvas").wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    pixels = Image.open(io.BytesIO(page.locator("#viewer").screenshot())).convert("L")
    assert len(pixels.getcolors(256) or []) > 8, "the mesh canvas is blank"
    shot(page, "mesh")

    outside = root / "secret.png"
    noise_image(outside)
    os.symlink(outside, root / "outbox" / "fox" / "fox" / "link.png")
    escapes = ("files/0/fox/fox/link.png", "thumbs/0/fox/fox/link.png",
               "files/0/..%2F..%2Fsecret.png", "thumbs/0/..%2Fsecret.png",
               "detail?root=0&path=../secret.png", "files/0/fox/fox/fox-40.png.xmp")  # fmt: skip
    for url in escapes:
        assert page.request.get(f"{ui.url}{url}").status == 404, url
    response = page.request.get(f"{ui.url}files/0/fox/fox/fox-40.png")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert blocked == []
    page.context.close()


def test_serve_outbox_without_a_journal_rates_and_regenerates(
    browser: Browser, made: Path, tmp_path: Path
) -> None:
    """`serve --outbox` on a copy of the outbox and inbox (a laptop, no state folder): the
    gallery shows the outputs, rates them in XMP files and writes a regenerate input."""
    import shutil

    laptop = tmp_path / "laptop"
    shutil.copytree(made.parent / "outbox", laptop / "outbox")
    shutil.copytree(made.parent / "inbox", laptop / "inbox")
    for sidecar in (laptop / "outbox").rglob("*.xmp"):
        sidecar.unlink()  # start from no ratings
    args: Any = type("Args", (), {})()
    args.outbox, args.inbox, args.listen, args.config = laptop / "outbox", None, "127.0.0.1:0", None
    from daemon.cli.review import outbox_settings

    settings = outbox_settings(args)
    with capture_logs():
        web = WebUI(settings, required=True, journal=False)
        web.start()
        try:
            page = offline_page(browser, [])
            page.goto(f"{web.url}")
            assert page.url.endswith("/gallery")
            page.goto(f"{web.url}gallery?folder=fox/fox&order=name")
            page.keyboard.press("f")
            page.wait_for_selector('.card.favorite[data-path="fox/fox/fox-40.png"]')
            image = laptop / "outbox" / "fox" / "fox" / "fox-40.png"
            assert read_rating(image) is Rating.favorite
            page.goto(f"{web.url}detail?root=0&path=fox/fox/fox-42.png")
            page.fill("#regen input[name=seed]", "7")
            page.click("#regen button[type=submit]")
            page.wait_for_selector("#regen-result:has-text('seed 7')")
            sidecar = laptop / "inbox" / "fox" / "fox-seed7.toml"
            assert "seed = 7\n" in sidecar.read_text(encoding="utf-8")
            restore = page.request.post(
                f"{web.url}api/restore",
                data=json.dumps({"root": 0, "path": "fox/fox/fox-42.png"}),
                headers={"Content-Type": "application/json", "Origin": web.url.rstrip("/"),
                         "X-CSRF-Token": page.get_attribute('meta[name="csrf-token"]', "content")
                         or ""},
            )  # fmt: skip
            assert restore.status == 409
            assert json.loads(restore.text())["error"].startswith("restore needs the journal")
            page.context.close()
        finally:
            web.stop()
