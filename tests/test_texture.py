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
from daemon.errors import Interrupted
from daemon.generators.texture import Baked, _rasterize, bake, grid_unwrap
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


def colour_error(baked: Baked) -> float:
    """The 95th percentile, over triangles, of |texture - expected colour| near each corner
    (80 % of the way to it): the colours are the vertices' positions as RGB."""
    texture = np.asarray(baked.texture, dtype=np.float64)
    size = texture.shape[0]
    colors = np.round((baked.vertices * 0.5 + 0.5) * 255)
    weights = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    uv = np.einsum("ck,fkd->fcd", weights, baked.uv[baked.faces]).reshape(-1, 2)
    expected = np.einsum("ck,fkd->fcd", weights, colors[baked.faces]).reshape(-1, 3)
    x = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    y = np.clip(((1 - uv[:, 1]) * size).astype(int), 0, size - 1)
    return float(np.percentile(np.abs(texture[y, x] - expected).max(axis=1), 95))


def coloured_sphere(subdivisions: int) -> tuple[Any, np.ndarray]:
    """An icosphere and a colour per vertex (its position as RGB)."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    return sphere, np.round((sphere.vertices * 0.5 + 0.5) * 255).astype(np.uint8)


def test_baked_texture_shows_each_vertex_its_own_colour() -> None:
    """Sampling the baked texture at a vertex's UV gives that vertex's colour back."""
    sphere, colors = coloured_sphere(3)
    notes: list[str] = []
    baked = bake(sphere.vertices, sphere.faces, colors, on_warning=notes.append)
    assert (baked.unwrapped_by, notes) == ("xatlas", [])
    assert colour_error(baked) <= 12
    assert len(baked.vertices) == len(baked.uv) and baked.faces.max() < len(baked.vertices)


def test_triangle_patches_bake_the_same_colours() -> None:
    """The fallback unwrap (each triangle its own patch) also shows every vertex its colour."""
    sphere, colors = coloured_sphere(2)
    vmapping, faces, uv = grid_unwrap(sphere.faces, 256)
    assert faces.shape == sphere.faces.shape and uv.min() > 0 and uv.max() < 1
    assert (sphere.faces.reshape(-1) == vmapping).all()
    baked = Baked(
        sphere.vertices[vmapping],
        faces,
        uv,
        Image.fromarray(_rasterize(uv, faces, colors[vmapping].astype(np.float32), 256)),
        "triangles",
    )
    assert colour_error(baked) <= 12


def test_a_mesh_that_crashes_xatlas_still_gets_its_texture() -> None:
    """A closed 81,920-face sphere crashes xatlas (jpcy/xatlas#146) in its child process: the
    caller lives on, and the triangles are packed one by one, with a note saying so."""
    sphere, colors = coloured_sphere(6)
    notes: list[str] = []
    baked = bake(sphere.vertices, sphere.faces, colors, on_warning=notes.append)
    if baked.unwrapped_by == "xatlas":  # an xatlas without that bug: nothing to fall back from
        assert notes == []
    else:
        assert notes == [
            "texture: xatlas crashed on this mesh (exit code -11); each triangle was given "
            "its own patch instead"
        ]
    assert len(baked.faces) == len(sphere.faces)
    assert colour_error(baked) <= 16


def test_a_stop_request_ends_the_unwrap() -> None:
    """A stop requested while xatlas works ends the bake with Interrupted at once."""
    sphere, colors = coloured_sphere(5)
    with pytest.raises(Interrupted):
        bake(sphere.vertices, sphere.faces, colors, should_stop=lambda: True)


def test_xatlas_taking_too_long_falls_back_to_triangle_patches() -> None:
    """Past its time limit the unwrap is abandoned for triangle patches, with a note."""
    sphere, colors = coloured_sphere(2)
    notes: list[str] = []
    baked = bake(sphere.vertices, sphere.faces, colors, on_warning=notes.append, timeout=0)
    assert baked.unwrapped_by == "triangles"
    assert notes == [
        "texture: xatlas took longer than 0 s on this mesh; each triangle was given its own "
        "patch instead"
    ]


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
