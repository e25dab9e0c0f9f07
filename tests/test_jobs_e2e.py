"""End to end: tweens, meshes, LoRA styles and variation ranges through `dropforge once`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.cli import main
from tests.helpers import manifest, noise_image, snapshot, write_config

pytestmark = pytest.mark.slow


def config_with(root: Path, tiny_models: Path) -> Path:
    """A test config with the tiny sd and mesh models and two LoRA aliases."""
    return write_config(
        root,
        str(tiny_models / "sd"),
        models={"mesh": str(tiny_models / "mesh")},
        loras={
            "ink": str(tiny_models / "lora.safetensors"),
            "neg": str(root / "lora2.safetensors"),
        },
    )


def once(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `dropforge once` in-process."""
    code = main(["once", "-c", str(config)])
    return code, capsys.readouterr().out


def write_negated_lora(source: Path, target: Path) -> None:
    """A second LoRA: the tiny one with its up-projections negated."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(source))
    save_file(
        {k: (-v if "up" in k or "lora_B" in k else v) for k, v in tensors.items()}, str(target)
    )


def tween_inbox(root: Path, tiny_models: Path, depth: int) -> Path:
    """An inbox with a start/end tween job file."""
    config = config_with(root, tiny_models)
    inbox = root / "inbox"
    noise_image(inbox / "walk" / "a.png", seed=10)
    noise_image(inbox / "walk" / "b.png", seed=11)
    (inbox / "walk" / "walk.job.toml").write_text(
        f'start = "a.png"\nend = "b.png"\ndepth = {depth}\nseed = 3\nstrength = 0.5\n',
        encoding="utf-8",
    )
    return config


def test_depth_2_tween_gives_five_frames_with_endpoints_copied(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A depth-2 tween makes 000 025 050 075 100, copies the endpoints and lists the frames."""
    config = tween_inbox(tmp_path, tiny_models, depth=2)
    code, out = once(config, capsys)
    assert code == 0, out
    seq = tmp_path / "outbox" / "walk" / "sequences" / "walk"
    names = sorted(p.name for p in seq.iterdir())
    assert names == [
        "000.png",
        "025.png",
        "050.png",
        "075.png",
        "100.png",
        "manifest.json",
        "preview.gif",
    ]
    inbox = tmp_path / "inbox" / "walk"
    assert (seq / "000.png").read_bytes() == (inbox / "a.png").read_bytes()
    assert (seq / "100.png").read_bytes() == (inbox / "b.png").read_bytes()
    m = manifest(seq)
    assert m["status"] == "done" and m["task"] == "tween"
    assert m["path_id"] == "walk" and m["expr_start"] == "a" and m["expr_end"] == "b"
    assert m["frames"] == [
        {"t": 0.0, "file": "000.png"},
        {"t": 0.25, "file": "025.png"},
        {"t": 0.5, "file": "050.png"},
        {"t": 0.75, "file": "075.png"},
        {"t": 1.0, "file": "100.png"},
    ]
    with Image.open(seq / "preview.gif") as gif:
        assert gif.n_frames == 8  # forth and back
    job = manifest(tmp_path / "outbox" / "walk" / "walk")
    assert job["status"] == "done"
    assert [s["folder"] for s in job["sequences"]] == ["sequences/walk"]


