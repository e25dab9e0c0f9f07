"""The bad-input corpus: one `once` run over dozens of broken inputs beside good ones.

Every bad input must end in a ``failed`` manifest whose error names the file, the key,
the rule and the value; none may crash the run, and the good inputs beside them finish.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from daemon.config import load_config
from daemon.runtime.once import OnceReport, run_once
from daemon.runtime.worker import Outcome
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import SolidGenerator
from tests.helpers import manifest, mask_image, noise_image, write_config

# The limit the corpus runs under: 64x64 inputs pass, a 128x128 one does not.
MAX_PIXELS = 10_000
IMAGE_FORMATS = (
    ("png", "PNG"),
    ("jpg", "JPEG"),
    ("jpeg", "JPEG"),
    ("webp", "WEBP"),
    ("bmp", "BMP"),
)


@dataclass(frozen=True)
class Bad:
    """One bad input: the input's path, the expected error and whether it is only a prefix."""

    input: str
    error: str
    prefix: bool = False  # the tail of the message comes from Pillow


def encoded(fmt: str, size: tuple[int, int] = (64, 64)) -> bytes:
    """A valid image of ``size`` in format ``fmt``, as bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png() -> bytes:
    """A tiny PNG whose header claims 100000x100000 pixels."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + png_chunk(b"IEND", b"")
    )


# Sidecars beside a valid 64x64 PNG: STEM.png + STEM.toml → the expected error.
SIDECARS: dict[str, tuple[str, str]] = {
    "badtoml": (
        "count = = 2\n",
        "badtoml.toml: not valid TOML: Invalid value (at line 1, column 9)",
    ),
    "cuont": ("cuont = 2\n", "cuont.toml: cuont: unknown key, did you mean count?"),
    "count-str": ('count = "3"\n', 'count-str.toml: count must be an integer in 1..20, got "3"'),
    "count-big": ("count = 50\n", "count-big.toml: count must be 1..20, got 50"),
    "count-zero": ("count = 0\n", "count-zero.toml: count must be 1..20, got 0"),
    "seed-neg": ("seed = -1\n", "seed-neg.toml: seed must be 0..4294967295, got -1"),
    "seed-big": (
        "seed = 4294967296\n",
        "seed-big.toml: seed must be 0..4294967295, got 4294967296",
    ),
    "steps-float": (
        "steps = 2.5\n",
        "steps-float.toml: steps must be an integer in 1..150, got 2.5",
    ),
    "steps-zero": ("steps = 0\n", "steps-zero.toml: steps must be 1..150, got 0"),
    "steps-big": ("steps = 151\n", "steps-big.toml: steps must be 1..150, got 151"),
    "guidance-str": (
        'guidance = "high"\n',
        'guidance-str.toml: guidance must be a number in 0..30, got "high"',
    ),
    "guidance-big": ("guidance = 31\n", "guidance-big.toml: guidance must be 0..30, got 31"),
    "guidance-nan": ("guidance = nan\n", "guidance-nan.toml: guidance must be 0..30, got nan"),
    "strength-big": ("strength = 1.5\n", "strength-big.toml: strength must be 0..1, got 1.5"),
    "strength-tiny": (
        "strength = 0.1\n",
        "strength-tiny.png: strength must be at least 1/steps (0.5 with 2 steps) for "
        "variations, got 0.1",
    ),
    "width-odd": (
        "width = 100\n",
        "width-odd.toml: width must be a multiple of 8 in 64..2048, got 100",
    ),
    "height-big": (
        "height = 4096\n",
        "height-big.toml: height must be a multiple of 8 in 64..2048, got 4096",
    ),
    "lora-scale": (
        'lora = "ink"\nlora_scale = 3\n',
        "lora-scale.toml: lora_scale must be 0..2, got 3",
    ),
    "mesh-res": (
        "mesh_resolution = 32\n",
        "mesh-res.toml: mesh_resolution must be 64..512, got 32",
    ),
    "depth": ("depth = 7\n", "depth.toml: depth must be 1..6, got 7"),
    "texture": ("texture = 1\n", "texture.toml: texture must be true or false, got 1"),
    "force": ('force = "yes"\n', 'force.toml: force must be true or false, got "yes"'),
    "task": (
        'task = "upscale"\n',
        "task.toml: task must be one of text2image, variations, inpaint, mesh, tween, "
        'got "upscale"',
    ),
    "task-prompt": (
        'task = "text2image"\n',
        "task-prompt.png: task must be one of variations, inpaint, mesh for an image, "
        'got "text2image"',
    ),
    "vary": (
        "[vary]\nguidance = [1, 40]\n",
        "vary.toml: vary.guidance must be a list [low, high] of two numbers in 0..30, got [1, 40]",
    ),
    "vary-key": ("[vary]\ncfg = [1, 2]\n", "vary-key.toml: vary.cfg: unknown key"),
    "seeds-dup": (
        "seeds = [1, 1]\n",
        "seeds-dup.toml: seeds[2] must be unique (it repeats an earlier seed), got 1",
    ),
    "seeds-count": (
        "seeds = [1, 2]\ncount = 3\n",
        "seeds-count.toml: count must equal the number of seeds (2), got 3",
    ),
    "prompts-str": (
        'prompts = "a cat"\n',
        'prompts-str.toml: prompts must be a list of 0..20 non-empty strings, got "a cat"',
    ),
    "prompt-int": ("prompt = 5\n", "prompt-int.toml: prompt must be a string, got 5"),
    "formats": (
        'formats = ["stl"]\n',
        'formats.toml: formats[1] must be one of glb, ply, obj, got "stl"',
    ),
    "prompt-long": (
        'prompt = "' + "a" * 4001 + '"\n',
        "prompt-long.toml: prompt must be at most 4000 characters, got 4001 characters",
    ),
    "preset": (
        'preset = "ultra"\n',
        'preset.toml: preset must be one of the presets: draft, high, standard, got "ultra"',
    ),
    "model": (
        'model = "sdxl"\n',
        'model.toml: model must be one of the [models] aliases: default, got "sdxl"',
    ),
    "lora": (
        'lora = "pixel"\n',
        'lora.toml: lora must be one of the [loras] aliases: ink, or "" for none, got "pixel"',
    ),
    "mask-missing": (
        'task = "inpaint"\nmask = "nothere.png"\n',
        'mask-missing.toml: mask must be an existing file, got "nothere.png"',
    ),
    "inpaint-nomask": (
        'task = "inpaint"\n',
        "inpaint-nomask.png: inpaint needs a mask: add inpaint-nomask.mask.png beside it or "
        "set mask in inpaint-nomask.toml",
    ),
}

