"""Image inputs as a new user drops them: a mask beside an image, photos of any shape and size,
and `check` refusing exactly what a job would refuse (tiny model, real path)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from daemon.cli import main
from daemon.config import BOMB_GUARD_PIXELS, load_config
from daemon.intake.candidates import candidate_for
from daemon.store.sqlite import SqliteJournal
from daemon.tasks.prepare import prepare
from tests.helpers import manifest, mask_image, noise_image, write_config

pytestmark = pytest.mark.slow


def outputs(folder: Path) -> list[Path]:
    """The generated images of an output folder (its manifest's entries with a seed)."""
    return [folder / o["file"] for o in manifest(folder)["outputs"] if o["seed"] is not None]


def sizes(folder: Path) -> set[tuple[int, int]]:
    """The sizes of an output folder's generated images."""
    found = set()
    for path in outputs(folder):
        with Image.open(path) as image:
            found.add(image.size)
    return found


def test_a_mask_beside_an_image_and_no_task_inpaints(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dog.png + a same-size dog.mask.png and no sidecar gives task inpaint, mask recorded."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    inbox = tmp_path / "inbox"
    noise_image(inbox / "dog.png")
    mask_image(inbox / "dog.mask.png")
    assert main(["check", "-c", str(config), str(inbox / "dog.png")]) == 0
    assert "Task: inpaint" in capsys.readouterr().out
    assert main(["once", "-c", str(config)]) == 0
    out = manifest(tmp_path / "outbox" / "dog")
    assert (out["status"], out["task"]) == ("done", "inpaint")
    assert out["mask"]["path"] == "dog.mask.png"
    with Image.open(outputs(tmp_path / "outbox" / "dog")[0]) as image:
        assert "Task: inpaint" in image.text["parameters"]


def test_an_explicit_task_keeps_a_mask_out_of_the_job_and_says_so(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """task = "variations" beside a mask varies the image; the manifest says the mask is unused."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    inbox = tmp_path / "inbox"
    noise_image(inbox / "dog.png")
    mask_image(inbox / "dog.mask.png")
    (inbox / "dog.toml").write_text('task = "variations"\n', encoding="utf-8")
    assert main(["once", "-c", str(config)]) == 0
    out = manifest(tmp_path / "outbox" / "dog")
    assert (out["task"], out.get("mask")) == ("variations", None)
    assert out["warnings"] == ["dog.mask.png: mask not used: the task is variations"]


def test_an_inbox_whose_default_task_is_mesh_uses_the_mesh_model(tmp_path: Path) -> None:
    """default_task = "mesh" and no sidecar plans the `mesh` model alias, not `default`."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\n[[inbox]]\npath = "inbox"\noutput = "outbox"\n'
        'default_task = "mesh"\n[models]\ndefault = "sd"\nmesh = "shape"\n',
        encoding="utf-8",
    )
    noise_image(tmp_path / "inbox" / "chair.png")
    settings = load_config(config)
    candidate = candidate_for(settings.inboxes[0], tmp_path / "inbox" / "chair.png")
    assert candidate is not None
    with SqliteJournal(settings.journal_path) as journal:
        plan = prepare(settings, journal, candidate).plan
    assert plan is not None
    assert (plan.task.value, plan.model.alias) == ("mesh", "mesh")


def test_a_96x64_photo_keeps_its_aspect_ratio_and_the_manifest_says_so(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 96x64 input in a 192x192 box gives 192x128 outputs; check and the manifest say why."""
    config = write_config(tmp_path, str(tiny_models / "sd"), size=192)
    inbox = tmp_path / "inbox"
    noise_image(inbox / "wide.png", size=(96, 64))
    note = (
        "wide.png: 96x64 input generated at 192x128 (fitted within 192x192, aspect ratio kept; "
        "width and height in a sidecar force a size)"
    )
    assert main(["check", "-c", str(config), str(inbox / "wide.png")]) == 0
    shown = capsys.readouterr().out
    assert "Size: 192x128" in shown and f"Notes:\n  {note}\n" in shown
    assert main(["once", "-c", str(config)]) == 0
    out = manifest(tmp_path / "outbox" / "wide")
    assert (out["params"]["width"], out["params"]["height"]) == (192, 128)
    assert out["warnings"] == [note]
    assert sizes(tmp_path / "outbox" / "wide") == {(192, 128)}


def test_a_portrait_jpeg_follows_its_exif_orientation_and_its_mask(
    tmp_path: Path, tiny_models: Path
) -> None:
    """A 96x64 JPEG stored turned (EXIF orientation 6) is a 64x96 portrait; its mask follows."""
    config = write_config(tmp_path, str(tiny_models / "sd"), size=192)
    inbox = tmp_path / "inbox"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to show
    noise = Image.open(noise_image(tmp_path / "noise.png", size=(96, 64)))
    noise.save(inbox / "tall.jpg", exif=exif.tobytes())
    mask_image(inbox / "tall.mask.png", size=(64, 96))
    assert main(["once", "-c", str(config)]) == 0
    out = manifest(tmp_path / "outbox" / "tall")
    assert (out["task"], out["params"]["width"], out["params"]["height"]) == ("inpaint", 128, 192)
    assert sizes(tmp_path / "outbox" / "tall") == {(128, 192)}


def test_width_and_height_in_a_sidecar_force_the_size(tmp_path: Path, tiny_models: Path) -> None:
    """width and height set by the input's sidecar are used as given, not fitted."""
    config = write_config(tmp_path, str(tiny_models / "sd"), size=192)
    inbox = tmp_path / "inbox"
    noise_image(inbox / "wide.png", size=(96, 64))
    (inbox / "wide.toml").write_text("width = 64\nheight = 64\n", encoding="utf-8")
    assert main(["once", "-c", str(config)]) == 0
    out = manifest(tmp_path / "outbox" / "wide")
    assert out["warnings"] == [
        "wide.png: 96x64 input generated at 64x64 (the width and height its sidecars set, "
        "aspect ratio not kept)"
    ]
    assert sizes(tmp_path / "outbox" / "wide") == {(64, 64)}


def test_a_20_megapixel_photo_is_shrunk_not_refused(tmp_path: Path, tiny_models: Path) -> None:
    """A 5472x3648 JPEG (20 MP, over the old 16 MP limit) is generated at 128x88."""
    config = write_config(tmp_path, str(tiny_models / "sd"), size=128)
    photo = Image.linear_gradient("L").resize((5472, 3648)).convert("RGB")
    photo.save(tmp_path / "inbox" / "photo.jpg", quality=80)
    assert main(["once", "-c", str(config)]) == 0
    out = manifest(tmp_path / "outbox" / "photo")
    assert out["status"] == "done"
    assert out["warnings"] == [
        "photo.jpg: 5472x3648 input generated at 128x88 (fitted within 128x128, aspect ratio kept; "
        "width and height in a sidecar force a size)"
    ]
    assert sizes(tmp_path / "outbox" / "photo") == {(128, 88)}


def test_max_pixels_cannot_switch_off_the_decompression_bomb_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_pixels above Pillow's guard is a configuration error; the default is the guard."""
    assert Image.MAX_IMAGE_PIXELS == BOMB_GUARD_PIXELS
    config = write_config(tmp_path, "x", extra_daemon="max_pixels = 100000000")
    assert main(["status", "-c", str(config)]) == 2
    assert capsys.readouterr().err == (
        "Error: config.toml [daemon]: max_pixels must be an integer in 4096..89478485, "
        "got 100000000\n"
    )
    assert load_config(write_config(tmp_path, "x")).max_pixels == BOMB_GUARD_PIXELS


def _truncated_png(inbox: Path) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buffer, format="PNG")
    (inbox / "broken.png").write_bytes(buffer.getvalue()[:2000])


def _mask_too_small(inbox: Path) -> None:
    noise_image(inbox / "room.png")
    mask_image(inbox / "room.mask.png", size=(32, 32))


BAD_IMAGES: list[tuple[str, Callable[[Path], object], str, str]] = [
    # (input, how to make it, the path given to check, the error: exact, or a prefix with "(")
    ("broken.png", _truncated_png, "broken.png", "broken.png: not a readable image ("),
    (
        "big.png",
        lambda inbox: noise_image(inbox / "big.png", size=(128, 128)),
        "big.png",
        "big.png: image is 128x128 (16384 pixels), the limit is max_pixels = 10000",
    ),
    (
        "room.png",
        _mask_too_small,
        "room.mask.png",
        "room.mask.png: mask is 32x32 but the image is 64x64",
    ),
]


@pytest.mark.parametrize(("name", "build", "checked", "error"), BAD_IMAGES)
def test_check_refuses_what_the_job_refuses_with_the_same_message(
    tmp_path: Path,
    tiny_models: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    build: Callable[[Path], object],
    checked: str,
    error: str,
) -> None:
    """A truncated image, one over max_pixels and a mask of the wrong size: check exits 1
    with the message the job's manifest then records."""
    config = write_config(tmp_path, str(tiny_models / "sd"), extra_daemon="max_pixels = 10000")
    inbox = tmp_path / "inbox"
    build(inbox)
    assert main(["check", "-c", str(config), str(inbox / checked)]) == 1
    shown = capsys.readouterr().out.splitlines()[-1]
    assert main(["once", "-c", str(config)]) == 1
    capsys.readouterr()
    out = manifest(tmp_path / "outbox" / Path(name).stem)
    assert out["status"] == "failed"
    assert shown == f"Error: {out['error']}"
    if error.endswith("("):
        assert out["error"].startswith(error), out["error"]
    else:
        assert out["error"] == error
