"""Benchmarks of the review side (gallery, thumbnails, ratings).

Subcommands (each prints the machine and markdown table rows):

- ``serve``: 10,000 outputs (2,500 output folders of 4 images with manifests); the web UI in
  this process; a gallery page (HTML and JSON), a cached thumbnail and a rating over HTTP,
  p50/p95 of ``--samples`` requests after one warm-up (the first request after a start, which
  lists the tree and reads every manifest once, is reported apart)
- ``paint``: first contentful paint of the gallery page over those outputs in Debian's headless
  Chromium (``performance.getEntriesByType('paint')``)
- ``thumbs``: what the worker's thumbnail adds per image (shrink + JPEG + write), against
  the tiny model's time per image at the same size

Not a test: nothing is asserted. Example::

    python bench/gallery.py serve --samples 200
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import header, percentile, row
from PIL import Image

from daemon.config import load_config
from daemon.outputs.manifest import Manifest, ManifestStatus, OutputEntry, write_manifest
from daemon.outputs.manifest_fields import InputRecord
from daemon.outputs.thumbs import save_thumbnail
from daemon.ui.catalog import Catalog
from daemon.ui.gallery import Query, page_data, rate, thumbnail
from daemon.ui.server import WebUI

CHROMIUM = Path("/usr/lib/chromium/chromium")


def make_outputs(root: Path, folders: int, per_folder: int) -> Path:
    """A config over ``folders × per_folder`` small PNG outputs with done manifests."""
    out = root / "outbox"
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, "PNG")
    data = buffer.getvalue()
    for f in range(folders):
        folder = out / f"d{f // 100:02d}" / f"job{f:04d}"
        folder.mkdir(parents=True)
        entries = []
        for k in range(per_folder):
            name = f"job{f:04d}-{k}.png"
            (folder / name).write_bytes(data)
            entries.append(OutputEntry(name, "0" * 64, len(data), seed=k, prompt="p"))
        write_manifest(folder, Manifest(ManifestStatus.done, "key", "text2image",
                                        InputRecord(f"job{f:04d}.txt", None, None),
                                        outputs=tuple(entries)))  # fmt: skip
    (root / "inbox").mkdir()
    config = root / "config.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\n[[inbox]]\npath = "inbox"\noutput = "outbox"\n'
        '[models]\ndefault = "./none"\n[ui]\nlisten = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    return config


def timed(call: Callable[[], object], samples: int) -> list[float]:
    """Milliseconds of ``samples`` calls."""
    found = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        found.append((time.perf_counter() - started) * 1000)
    return found


def serve(args: argparse.Namespace) -> None:
    """Gallery page, cached thumbnail and rating over HTTP with 10,000 outputs."""
    import re

    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        config = make_outputs(Path(tmp), args.folders, args.per_folder)
        ui = WebUI(load_config(config), required=True)
        ui.start()
        assert ui.url is not None
        client = httpx.Client(base_url=ui.url, timeout=60)
        started = time.perf_counter()
        first = client.get("/gallery")
        cold = (time.perf_counter() - started) * 1000
        token = re.search(r'name="csrf-token" content="([^"]+)"', first.text)
        assert token is not None
        client.headers.update({"Origin": ui.url.rstrip("/"), "X-CSRF-Token": token.group(1)})
        header(f"gallery over {args.folders * args.per_folder} outputs", args.samples)
        print(f"first request after a start (lists the tree, reads every manifest): {cold:.0f} ms")
        row(["request", "p50 ms", "p95 ms"])
        row(["---", "---", "---"])
        pages = {
            "baseline: a 1 kB static file (HTTP and the guard only)": "/static/common.js",
            "gallery page (HTML, 200 tiles, newest first)": "/gallery",
            "gallery page 20 (HTML, by name)": "/gallery?order=name&page=20",
            "gallery JSON, favorites filter": "/api/gallery?filter=favorites",
        }
        for name, url in pages.items():
            found = timed(lambda url=url: client.get(url).raise_for_status(), args.samples)
            row([name, f"{percentile(found, 0.5):.1f}", f"{percentile(found, 0.95):.1f}"])
        thumb = "/thumbs/0/d00/job0000/job0000-0.png"
        client.get(thumb).raise_for_status()  # made once, then cached
        found = timed(lambda: client.get(thumb).raise_for_status(), args.samples)
        row(["cached thumbnail", f"{percentile(found, 0.5):.1f}", f"{percentile(found, 0.95):.1f}"])
        items = [{"root": 0, "path": "d00/job0001/job0001-1.png"}]
        ratings = iter(["favorite", "discard", "clear"] * args.samples)
        found = timed(
            lambda: client.post(
                "/api/rate", json={"rating": next(ratings), "items": items}
            ).raise_for_status(),
            args.samples,
        )
        row(["rating (XMP written)", f"{percentile(found, 0.5):.1f}",
             f"{percentile(found, 0.95):.1f}"])  # fmt: skip
        ui.stop()
        # The same work without HTTP: what the server itself spends.
        settings = load_config(config)
        catalog = Catalog(tuple(i.output for i in settings.inboxes))
        catalog.refresh()
        roots = catalog.roots
        calls = {
            "in process: gallery page data (index refresh, filter, sort, 200 tiles)":
                lambda: page_data(catalog, Query(), ["outbox"]),
            "in process: cached thumbnail lookup":
                lambda: thumbnail(settings.state_dir, roots, 0, "d00/job0000/job0000-0.png"),
            "in process: rating written": lambda: rate(
                roots, {"rating": next(ratings), "items": items}),
        }  # fmt: skip
        for name, call in calls.items():
            found = timed(call, args.samples)
            row([name, f"{percentile(found, 0.5):.1f}", f"{percentile(found, 0.95):.1f}"])


def paint(args: argparse.Namespace) -> None:
    """First contentful paint of the gallery page in headless Chromium."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        config = make_outputs(Path(tmp), args.folders, args.per_folder)
        ui = WebUI(load_config(config), required=True)
        ui.start()
        assert ui.url is not None
        found = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{ui.url}gallery")  # warm: the index and the thumbnails
            for _ in range(args.samples):
                page.goto(f"{ui.url}gallery")
                fcp = page.evaluate(
                    "performance.getEntriesByType('paint')"
                    ".filter(e => e.name === 'first-contentful-paint')[0].startTime"
                )
                found.append(float(fcp))
            browser.close()
        ui.stop()
    header(f"gallery first paint over {args.folders * args.per_folder} outputs", args.samples)
    row(["measure", "p50 ms", "p95 ms"])
    row(["---", "---", "---"])
    row(["first contentful paint", f"{percentile(found, 0.5):.0f}",
         f"{percentile(found, 0.95):.0f}"])  # fmt: skip


def thumbs(args: argparse.Namespace) -> None:
    """The worker's thumbnail: shrink, JPEG, write; per image at --size."""
    from daemon.outputs.contact import contact_thumbnail

    image = Image.effect_noise((args.size, args.size), 60).convert("RGB")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "out.png"
        image.save(target)

        def one() -> None:
            save_thumbnail(Path(tmp) / "thumbs", target, contact_thumbnail(image))

        found = timed(one, args.samples)
    header(f"worker thumbnail of a {args.size}² image", args.samples)
    row(["step", "p50 ms", "p95 ms"])
    row(["---", "---", "---"])
    row(["shrink to 256 + JPEG + write", f"{percentile(found, 0.5):.1f}",
         f"{percentile(found, 0.95):.1f}"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "paint"):
        p = sub.add_parser(name)
        p.add_argument("--folders", type=int, default=2500)
        p.add_argument("--per-folder", type=int, default=4)
        p.add_argument("--samples", type=int, default=50)
    p = sub.add_parser("thumbs")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    {"serve": serve, "paint": paint, "thumbs": thumbs}[args.command](args)


if __name__ == "__main__":
    main()
