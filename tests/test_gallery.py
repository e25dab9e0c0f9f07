"""The gallery's index, its JSON API and the review actions over real HTTP, on hand-written
output folders (no model): paging, filters, ratings edited in place, path guards, and
regenerate's sidecar (checked before anything is written)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from daemon.cli import main
from daemon.config import load_config
from daemon.outputs.manifest import Manifest, ManifestStatus, OutputEntry, write_manifest
from daemon.outputs.manifest_fields import InputRecord, ModelRecord
from daemon.outputs.ratings import Rating, read_rating, write_rating
from daemon.ui.catalog import Catalog
from daemon.ui.server import WebUI
from tests.helpers import noise_image, write_config


def output_folder(folder: Path, stem: str, seeds: list[int], prompt: str = "a cat") -> None:
    """A done output folder of a text2image job, as the worker writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for seed in seeds:
        name = f"{stem}-{seed}.png"
        noise_image(folder / name, seed=seed)
        size = (folder / name).stat().st_size
        entries.append(OutputEntry(name, "0" * 64, size, seed=seed, prompt=prompt,
                                   params={"guidance": 6.0}))  # fmt: skip
    params = {"task": "text2image", "steps": 2, "guidance": 7.5, "strength": 0.6, "width": 64,
              "height": 64, "negative_prompt": "", "lora": "", "lora_scale": 1.0}  # fmt: skip
    write_manifest(folder, Manifest(
        ManifestStatus.done, "key", "text2image", InputRecord(f"{stem}.txt", None, None),
        params=params, model=ModelRecord("default", "x"), outputs=tuple(entries)))  # fmt: skip


def test_catalog_pages_are_read_by_stat_and_see_changes(tmp_path: Path) -> None:
    """The index lists every output once, sees a new folder, a deletion and a rating written
    in place by another tool, and reads no manifest again while nothing changed."""
    out = tmp_path / "outbox"
    output_folder(out / "a" / "cat", "cat", [1, 2, 3])
    catalog = Catalog((out,))
    assert sorted(i.rel for i in catalog.refresh()) == [f"a/cat/cat-{n}.png" for n in (1, 2, 3)]
    output_folder(out / "b" / "dog", "dog", [7])
    assert len(catalog.refresh()) == 4
    sidecar = out / "a" / "cat" / "cat-2.png.xmp"
    write_rating(out / "a" / "cat" / "cat-2.png", Rating.favorite)
    items = {i.rel: i for i in catalog.refresh()}
    assert catalog.rating(items["a/cat/cat-2.png"]) is Rating.favorite
    # darktable rewriting the sidecar in place (no rename: the folder's mtime stays).
    sidecar.write_text(sidecar.read_text(encoding="utf-8").replace('"5"', '"-1" '), "utf-8")
    items = {i.rel: i for i in catalog.refresh()}
    assert catalog.rating(items["a/cat/cat-2.png"]) is Rating.discard
    (out / "b" / "dog" / "dog-7.png").unlink()  # not recorded yet: not listed
    assert "b/dog/dog-7.png" not in {i.rel for i in catalog.refresh()}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, str, Path]]:
    """A web UI over 250 outputs in two folders; a client, its CSRF token, the outbox."""
    config = write_config(tmp_path, "./models/none", extra='\n[ui]\nlisten = "127.0.0.1:0"\n')
    out = tmp_path / "outbox"
    output_folder(out / "cat", "cat", list(range(1, 21)), prompt="<b>bold</b> cat")
    for n in range(23):
        output_folder(out / "many" / f"m{n:02}", f"m{n:02}", [100 + 10 * n + k for k in range(10)])
    with capture_logs():
        ui = WebUI(load_config(config), required=True)
        ui.start()
        assert ui.url is not None
        client = httpx.Client(base_url=ui.url, timeout=30)
        found = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/gallery").text)
        assert found is not None
        client.headers.update({"Origin": ui.url.rstrip("/"), "X-CSRF-Token": found.group(1)})
        yield client, ui.url, out
        ui.stop()


