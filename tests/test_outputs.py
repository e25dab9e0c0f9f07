"""daemon.outputs: atomic writes, PNG metadata, contact sheets, names and the manifest model."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import IO, Any

import pytest
from PIL import Image, ImageChops
from PIL.PngImagePlugin import PngImageFile, PngInfo

from daemon.errors import DiskFull
from daemon.outputs.contact import contact_sheet
from daemon.outputs.files import (
    TEMP_MARKER,
    OutputFile,
    atomic_write,
    atomic_write_bytes,
    remove_stale_temporaries,
    sha256_file,
)
from daemon.outputs.manifest import (
    MANIFEST_NAME,
    SCHEMA,
    AttemptRecord,
    FileRecord,
    InputRecord,
    Manifest,
    ManifestStatus,
    ModelRecord,
    OutputEntry,
    SequenceRecord,
    Timings,
    installed_versions,
    manifest_is_done,
    read_manifest,
    remove_obsolete_outputs,
    write_manifest,
)
from daemon.outputs.names import sanitize_name
from daemon.outputs.png import (
    a1111_parameters,
    encode_png,
    read_dropforge_chunk,
    read_png_chunks,
    write_png,
)


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- atomic writes ----------------------------------------------------------------------------


def test_atomic_write_creates_folders_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A successful write creates parent folders, replaces the old file and leaves nothing else."""
    target = tmp_path / "outbox" / "cat" / "cat-1.png"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert all_files(tmp_path) == ["outbox/cat/cat-1.png"]


def test_atomic_write_failure_mid_write_keeps_old_file_and_removes_temporary(
    tmp_path: Path,
) -> None:
    """A writer that fails halfway leaves the previous file untouched and no temporary."""
    target = tmp_path / "cat.png"
    target.write_bytes(b"old")

    def half_then_fail(handle: IO[bytes]) -> None:
        handle.write(b"partial")
        handle.flush()
        assert any(TEMP_MARKER in name for name in os.listdir(tmp_path))
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError, match="encoder crashed"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert all_files(tmp_path) == ["cat.png"]


