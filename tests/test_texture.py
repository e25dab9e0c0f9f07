"""Seed 000's texture: colours baked into a UV-mapped texture, a GLB the Khronos glTF validator
accepts with TEXCOORD_0 and a baseColorTexture, an OBJ with its MTL and PNG beside it."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trimesh
from PIL import Image

from daemon.cli import main
from daemon.generators.texture import bake
from tests.helpers import manifest, noise_image, write_config

ROOT = Path(__file__).resolve().parent.parent
# npm install --prefix .cache/node gltf-validator@2.0.0-dev.3.10 (.ci/run does this)
VALIDATOR = ROOT / ".cache" / "node" / "node_modules" / "gltf-validator"
VALIDATE_JS = """
const fs = require("fs");
const validator = require(process.argv[1]);
validator.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))
  .then((report) => process.stdout.write(JSON.stringify(report)))
  .catch((error) => { console.error(String(error)); process.exit(2); });
"""


def glb_json(path: Path) -> dict[str, Any]:
    """The JSON chunk of a GLB file."""
    data = path.read_bytes()
    length, kind = struct.unpack("<II", data[12:20])
    assert kind == 0x4E4F534A  # "JSON"
    parsed: dict[str, Any] = json.loads(data[20 : 20 + length])
    return parsed


def khronos_report(path: Path) -> dict[str, Any]:
    """The Khronos glTF validator's report on a file (skips without node or the validator)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (.ci/run installs nodejs and npm)")
    if not (VALIDATOR / "package.json").is_file():
        pytest.skip(
            "the glTF validator is not installed: npm install --prefix .cache/node "
            "gltf-validator@2.0.0-dev.3.10 (.ci/run does)"
        )
    done = subprocess.run(
        [node, "-e", VALIDATE_JS, str(VALIDATOR), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_baked_texture_shows_each_vertex_its_own_colour() -> None:
    """Sampling the baked texture at a vertex's UV gives that vertex's colour back."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    colors = np.round((sphere.vertices * 0.5 + 0.5) * 255).astype(np.uint8)
    baked = bake(sphere.vertices, sphere.faces, colors)
    texture = np.asarray(baked.texture, dtype=np.int16)
    size = texture.shape[0]
    x = np.clip((baked.uv[:, 0] * size).astype(int), 0, size - 1)
    y = np.clip(((1 - baked.uv[:, 1]) * size).astype(int), 0, size - 1)
    seen = texture[y, x]
    original = np.linalg.norm(baked.vertices[:, None] - sphere.vertices[None], axis=2).argmin(1)
    error = np.abs(seen - colors[original].astype(np.int16)).max(axis=1)
    assert np.percentile(error, 95) <= 12, np.percentile(error, 95)
    assert len(baked.vertices) == len(baked.uv) and baked.faces.max() < len(baked.vertices)


@pytest.mark.slow
def test_texture_true_gives_a_valid_textured_glb_and_an_obj_with_mtl_and_png(
    tmp_path: Path, tiny_models: Path
) -> None:
    """texture = true: the GLB carries TEXCOORD_0 and a baseColorTexture and passes the Khronos
    validator; the OBJ's MTL names the PNG beside it; the PLY keeps vertex colours."""
    config = write_config(
        tmp_path,
        str(tiny_models / "sd"),
        models={"mesh": str(tiny_models / "mesh")},
        extra="mesh_resolution = 64",
    )
    inbox = tmp_path / "inbox"
    noise_image(inbox / "chair.png")
    (inbox / "chair.toml").write_text(
        'task = "mesh"\ntexture = true\nformats = ["glb", "obj", "ply"]\n', encoding="utf-8"
    )
    assert main(["once", "-c", str(config)]) == 0
    out = tmp_path / "outbox" / "chair"
    listed = [o["file"] for o in manifest(out)["outputs"]]
    assert listed == ["chair.glb", "chair.obj", "chair.ply", "chair.mtl", "chair-texture.png"]

    gltf = glb_json(out / "chair.glb")
    (primitive,) = gltf["meshes"][0]["primitives"]
    assert "TEXCOORD_0" in primitive["attributes"]
    material = gltf["materials"][primitive["material"]]
    texture = material["pbrMetallicRoughness"]["baseColorTexture"]["index"]
    assert gltf["images"][gltf["textures"][texture]["source"]]["mimeType"] == "image/png"

    assert "mtllib chair.mtl" in (out / "chair.obj").read_text(encoding="utf-8")
    assert "map_Kd chair-texture.png" in (out / "chair.mtl").read_text(encoding="utf-8")
    loaded = trimesh.load(out / "chair.obj", force="mesh")
    assert loaded.visual.kind == "texture"
    with Image.open(out / "chair-texture.png") as png:
        assert loaded.visual.material.image.size == png.size
        assert len(png.convert("RGB").getcolors(1 << 20) or ()) > 16  # a picture, not a fill
    ply = trimesh.load(out / "chair.ply", force="mesh")
    assert ply.visual.kind == "vertex"

    report = khronos_report(out / "chair.glb")
    issues = report["issues"]
    assert (issues["numErrors"], issues["numWarnings"]) == (0, 0), issues["messages"]
    assert report["info"]["hasTextures"] and report["info"]["maxUVs"] == 1