def test_gallery_json_pages_filters_and_counts(served: tuple[httpx.Client, str, Path]) -> None:
    """Pages hold at most per_page tiles, name order is stable, filters count what they
    show; each tile carries its manifest seed."""
    client, _, out = served
    first = client.get("/api/gallery", params={"order": "name", "per_page": 100}).json()
    assert (first["total"], first["pages"], len(first["tiles"])) == (250, 3, 100)
    assert first["tiles"][0]["path"] == "cat/cat-1.png" and first["tiles"][0]["seed"] == 1
    third = client.get("/api/gallery", params={"order": "name", "per_page": 100, "page": 3})
    assert len(third.json()["tiles"]) == 50 and third.json()["next"] is None
    item = {"root": 0, "path": "cat/cat-3.png"}
    rated = client.post("/api/rate", json={"rating": "favorite", "items": [item]})
    assert rated.status_code == 200 and read_rating(out / "cat" / "cat-3.png") is Rating.favorite
    data = client.get("/api/gallery", params={"folder": "cat", "filter": "favorites"}).json()
    assert [t["path"] for t in data["tiles"]] == ["cat/cat-3.png"]
    assert {f["name"]: f["count"] for f in data["filters"]} == {
        "all": 20, "favorites": 1, "unselected": 19, "discarded": 0}  # fmt: skip
    page = client.get("/gallery", params={"folder": "cat"}).text
    assert "<b>bold</b>" not in page


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [({"rating": "love", "items": [{"root": 0, "path": "cat/cat-1.png"}]}, 400,
      'bad request: "rating" must be "favorite", "discard" or "clear"'),
     ({"rating": "favorite", "items": []}, 400,
      'bad request: "items" must be a list of 1..1000 {"root", "path"} objects'),
     ({"rating": "favorite", "items": [{"root": 0, "path": "../config.toml"}]}, 404,
      "../config.toml: not an output"),
     ({"rating": "favorite", "items": [{"root": 3, "path": "cat/cat-1.png"}]}, 404,
      "cat/cat-1.png: not an output"),
     ({"rating": "favorite", "items": [{"root": 0, "path": "cat/manifest.json"}]}, 404,
      "cat/manifest.json: not an output")],
)  # fmt: skip
def test_rate_refuses_bad_requests_with_a_message(
    served: tuple[httpx.Client, str, Path], body: object, status: int, error: str
) -> None:
    """A bad rating, an empty list or a path outside the outputs is refused by name."""
    client, _, _ = served
    response = client.post("/api/rate", json=body)
    assert (response.status_code, response.json()) == (status, {"error": error})


