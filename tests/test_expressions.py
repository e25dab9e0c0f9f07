"""Seed 004 end to end: expressions.json as a job, endpoints made from one base image, fps, size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from daemon.cli import main
from daemon.intake.names import FileKind, classify
from tests.helpers import manifest, noise_image, snapshot, write_config

pytestmark = pytest.mark.slow

EXPRESSIONS = {
    "base_paths": [
        {"id": "neutral_to_speaking_ah", "start": "neutral", "end": "speaking_ah"},
        {"id": "neutral_to_speaking_ee", "start": "neutral", "end": "speaking_ee"},
    ],
    "style": "watercolor",  # another tool's key: ignored, and said so
}


def once(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`dropforge once`, which must succeed; its output."""
    code = main(["once", "-c", str(config)])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def preview_durations(path: Path) -> set[int]:
    """The frame durations (ms) of an animated GIF."""
    durations = set()
    with Image.open(path) as gif:
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.add(int(gif.info["duration"]))
    return durations


def test_expressions_json_is_a_job_file() -> None:
    """expressions.json and NAME.expressions.json are tween job files; other JSON is not."""
    assert classify("expressions.json") is FileKind.job
    assert classify("talk.expressions.json") is FileKind.job
    assert classify("notes.json") is FileKind.other


def test_expressions_json_gives_the_seed_layout_at_fps_and_size(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """base_paths over {expr}__{pose}.png endpoints give sequences/{id}__{pose}/000…100 with
    seed 004's manifest fields, frames at `size`, and preview.gif at `fps`."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    folder = tmp_path / "inbox" / "face"
    noise_image(folder / "neutral__center.png", seed=1)
    noise_image(folder / "speaking_ah__center.png", seed=2)
    noise_image(folder / "speaking_ee__center.png", seed=3)
    (folder / "expressions.json").write_text(json.dumps(EXPRESSIONS), encoding="utf-8")
    (folder / "expressions.toml").write_text(
        'depth = 2\nseed = 4\nstrength = 0.5\nfps = 4\nsize = "128x64"\n', encoding="utf-8"
    )
    out = once(config, capsys)
    assert "Inputs Found: 1" in out  # the endpoints are parts of the job, not inputs
    sequences = tmp_path / "outbox" / "face" / "sequences"
    assert sorted(p.name for p in sequences.iterdir()) == [
        "neutral_to_speaking_ah__center",
        "neutral_to_speaking_ee__center",
    ]
    seq = sequences / "neutral_to_speaking_ah__center"
    names = ["000.png", "025.png", "050.png", "075.png", "100.png"]
    assert sorted(p.name for p in seq.iterdir()) == [*names, "manifest.json", "preview.gif"]
    for name in names:
        with Image.open(seq / name) as frame:
            assert frame.size == (128, 64), name
    doc = manifest(seq)
    assert {k: doc[k] for k in ("path_id", "expr_start", "expr_end", "pose", "fps")} == {
        "path_id": "neutral_to_speaking_ah__center",
        "expr_start": "neutral",
        "expr_end": "speaking_ah",
        "pose": "center",
        "fps": 4.0,
    }
    assert doc["frames"] == [
        {"t": t, "file": f} for t, f in zip([0, 0.25, 0.5, 0.75, 1], names, strict=True)
    ]
    assert preview_durations(seq / "preview.gif") == {250}
    job = manifest(tmp_path / "outbox" / "face" / "expressions")
    assert job["warnings"] == ["face/expressions.json: keys not used by dropforge: style"]

    # A new fps writes the previews anew and keeps every frame as it was.
    before = snapshot(seq)
    (folder / "expressions.toml").write_text(
        'depth = 2\nseed = 4\nstrength = 0.5\nfps = 10\nsize = "128x64"\n', encoding="utf-8"
    )
    once(config, capsys)
    after = snapshot(seq)
    assert {n: after[n] for n in names} == {n: before[n] for n in names}
    assert preview_durations(seq / "preview.gif") == {100}


def test_endpoints_are_made_from_one_base_image_then_tweened(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With expressions' prompts, a base image and no endpoint files, each endpoint is made by
    img2img into the job's endpoints/ folder, then tweened; a rerun makes nothing."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    folder = tmp_path / "inbox"
    noise_image(folder / "neutral_center.png", seed=5)
    doc = {
        "base_paths": EXPRESSIONS["base_paths"][:1],
        "expressions": [
            {"id": "neutral", "prompt": "a calm face"},
            {"id": "speaking_ah", "prompt": "a face saying ah", "notes": "for the other tool"},
        ],
    }
    (folder / "talk.expressions.json").write_text(json.dumps(doc), encoding="utf-8")
    (folder / "talk.expressions.toml").write_text(
        'base = "neutral_center.png"\nseed = 9\nstrength = 0.5\ndepth = 1\n', encoding="utf-8"
    )
    out = once(config, capsys)
    assert "Inputs Found: 1" in out  # the base image is a part of the job
    job = tmp_path / "outbox" / "talk"
    made = sorted(p.name for p in (job / "endpoints").iterdir())
    assert made == ["neutral__center.png", "speaking_ah__center.png"]
    outputs = {o["file"]: o for o in manifest(job)["outputs"]}
    assert outputs["endpoints/speaking_ah__center.png"]["prompt"] == "a face saying ah"
    seq = tmp_path / "outbox" / "sequences" / "neutral_to_speaking_ah__center"
    assert (seq / "000.png").read_bytes() == (
        job / "endpoints" / "neutral__center.png"
    ).read_bytes()
    assert sorted(p.name for p in seq.glob("*.png")) == ["000.png", "050.png", "100.png"]
    assert manifest(seq)["endpoints"][1]["path"] == "talk/endpoints/speaking_ah__center.png"
    before = snapshot(tmp_path / "outbox")
    assert "Skipped (existing): 1" in once(config, capsys)
    assert snapshot(tmp_path / "outbox") == before


def test_expressions_without_base_fail_with_the_rule(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts for expressions but no base image: the job fails saying base is required."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    doc = {"base_paths": EXPRESSIONS["base_paths"][:1], "expressions": {"neutral": "calm"}}
    (tmp_path / "inbox" / "expressions.json").write_text(json.dumps(doc), encoding="utf-8")
    assert main(["once", "-c", str(config)]) == 1
    capsys.readouterr()
    assert manifest(tmp_path / "outbox" / "expressions")["error"] == (
        "expressions.json: expressions need base, the image their endpoints are made from"
    )