CASES: list[Bad] = [
    *(Bad(f"{stem}.png", error) for stem, (_, error) in SIDECARS.items()),
    Bad("bigtoml.png", "bigtoml.toml: file is 72010 bytes, the limit is 65536"),
    Bad(
        "latin-toml.png",
        "latin-toml.toml: not valid TOML: not UTF-8 text (bad byte at position 13)",
    ),
    Bad("room.png", "room.mask.png: mask is 32x32 but the image is 64x64"),
    Bad(
        "bomb.png",
        "bomb.png: refused as a decompression bomb (Image size (10000000000 pixels)",
        True,
    ),
    Bad("huge.png", "huge.png: image is 128x128 (16384 pixels), the limit is max_pixels = 10000"),
    Bad("latin1.txt", "latin1.txt: not UTF-8 text (byte 0xe9 at offset 5)"),
    Bad(
        "utf16-nobom.txt",
        "utf16-nobom.txt: not UTF-8 text (byte 0x00 at offset 1; UTF-16 needs a byte-order mark)",
    ),
    Bad(
        "utf16-ascii.txt",
        "utf16-ascii.txt: not UTF-8 text (byte 0x00 at offset 1; UTF-16 needs a byte-order mark)",
    ),
    Bad("blank.txt", "blank.txt: empty prompt file"),
    Bad("excluded.md", 'excluded.md: no scenes left after excluding sections "NOTES"'),
    Bad(
        "no-ends.job.toml",
        "no-ends.job.toml: a tween needs start and end images, or paths = [{id, start, end}] "
        "over {expr}__{pose}.png endpoints",
    ),
    Bad("half.job.toml", "half.job.toml: end is required when start or end is set"),
]
for _ext, _fmt in IMAGE_FORMATS:
    CASES += [
        Bad(f"trunc-{_ext}.{_ext}", f"trunc-{_ext}.{_ext}: not a readable image (", True),
        Bad(f"corrupt-{_ext}.{_ext}", f"corrupt-{_ext}.{_ext}: not a readable image (", True),
        Bad(
            f"garbage-{_ext}.{_ext}",
            f"garbage-{_ext}.{_ext}: not a readable image (unknown or corrupt format)",
        ),
    ]

# Good inputs beside the bad ones → the output folder each must finish in.
GOOD: dict[str, str] = {
    "good.png": "good",
    "story.txt": "story",
    "utf16-bom.txt": "utf16-bom",
    "animated-png.png": "animated-png",
    "animated-webp.webp": "animated-webp",
    "my cat.png": "my cat",
    "猫 ünï.png": "猫 ünï",
    "what?.png": "what_",
    "a<b>.png": "a_b_",
    "CON.png": "CON_",
    "aux.txt": "aux_",
    "com1.jpg": "com1_",
    "Lpt9.bmp": "Lpt9_",
    "nul.md": "nul_",
}