def test_a_cross_site_rating_is_refused(served: tuple[httpx.Client, str, Path]) -> None:
    """Without the page's CSRF token and origin a rating is refused and nothing is written."""
    client, _, out = served
    body = {"rating": "favorite", "items": [{"root": 0, "path": "cat/cat-1.png"}]}
    response = client.post("/api/rate", json=body, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert not (out / "cat" / "cat-1.png.xmp").exists()


def test_files_and_thumbs_refuse_escapes_and_other_types(
    served: tuple[httpx.Client, str, Path],
) -> None:
    """`..`, a symlink out of the outputs, an SVG and an HTML file get 404; a thumbnail is a
    256 px JPEG served with nosniff."""
    client, _, out = served
    (out / "cat" / "page.html").write_text("<script>alert(1)</script>", encoding="utf-8")
    (out / "cat" / "art.svg").write_text("<svg onload='alert(1)'/>", encoding="utf-8")
    secret = out.parent / "secret.png"
    noise_image(secret)
    (out / "cat" / "link.png").symlink_to(secret)
    refused = ("/files/0/cat/page.html", "/files/0/cat/art.svg", "/files/0/cat/link.png",
               "/thumbs/0/cat/link.png", "/files/0/cat/..%2F..%2Fsecret.png",
               "/thumbs/0/..%2Fsecret.png", "/detail?root=0&path=cat/../../secret.png")  # fmt: skip
    for url in refused:
        assert client.get(url).status_code == 404, url
    thumb = client.get("/thumbs/0/cat/cat-1.png")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert thumb.headers["x-content-type-options"] == "nosniff"


def test_regenerate_writes_a_pinned_sidecar_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dropforge regenerate` writes NAME-seedN.txt and a sidecar that pins the output's
    parameters and clears an inherited [vary]; a --set that `check` refuses writes nothing."""
    config = write_config(tmp_path, "./models/none")
    inbox = tmp_path / "inbox"
    (inbox / "cats").mkdir(parents=True)
    (inbox / "cats" / "_defaults.toml").write_text("[vary]\nguidance = [1, 20]\n", "utf-8")
    output_folder(tmp_path / "outbox" / "cats" / "cat", "cat", [5, 6])
    (tmp_path / "outbox" / "cats" / "cat").joinpath("manifest.json").write_text(
        (tmp_path / "outbox" / "cats" / "cat" / "manifest.json")
        .read_text(encoding="utf-8")
        .replace('"path": "cat.txt"', '"path": "cats/cat.txt"'),
        encoding="utf-8",
    )
    output = tmp_path / "outbox" / "cats" / "cat" / "cat-6.png"
    assert main(["regenerate", "-c", str(config), str(output), "--seed", "101"]) == 0
    assert capsys.readouterr().out == (
        "wrote inbox/cats/cat-seed101.txt and cat-seed101.toml (seed 101)\n"
    )
    assert (inbox / "cats" / "cat-seed101.txt").read_text(encoding="utf-8") == "a cat"
    sidecar = (inbox / "cats" / "cat-seed101.toml").read_text(encoding="utf-8")
    for line in ("seed = 101", "count = 1", "guidance = 6.0", "steps = 2", "vary = {}",
                 "prompts = []", 'prompt_template = "{text}"', 'model = "default"'):  # fmt: skip
        assert line + "\n" in sidecar, line
    assert main(["check", "-c", str(config), str(inbox / "cats" / "cat-seed101.txt")]) == 0
    assert "  vary = {}\n" in capsys.readouterr().out
    code = main(["regenerate", "-c", str(config), str(output), "--set", "steps=0"])
    err = capsys.readouterr().err
    assert code == 2 and "cat-seed6.txt: the new input would fail, nothing written" in err
    assert "steps must be 1..150, got 0" in err
    assert not (inbox / "cats" / "cat-seed6.txt").exists()


def test_serve_outbox_from_the_command_line_without_a_config(tmp_path: Path) -> None:
    """`dropforge serve --outbox DIR` starts without a config or journal, serves the gallery
    of DIR (the queue page redirects there) and stops on SIGINT."""
    import signal
    import subprocess
    import sys

    output_folder(tmp_path / "outbox" / "cat", "cat", [1, 2])
    env = {"PYTHONPATH": str(Path(__file__).parent.parent), "XDG_CACHE_HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "serve", "--outbox", str(tmp_path / "outbox"),
         "--listen", "127.0.0.1:0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+/) ", line)
        assert found is not None, line
        response = httpx.get(found.group(1), follow_redirects=True, timeout=30)
        assert response.url.path == "/gallery" and "seed 2" in response.text
        assert not (tmp_path / "state").exists() and not (tmp_path / "outbox" / "state").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_serve_inbox_without_outbox_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--inbox and --listen only mean something with --outbox."""
    assert main(["serve", "--inbox", "x"]) == 2
    assert capsys.readouterr().err == "Error: --inbox and --listen go with --outbox\n"


def test_an_xmp_sidecar_is_never_an_input() -> None:
    """Sidecars beside images (in an output tree inside an inbox, say) are not inputs."""
    from daemon.intake.names import FileKind, classify

    assert classify("cat-7.png.xmp") is FileKind.other
    assert classify("cat-7.xmp") is FileKind.other