def test_atomic_write_onto_a_folder_fails_and_removes_temporary(tmp_path: Path) -> None:
    """When the final rename fails (the name is a folder) the temporary is removed."""
    (tmp_path / "cat.png").mkdir()
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "cat.png", b"data")
    assert os.listdir(tmp_path) == ["cat.png"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to produce ENOSPC")
def test_atomic_write_out_of_space_raises_disk_full(tmp_path: Path) -> None:
    """A real ENOSPC (from /dev/full) becomes DiskFull naming the file, with no temporary left."""
    target = tmp_path / "outbox" / "cat" / "cat-1.png"

    def spool_through_full_device(handle: IO[bytes]) -> None:
        handle.write(b"head")
        with open("/dev/full", "wb") as full:
            full.write(b"x" * 4096)

    with pytest.raises(DiskFull) as caught:
        atomic_write(target, spool_through_full_device)
    assert str(caught.value) == f"no space left writing {target}"
    assert all_files(tmp_path) == []


def test_remove_stale_temporaries_removes_only_ours(tmp_path: Path) -> None:
    """Crash leftovers are removed anywhere below the root; user files that look alike stay."""
    stale = [
        tmp_path / f".cat-1.png{TEMP_MARKER}0123abcd",
        tmp_path / "a" / "b" / f".manifest.json{TEMP_MARKER}deadbeef",
    ]
    kept = [
        tmp_path / f"visible.png{TEMP_MARKER}0123abcd",
        tmp_path / f".cat.png{TEMP_MARKER}notahex!",
        tmp_path / "a" / "cat.png",
    ]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == sorted(stale)
    assert all(path.exists() for path in kept)
    assert remove_stale_temporaries(tmp_path / "missing") == []


# -- hashes -----------------------------------------------------------------------------------


def test_sha256_file(tmp_path: Path) -> None:
    """Hashes stream the whole file."""
    path = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == digest


# -- PNG metadata -----------------------------------------------------------------------------

PARAMETERS = "a cat\nNegative prompt: blurry\nSteps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 42"


def test_write_png_round_trips_chunks_readable_by_pil(tmp_path: Path) -> None:
    """The parameters and dropforge chunks survive a write and PIL reads them back."""
    image = Image.new("RGB", (64, 48), (200, 10, 30))
    meta = {"job_key": "k" * 64, "index": 3, "seed": 42, "prompt": "ねこ, watercolor"}
    target = tmp_path / "cat" / "cat-42.png"
    written = write_png(target, image, PARAMETERS, meta)
    data = target.read_bytes()
    assert written == OutputFile("cat-42.png", hashlib.sha256(data).hexdigest(), len(data))
    with Image.open(target) as reread:
        assert isinstance(reread, PngImageFile)
        assert reread.text["parameters"] == PARAMETERS
        assert json.loads(reread.text["dropforge"]) == meta
        assert reread.size == (64, 48)
        assert reread.getpixel((5, 5)) == (200, 10, 30)
    compact = json.dumps(meta, separators=(",", ":"))
    assert read_png_chunks(target) == {"parameters": PARAMETERS, "dropforge": compact}
    assert read_dropforge_chunk(target) == meta


def test_unicode_parameters_use_itxt_and_round_trip(tmp_path: Path) -> None:
    """Prompts outside Latin-1 are stored as UTF-8 iTXt and read back unchanged."""
    text = "猫の水彩画\nSteps: 20, Seed: 1"
    target = tmp_path / "neko.png"
    write_png(target, Image.new("L", (8, 8)), text, {"seed": 1})
    assert b"iTXtparameters" in target.read_bytes()
    assert read_png_chunks(target)["parameters"] == text
    with Image.open(target) as reread:
        assert isinstance(reread, PngImageFile)
        assert reread.text["parameters"] == text


def test_read_png_chunks_reads_compressed_text(tmp_path: Path) -> None:
    """zTXt and compressed iTXt chunks written by other tools are read too."""
    info = PngInfo()
    info.add_text("parameters", "latin prompt " * 50, zip=True)
    info.add_text("comment", "ünïcödé ✓ " * 50, zip=True)
    target = tmp_path / "other.png"
    Image.new("RGB", (4, 4)).save(target, pnginfo=info)
    assert b"zTXt" in target.read_bytes()
    assert read_png_chunks(target) == {
        "parameters": "latin prompt " * 50,
        "comment": "ünïcödé ✓ " * 50,
    }


def test_encode_png_converts_modes_png_cannot_hold() -> None:
    """A CMYK image is stored as RGB instead of failing."""
    data = encode_png(Image.new("CMYK", (4, 4)), "p", {})
    with Image.open(io.BytesIO(data)) as reread:
        assert reread.mode == "RGB"


def test_read_dropforge_chunk_is_none_for_bad_files(tmp_path: Path) -> None:
    """Missing, foreign, truncated, corrupt and chunk-less files give None, never an error."""
    good = encode_png(Image.new("RGB", (4, 4)), "p", {"seed": 1})
    plain = io.BytesIO()
    Image.new("RGB", (4, 4)).save(plain, format="PNG")
    not_json = encode_png(Image.new("RGB", (4, 4)), "p", {}).replace(b"{}", b"{!")
    cases = {
        "truncated.png": good[: len(good) // 2],
        "flipped.png": good.replace(b"seed", b"sEed"),  # CRC no longer matches
        "plain.png": plain.getvalue(),
        "cat.jpg": b"\xff\xd8\xff\xe0 not a png",
        "badjson.png": not_json,
        "empty.png": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert read_dropforge_chunk(tmp_path / name) is None, name
    assert read_dropforge_chunk(tmp_path / "missing.png") is None
    assert read_dropforge_chunk(tmp_path) is None


def test_read_png_chunks_messages(tmp_path: Path) -> None:
    """Files that are not whole PNGs raise ValueError saying what is wrong."""
    good = encode_png(Image.new("RGB", (4, 4)), "p", {})
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "b.png").write_bytes(good[:-12])  # IEND cut off
    (tmp_path / "c.png").write_bytes(good.replace(b"parameters\x00p", b"parameters\x00q"))
    with pytest.raises(ValueError) as caught:
        read_png_chunks(tmp_path / "a.jpg")
    assert str(caught.value) == f"{tmp_path / 'a.jpg'}: not a PNG file"
    with pytest.raises(ValueError) as caught:
        read_png_chunks(tmp_path / "b.png")
    assert str(caught.value) == f"{tmp_path / 'b.png'}: truncated PNG file"
    with pytest.raises(ValueError) as caught:
        read_png_chunks(tmp_path / "c.png")
    assert str(caught.value) == f"{tmp_path / 'c.png'}: corrupt tEXt chunk"


def test_a1111_parameters_exact_text() -> None:
    """The text matches the A1111 layout character for character."""
    common: dict[str, Any] = {
        "steps": 30,
        "sampler": "DDIM",
        "guidance": 7.5,
        "seed": 42,
        "width": 512,
        "height": 512,
        "model": "default",
    }
    assert a1111_parameters(prompt="a cat", negative_prompt="blurry", **common) == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: default"
    )
    assert a1111_parameters(prompt="a cat", negative_prompt="", **common) == (
        "a cat\nSteps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: default"
    )
    text = a1111_parameters(
        prompt="a cat, watercolor",
        negative_prompt="",
        **{**common, "model": "models/sd, v1.5"},
        extra={"Denoising strength": 0.6, "Lora hashes": "water: 1.0", "Skipped": None},
    )
    assert text == (
        "a cat, watercolor\nSteps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x512, "
        'Model: "models/sd, v1.5", Denoising strength: 0.6, Lora hashes: "water: 1.0"'
    )


# -- contact sheets ---------------------------------------------------------------------------


def solid(color: tuple[int, int, int], size: tuple[int, int] = (512, 512)) -> Image.Image:
    return Image.new("RGB", size, color)


def ink_pixels(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Count pixels in ``box`` that differ from the sheet background."""
    region = image.crop(box)
    background = Image.new(region.mode, region.size, image.getpixel((0, 0)))
    differs = ImageChops.difference(region, background).convert("L").point(lambda v: v and 255)
    return differs.histogram()[255]


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def test_contact_sheet_grid_order_and_size() -> None:
    """Five images form a 3x2 grid in reading order, each cell 256 pixels plus margins."""
    one = contact_sheet([(solid(COLORS[0]), "seed 1")])
    five = contact_sheet([(solid(c), f"seed {i}") for i, c in enumerate(COLORS)])
    cell_w, cell_h = one.size
    assert 256 < cell_w <= 256 + 32 and 256 < cell_h <= 256 + 64
    assert five.size == (3 * cell_w, 2 * cell_h)
    for index, color in enumerate(COLORS):
        left, top = (index % 3) * cell_w, (index // 3) * cell_h
        assert five.getpixel((left + cell_w // 2, top + 128)) == color
    assert ink_pixels(five, (cell_w * 2, cell_h, cell_w * 3, cell_h * 2)) == 0  # empty sixth cell
    four = contact_sheet([(solid(c), "") for c in COLORS[:4]])
    assert four.size == (2 * cell_w, 2 * cell_h)
    assert contact_sheet([(solid(c), "") for c in COLORS], columns=5).size == (5 * cell_w, cell_h)


def test_contact_sheet_draws_labels_under_images() -> None:
    """A label puts ink in the strip under its image; an empty label leaves the strip blank."""
    sheet = contact_sheet([(solid(COLORS[0]), "seed 100"), (solid(COLORS[1]), "")], columns=2)
    cell_w, cell_h = sheet.width // 2, sheet.height
    label_strip = (0, 256 + 8, cell_w, cell_h)
    assert ink_pixels(sheet, label_strip) > 20
    assert ink_pixels(sheet, (cell_w, 256 + 8, 2 * cell_w, cell_h)) == 0


def test_contact_sheet_shortens_long_labels_within_their_cell() -> None:
    """A very long label does not widen the cell or spill into its neighbour."""
    short = contact_sheet([(solid(COLORS[0]), "seed 1"), (solid(COLORS[1]), "")])
    long = contact_sheet([(solid(COLORS[0]), "a very long prompt " * 20), (solid(COLORS[1]), "")])
    assert long.size == short.size
    cell_w = long.width // 2
    assert ink_pixels(long, (cell_w, 256 + 8, 2 * cell_w, long.height)) == 0


def test_contact_sheet_labels_may_have_two_lines() -> None:
    """A two-line label (scene and seed) gets a second text row with ink in both rows."""
    one = contact_sheet([(solid(COLORS[0], (64, 64)), "seed 4294967295")])
    two = contact_sheet([(solid(COLORS[0], (64, 64)), "scene 12\nseed 4294967295")])
    assert two.width == one.width
    line = two.height - one.height
    assert line > 10
    first_row = (0, 64 + 4, two.width, 64 + 4 + line)
    second_row = (0, 64 + 4 + line, two.width, two.height)
    assert ink_pixels(two, first_row) > 20 and ink_pixels(two, second_row) > 20


def test_contact_sheet_keeps_aspect_and_small_images() -> None:
    """Wide images are letterboxed, and 64x64 images are not blown up to 256."""
    wide = contact_sheet([(solid(COLORS[2], (512, 256)), "seed 7")])
    pad = (wide.width - 256) // 2
    assert wide.getpixel((wide.width // 2, pad + 128)) == COLORS[2]
    assert wide.getpixel((wide.width // 2, pad + 10)) == wide.getpixel((0, 0))
    tiny = contact_sheet(
        [(solid(c, (64, 64)), f"seed {4294967295 - i}") for i, c in enumerate(COLORS[:4])]
    )
    cell_w, cell_h = tiny.width // 2, tiny.height // 2
    assert 64 < cell_w < 200 and 64 < cell_h < 100
    assert tiny.getpixel((cell_w // 2, 2 + 32)) == COLORS[0]
    assert ink_pixels(tiny, (0, 64 + 4, cell_w, cell_h)) > 20
    with pytest.raises(ValueError, match="a contact sheet needs at least one image"):
        contact_sheet([])


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("cat", "cat"),
        ('a<b>c:d"e/f\\g|h?i*j', "a_b_c_d_e_f_g_h_i_j"),
        ("tab\there\x00nul\x7fdel\x85c1", "tab_here_nul_del_c1"),
        ("trailing. . ", "trailing"),
        ("..", "_"),
        ("", "_"),
        ("   ", "_"),
        ("CON", "CON_"),
        ("con.txt", "con_.txt"),
        ("Lpt9.tar.gz", "Lpt9_.tar.gz"),
        ("nul .png", "nul_ .png"),
        ("COM¹", "COM¹_"),
        ("console", "console"),
        ("COM10", "COM10"),
        ("cafe\u0301", "café"),
        ("ねこ 🐱", "ねこ 🐱"),
        ("bad\udcffbyte", "bad_byte"),
        (".hidden", ".hidden"),
    ],
)
def test_sanitize_name_table(raw: str, safe: str) -> None:
    """Each name becomes the expected safe name."""
    assert sanitize_name(raw) == safe


def test_sanitize_name_caps_length_in_chars_and_bytes() -> None:
    """Long names are cut to max_len characters and 200 UTF-8 bytes, keeping the extension."""
    assert sanitize_name("a" * 300) == "a" * 120
    assert sanitize_name("a" * 300 + ".png") == "a" * 116 + ".png"
    assert sanitize_name("b" * 100, max_len=40) == "b" * 40
    cut = sanitize_name("猫" * 100 + ".png")  # 3 bytes each
    assert cut == "猫" * 65 + ".png"
    assert len(cut.encode("utf-8")) <= 200
    assert sanitize_name("x" * 119 + " " + "z" * 50) == "x" * 119  # no trailing space left
    assert sanitize_name("x" * 130 + "." * 5 + "y") == "x" * 118 + ".y"
    with pytest.raises(ValueError, match="max_len must be at least 32"):
        sanitize_name("cat", max_len=8)


# -- manifests --------------------------------------------------------------------------------


def make_manifest(
    out_dir: Path,
    job_key: str = "key-1",
    files: dict[str, bytes] | None = None,
    status: str = "done",
) -> Manifest:
    """Write the given output files and a manifest listing them; return the manifest."""
    files = {"cat-1.png": b"one", "cat-2.png": b"two!"} if files is None else files
    outputs = []
    for seed, (name, data) in enumerate(files.items()):
        atomic_write_bytes(out_dir / name, data)
        outputs.append(
            OutputEntry(name, hashlib.sha256(data).hexdigest(), len(data), seed, None, "a cat")
        )
    manifest = Manifest(
        status=ManifestStatus(status),
        job_key=job_key,
        task="variations",
        input=InputRecord("a/cat.png", "f" * 64, 1234),
        sidecars=(FileRecord("a/cat.toml", "e" * 64),),
        params={"count": 2, "seeds": [0, 1], "guidance": 7.5},
        model=ModelRecord("default", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        outputs=tuple(outputs),
        timings=Timings("2024-05-01T10:00:00Z", "2024-05-01T10:00:09Z", 9.0),
        versions={"dropforge": "0.1.0", "diffusers": "0.42.1", "torch": "2.13.0"},
        device="cpu",
        warnings=("prompt truncated to 77 tokens",),
        error="cat.png: cannot read image" if status == "failed" else None,
    )
    write_manifest(out_dir, manifest)
    return manifest


def test_manifest_round_trip_keeps_every_field_in_order(tmp_path: Path) -> None:
    """A written manifest reads back equal, schema first, as pretty UTF-8 with a newline."""
    manifest = make_manifest(tmp_path, files={"ねこ-1.png": b"x"})
    assert read_manifest(tmp_path) == manifest
    document = json.loads((tmp_path / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert list(document) == [
        "schema",
        "status",
        "job_key",
        "task",
        "input",
        "sidecars",
        "params",
        "model",
        "outputs",
        "timings",
        "versions",
        "device",
        "warnings",
    ]
    text = (tmp_path / MANIFEST_NAME).read_text(encoding="utf-8")
    assert text.startswith('{\n  "schema": "dropforge/manifest@1",\n  "status": "done",')
    assert text.endswith("}\n") and "ねこ-1.png" in text
    failed = make_manifest(tmp_path / "f", status="failed")
    assert read_manifest(tmp_path / "f") == failed
    assert failed.status == "failed" and failed.error == "cat.png: cannot read image"
    written = json.loads((tmp_path / "f" / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert list(written)[-1] == "error"


def test_tween_fields_follow_the_common_ones(tmp_path: Path) -> None:
    """A sequence's manifest carries seed 004's fields at the top level, after the common ones;
    a tween job's lists its sequences."""
    sequence = SequenceRecord(
        "p1", "neutral", "ah", "center", ((0.0, "000.png"), (1.0, "100.png")), ()
    )
    base = make_manifest(tmp_path / "seq", files={})
    write_manifest(tmp_path / "seq", dataclasses.replace(base, sequence=sequence))
    document = json.loads((tmp_path / "seq" / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert list(document)[-6:] == [
        "path_id",
        "expr_start",
        "expr_end",
        "pose",
        "frames",
        "endpoints",
    ]
    assert document["frames"] == [{"t": 0.0, "file": "000.png"}, {"t": 1.0, "file": "100.png"}]
    back = read_manifest(tmp_path / "seq")
    assert back is not None and back.sequence == sequence


def test_earlier_attempts_are_written_after_the_warnings_and_read_leniently(
    tmp_path: Path,
) -> None:
    """A job that took more than one claim lists the earlier ones; an entry of the wrong shape
    reads as absent."""
    died = AttemptRecord(
        1,
        "2024-05-01T09:59:00Z",
        "died",
        "generating",
        1,
        2,
        12,
        True,
        "died at 1/2 outputs and 12 steps into the next (counted toward quarantine)",
    )
    base = make_manifest(tmp_path, files={})
    write_manifest(tmp_path, dataclasses.replace(base, attempts=(died,)))
    document = json.loads((tmp_path / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert list(document)[-1] == "attempts"
    assert document["attempts"] == [
        {
            "attempt": 1,
            "started_at": "2024-05-01T09:59:00Z",
            "ended": "died",
            "stage": "generating",
            "outputs": 1,
            "total": 2,
            "steps": 12,
            "counted": True,
            "summary": "died at 1/2 outputs and 12 steps into the next (counted toward quarantine)",
        }
    ]
    back = read_manifest(tmp_path)
    assert back is not None and back.attempts == (died,)
    document["attempts"].append({"attempt": "two", "counted": False})
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(document), encoding="utf-8")
    again = read_manifest(tmp_path)
    assert again is not None and again.attempts == (died,)


def test_manifest_requires_error_exactly_when_failed() -> None:
    """A failed manifest without an error, or a done one with one, is refused."""
    args: dict[str, Any] = {"job_key": "k", "task": "mesh", "input": None}
    message = "a manifest has an error exactly when its status is failed"
    with pytest.raises(ValueError, match=message):
        Manifest(status=ManifestStatus.failed, **args)
    with pytest.raises(ValueError, match=message):
        Manifest(status=ManifestStatus.done, error="boom", **args)
    with pytest.raises(ValueError, match="'finished' is not a valid ManifestStatus"):
        ManifestStatus("finished")


def test_read_manifest_none_when_absent_or_unreadable(tmp_path: Path) -> None:
    """Absent, broken, non-UTF-8 and non-object manifests read as None."""
    assert read_manifest(tmp_path) is None
    for content in (b'{"status": "do', b"\xff\xfe{}", b"[1, 2]"):
        (tmp_path / MANIFEST_NAME).write_bytes(content)
        assert read_manifest(tmp_path) is None


def test_manifest_is_done_cases(tmp_path: Path) -> None:
    """Done needs status done, the same key, and every output present with its size."""
    make_manifest(tmp_path)
    assert manifest_is_done(tmp_path, "key-1")
    assert not manifest_is_done(tmp_path, "key-2")
    (tmp_path / "cat-2.png").write_bytes(b"two?!")  # wrong size
    assert not manifest_is_done(tmp_path, "key-1")
    (tmp_path / "cat-2.png").unlink()  # missing
    assert not manifest_is_done(tmp_path, "key-1")
    make_manifest(tmp_path / "failed", status="failed")
    assert not manifest_is_done(tmp_path / "failed", "key-1")
    assert not manifest_is_done(tmp_path / "nothing", "key-1")


def test_manifest_is_done_refuses_tampered_manifests(tmp_path: Path) -> None:
    """Foreign schemas, bad sizes and names leading outside the folder are never done."""
    out = tmp_path / "out"
    (tmp_path / "secret").write_bytes(b"abc")
    base = {"schema": SCHEMA, "status": "done", "job_key": "k"}
    for outputs in (
        [{"file": "../secret", "bytes": 3}],
        [{"file": str(tmp_path / "secret"), "bytes": 3}],
        [{"file": "cat.png", "bytes": True}],
        [{"file": 5, "bytes": 3}],
        "cat.png",
    ):
        out.mkdir(exist_ok=True)
        (out / MANIFEST_NAME).write_text(json.dumps({**base, "outputs": outputs}))
        assert not manifest_is_done(out, "k"), outputs
    (out / MANIFEST_NAME).write_text(json.dumps({**base, "schema": "x", "outputs": []}))
    assert not manifest_is_done(out, "k")
    (out / MANIFEST_NAME).write_text(json.dumps({**base, "outputs": []}))
    assert manifest_is_done(out, "k")


def test_remove_obsolete_outputs_deletes_only_what_the_old_manifest_listed(
    tmp_path: Path,
) -> None:
    """Files dropped from the new plan go; kept, unlisted and outside files stay."""
    out = tmp_path / "out"
    old = make_manifest(out, files={"cat-1.png": b"1", "cat-2.png": b"2", "contact.png": b"c"})
    (out / "notes.txt").write_bytes(b"user file")
    (tmp_path / "secret").write_bytes(b"keep me")
    old = dataclasses.replace(
        old,
        outputs=(
            *(old.outputs or ()),
            *(OutputEntry(name, None, None) for name in ("../secret", MANIFEST_NAME, "gone.png")),
        ),
    )
    new = make_manifest(out, job_key="key-2", files={"cat-1.png": b"1", "contact.png": b"C"})
    assert remove_obsolete_outputs(out, old, new) == ["cat-2.png"]
    assert all_files(out) == ["cat-1.png", "contact.png", "manifest.json", "notes.txt"]
    assert (tmp_path / "secret").read_bytes() == b"keep me"
    assert remove_obsolete_outputs(out, None, new) == []


def test_remove_obsolete_outputs_never_follows_a_symlinked_folder_out(tmp_path: Path) -> None:
    """A listed file reached through a symlinked folder outside the output folder stays."""
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.png").write_bytes(b"p")
    out.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    old = Manifest(
        ManifestStatus.done,
        "k",
        None,
        None,
        outputs=(OutputEntry("link/precious.png", None, None),),
    )
    new = Manifest(ManifestStatus.done, "k", None, None)
    assert remove_obsolete_outputs(out, old, new) == []
    assert (elsewhere / "precious.png").exists()


def test_installed_versions_reads_metadata() -> None:
    """The versions recorded in manifests name dropforge, diffusers and torch."""
    versions = installed_versions()
    assert list(versions) == ["dropforge", "diffusers", "torch"]
    assert all(isinstance(value, str) and value for value in versions.values())