def test_damaged_tween_frame_is_the_only_one_regenerated_and_a_deleted_one_is_discarded(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damaging 050.png and rerunning makes only that frame again; deleting 075.png
    afterwards records a discard beside it and makes nothing."""
    config = tween_inbox(tmp_path, tiny_models, depth=2)
    once(config, capsys)
    seq = tmp_path / "outbox" / "walk" / "sequences" / "walk"
    before = snapshot(seq)
    (seq / "050.png").write_bytes(b"damaged")
    code, out = once(config, capsys)
    assert code == 0, out
    after = snapshot(seq)
    for name in ("000.png", "025.png", "075.png", "100.png"):
        assert after[name] == before[name], name
    assert (seq / "050.png").stat().st_size > len(b"damaged")
    (seq / "075.png").unlink()
    code, out = once(config, capsys)
    assert "Processed: 0" in out
    assert not (seq / "075.png").exists() and (seq / "075.png.xmp").is_file()


def test_depth_3_tween_gives_nine_uniquely_named_frames(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Depth 3 gives nine frames named by t×100."""
    config = tween_inbox(tmp_path, tiny_models, depth=3)
    code, out = once(config, capsys)
    assert code == 0, out
    seq = tmp_path / "outbox" / "walk" / "sequences" / "walk"
    frames = [f["file"] for f in manifest(seq)["frames"]]
    assert frames == [
        "000.png",
        "012.png",
        "025.png",
        "038.png",
        "050.png",
        "062.png",
        "075.png",
        "088.png",
        "100.png",
    ]
    assert all((seq / f).is_file() for f in frames)


def test_seed_004_paths_pair_endpoints_by_pose_even_when_they_arrive_late(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """paths = [{id, start, end}] pairs {expr}__{pose}.png per pose; late endpoints still count."""
    config = config_with(tmp_path, tiny_models)
    inbox = tmp_path / "inbox" / "face"
    inbox.mkdir(parents=True)
    (inbox / "_defaults.toml").write_text('task = "tween"\n', encoding="utf-8")
    (inbox / "talk.job.toml").write_text(
        'depth = 1\nseed = 1\nstrength = 0.5\npaths = [{id = "neutral_to_ah", start = "neutral",'
        ' end = "ah"}]\n',
        encoding="utf-8",
    )
    code, out = once(config, capsys)
    assert code == 1
    assert "[FAILED]  face/talk.job.toml -> Error: no endpoint pairs found" in out
    noise_image(inbox / "neutral__center.png", seed=1)
    noise_image(inbox / "ah__center.png", seed=2)
    noise_image(inbox / "neutral__left.png", seed=3)  # no ah__left: no sequence
    code, out = once(config, capsys)
    assert code == 0, out
    assert "Inputs Found: 1" in out  # the endpoints are parts of the job, not inputs
    sequences = tmp_path / "outbox" / "face" / "sequences"
    assert sorted(p.name for p in sequences.iterdir()) == ["neutral_to_ah__center"]
    m = manifest(sequences / "neutral_to_ah__center")
    assert (m["path_id"], m["expr_start"], m["expr_end"], m["pose"]) == (
        "neutral_to_ah__center",
        "neutral",
        "ah",
        "center",
    )


def test_mesh_job_writes_a_glb_trimesh_loads_and_a_ply(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """task = "mesh" with formats glb and ply gives loadable meshes listed in the manifest."""
    import trimesh

    config = config_with(tmp_path, tiny_models)
    inbox = tmp_path / "inbox"
    noise_image(inbox / "chair.png", seed=4)
    (inbox / "chair.toml").write_text(
        'task = "mesh"\nformats = ["glb", "ply"]\nmesh_resolution = 64\nsteps = 2\n',
        encoding="utf-8",
    )
    code, out = once(config, capsys)
    assert code == 0, out
    folder = tmp_path / "outbox" / "chair"
    mesh = trimesh.load(folder / "chair.glb", force="mesh")
    assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    ply = trimesh.load(folder / "chair.ply", force="mesh")
    assert len(ply.faces) == len(mesh.faces)
    m = manifest(folder)
    assert m["task"] == "mesh" and m["model"]["alias"] == "mesh"
    assert [o["file"] for o in m["outputs"]] == ["chair.glb", "chair.ply"]


def test_lora_changes_pixels_and_two_loras_in_a_row_each_apply(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A LoRA job differs from the plain job; alternating LoRAs reproduce their own pixels."""
    config = config_with(tmp_path, tiny_models)
    write_negated_lora(tiny_models / "lora.safetensors", tmp_path / "lora2.safetensors")
    inbox = tmp_path / "inbox"
    for name, lora in (("a-plain", ""), ("b-ink", "ink"), ("c-neg", "neg"), ("d-ink", "ink")):
        noise_image(inbox / f"{name}.png", seed=9)
        (inbox / f"{name}.toml").write_text(
            f'seed = 5\nprompt = "a cat"\nlora = "{lora}"\nlora_scale = 2.0\n', encoding="utf-8"
        )
    code, out = once(config, capsys)
    assert code == 0, out

    def pixels(name: str) -> np.ndarray:
        with Image.open(tmp_path / "outbox" / name / f"{name}-5.png") as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16)

    plain, ink, neg, ink_again = (pixels(n) for n in ("a-plain", "b-ink", "c-neg", "d-ink"))
    assert np.abs(plain - ink).max() > 0
    assert np.abs(ink - neg).max() > 0
    assert np.abs(ink - ink_again).max() <= 2
    chunk = Image.open(tmp_path / "outbox" / "b-ink" / "b-ink-5.png").text["parameters"]
    assert 'Lora: "ink:2.0"' in chunk
    assert manifest(tmp_path / "outbox" / "b-ink")["lora"] == {"alias": "ink", "scale": 2.0}


def test_vary_and_prompts_record_each_outputs_values(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[vary] spreads guidance across count; each PNG and manifest entry carries its value."""
    config = config_with(tmp_path, tiny_models)
    inbox = tmp_path / "inbox"
    (inbox / "idea.txt").write_text("a lighthouse\n", encoding="utf-8")
    (inbox / "idea.toml").write_text(
        "count = 3\nseed = 1\n[vary]\nguidance = [5.0, 9.0]\n", encoding="utf-8"
    )
    noise_image(inbox / "cat.png")
    (inbox / "cat.toml").write_text('prompts = ["red", "blue"]\nseed = 4\n', encoding="utf-8")
    code, out = once(config, capsys)
    assert code == 0, out
    m = manifest(tmp_path / "outbox" / "idea")
    images = [o for o in m["outputs"] if o["seed"] is not None]
    assert [o["params"]["guidance"] for o in images] == [5.0, 7.0, 9.0]
    with Image.open(tmp_path / "outbox" / "idea" / "idea-2.png") as im:
        assert "CFG scale: 7.0" in im.text["parameters"]
        assert json.loads(im.text["dropforge"])["guidance"] == 7.0
    cat = manifest(tmp_path / "outbox" / "cat")
    assert [(o["file"], o["prompt"]) for o in cat["outputs"] if o["seed"] is not None] == [
        ("cat-p01-4.png", "red"),
        ("cat-p02-4.png", "blue"),
    ]
    shutil.rmtree(tmp_path / "outbox" / "cat")