def build_corpus(root: Path) -> Path:
    """Write every case of the corpus into root/inbox; return the config path."""
    config = write_config(
        root,
        str(root / "no-model"),
        extra_daemon=f"max_pixels = {MAX_PIXELS}",
        loras={"ink": str(root / "ink.safetensors")},
    )
    inbox = root / "inbox"
    for n, (stem, (text, _)) in enumerate(SIDECARS.items()):
        noise_image(inbox / f"{stem}.png", seed=n)
        (inbox / f"{stem}.toml").write_text(text, encoding="utf-8")
    for ext, fmt in IMAGE_FORMATS:
        data = encoded(fmt)
        (inbox / f"trunc-{ext}.{ext}").write_bytes(data[: len(data) // 2])
        (inbox / f"corrupt-{ext}.{ext}").write_bytes(data[:16] + bytes(range(256)) * 4)
        (inbox / f"garbage-{ext}.{ext}").write_bytes(b"this is not an image at all\n" * 20)
    noise_image(inbox / "bigtoml.png")
    (inbox / "bigtoml.toml").write_text("# padding\n" * 7200 + "count = 1\n", encoding="utf-8")
    noise_image(inbox / "latin-toml.png")
    (inbox / "latin-toml.toml").write_bytes('prompt = "café"\n'.encode("latin-1"))
    noise_image(inbox / "room.png")
    mask_image(inbox / "room.mask.png", size=(32, 32))
    (inbox / "room.toml").write_text('task = "inpaint"\n', encoding="utf-8")
    (inbox / "bomb.png").write_bytes(bomb_png())
    noise_image(inbox / "huge.png", size=(128, 128))
    (inbox / "empty.png").write_bytes(b"")
    (inbox / "empty.txt").write_bytes(b"")
    (inbox / "latin1.txt").write_bytes("a café at night".encode("latin-1"))
    (inbox / "utf16-nobom.txt").write_bytes("a café at night".encode("utf-16-le"))
    (inbox / "utf16-ascii.txt").write_bytes("a dog".encode("utf-16-le"))
    (inbox / "utf16-bom.txt").write_bytes("a café at night".encode("utf-16"))
    (inbox / "blank.txt").write_text("  \n\n \t\n", encoding="utf-8")
    (inbox / "excluded.md").write_text("## NOTES\n\nonly notes\n", encoding="utf-8")
    (inbox / "excluded.toml").write_text('exclude_sections = ["NOTES"]\n', encoding="utf-8")
    (inbox / "no-ends.job.toml").write_text("depth = 1\n", encoding="utf-8")
    (inbox / "half.job.toml").write_text('start = "a__front.png"\n', encoding="utf-8")

    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    for name in ("animated-png.png", "animated-webp.webp"):
        frames[0].save(inbox / name, save_all=True, append_images=frames[1:], duration=100)
    for n, name in enumerate(GOOD):
        if name.endswith((".txt", ".md")) and name != "utf16-bom.txt":
            (inbox / name).write_text(f"a fox number {n}", encoding="utf-8")
        elif not (inbox / name).exists():
            noise_image(inbox / name, seed=100 + n)
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OnceReport, SolidGenerator]:
    """Build the corpus and process it with one `once` run on the fake generator."""
    root = tmp_path_factory.mktemp("corpus")
    settings = load_config(build_corpus(root))
    generator = SolidGenerator()
    report = run_once(settings, lambda: generator)
    return root, report, generator


def test_corpus_has_at_least_forty_cases() -> None:
    """The issue asks for a corpus of at least 40 bad inputs, each with its message."""
    assert len(CASES) >= 40
    assert len({c.input for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.input for c in CASES])
def test_bad_input_fails_with_its_message(
    case: Bad, corpus: tuple[Path, OnceReport, SolidGenerator]
) -> None:
    """The bad input gets a failed manifest and journal row with the expected message."""
    root, report, _ = corpus
    stem = case.input[: -len(".job.toml")] if case.input.endswith(".job.toml") else case.input
    out = manifest(root / "outbox" / Path(stem).stem)
    assert out["status"] == "failed"
    assert out["input"]["path"] == case.input
    assert out["outputs"] == []
    if case.prefix:
        assert out["error"].startswith(case.error), out["error"]
    else:
        assert out["error"] == case.error
    result = next(r for r in report.results if r.rel == case.input)
    assert (result.outcome, result.message) == (Outcome.failed, out["error"])


def test_no_input_crashed_the_run_and_every_good_input_finished(
    corpus: tuple[Path, OnceReport, SolidGenerator],
) -> None:
    """Every job ends failed (the bad ones) or done (the good ones); none is an internal error."""
    root, report, _ = corpus
    outcomes = {r.rel: r.outcome for r in report.results}
    assert outcomes == {
        **{c.input: Outcome.failed for c in CASES},
        **{name: Outcome.done for name in GOOD},
    }
    assert not [r.message for r in report.results if "internal error" in r.message]
    for name, folder in GOOD.items():
        out = manifest(root / "outbox" / folder)
        assert (out["status"], out["input"]["path"]) == ("done", name)
        assert all((root / "outbox" / folder / o["file"]).is_file() for o in out["outputs"])


def test_windows_reserved_and_odd_names_get_sanitised_output_files(
    corpus: tuple[Path, OnceReport, SolidGenerator],
) -> None:
    """Outputs of CON.png, aux.txt and names with ? < > are safe file names on every OS."""
    root, _, _ = corpus
    names = sorted(p.name for p in (root / "outbox" / "CON_").iterdir())
    assert names[-1] == "manifest.json" and names[0].startswith("CON_-")
    for folder in ("what_", "a_b_", "aux_"):
        files = [p.name for p in (root / "outbox" / folder).iterdir()]
        assert all(not set('<>:"\\|?*') & set(f) for f in files), files
    assert not (root / "outbox" / "CON").exists()


def test_animated_images_use_the_first_frame_and_warn(
    corpus: tuple[Path, OnceReport, SolidGenerator],
) -> None:
    """An animated PNG or WebP is processed from its first (red) frame, with a warning."""
    root, _, generator = corpus
    for name in ("animated-png.png", "animated-webp.webp"):
        out = manifest(root / "outbox" / Path(name).stem)
        assert out["warnings"] == [f"{name}: animated image, only the first frame was used"]
    firsts = [r.init_image for r in generator.requests if r.init_image is not None]
    # WebP is lossy: "red" is a red channel far above the blue one.
    pixels = [im.convert("RGB").getpixel((0, 0)) for im in firsts]
    red = [p for p in pixels if isinstance(p, tuple) and p[0] > 200 > 50 > p[2]]
    assert len(red) == 2


def test_zero_byte_files_wait_until_they_fill(
    corpus: tuple[Path, OnceReport, SolidGenerator],
) -> None:
    """0-byte files are deferred as still arriving, never failed, and finish once filled."""
    root, report, _ = corpus
    assert report.deferred == [
        ("empty.png", "empty file, still arriving"),
        ("empty.txt", "empty file, still arriving"),
    ]
    assert not (root / "outbox" / "empty").exists()
    settings = load_config(root / "config.toml")
    with SqliteJournal(settings.journal_path) as journal:
        states = {j.input: j.state for j in journal.jobs(limit=1000)}
    assert "empty.png" not in states and "empty.txt" not in states
    assert states["bomb.png"] is JobState.failed


def test_zero_byte_file_that_fills_is_processed(tmp_path: Path) -> None:
    """A prompt file that was empty at the first run is processed once it has content."""
    config = write_config(tmp_path, str(tmp_path / "no-model"))
    prompt = tmp_path / "inbox" / "late.txt"
    prompt.write_bytes(b"")
    settings = load_config(config)
    first = run_once(settings, SolidGenerator)
    assert (first.results, first.deferred) == ([], [("late.txt", "empty file, still arriving")])
    prompt.write_text("a late fox", encoding="utf-8")
    second = run_once(settings, SolidGenerator)
    assert [(r.rel, r.outcome) for r in second.results] == [("late.txt", Outcome.done)]
    assert manifest(tmp_path / "outbox" / "late")["status"] == "done"


def test_inputs_that_share_an_output_folder_do_not_overwrite_each_other(tmp_path: Path) -> None:
    """cat.png and cat.txt both map to OUT/cat: the first keeps it, the second fails, stably."""
    config = write_config(tmp_path, str(tmp_path / "no-model"))
    noise_image(tmp_path / "inbox" / "cat.png")
    (tmp_path / "inbox" / "cat.txt").write_text("a cat", encoding="utf-8")
    settings = load_config(config)
    first = run_once(settings, SolidGenerator)
    clash = (
        "cat.txt: output folder cat already holds the outputs of cat.png: "
        "rename one of the two inputs (or remove that folder)"
    )
    assert [(r.rel, r.outcome, r.message) for r in first.results] == [
        ("cat.png", Outcome.done, "1 output"),
        ("cat.txt", Outcome.failed, clash),
    ]
    out = manifest(tmp_path / "outbox" / "cat")
    assert out["input"]["path"] == "cat.png"
    assert all((tmp_path / "outbox" / "cat" / o["file"]).is_file() for o in out["outputs"])
    second = run_once(settings, SolidGenerator)
    assert (second.results, second.previously_failed) == ([], [("cat.txt", clash)])
