"""Image → 3D meshes on the tiny Shap-E model: case tables, formats, grid, colours, failures."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trimesh
from diffusers.pipelines.shap_e.renderer import MeshDecoder
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.nn.modules.module import register_module_forward_pre_hook

from daemon.errors import InputError, Interrupted, ModelUnavailable, OutOfMemory
from daemon.generators import GenerationEvents, ImageRequest, ImageSpec, MeshFormat, MeshRequest
from daemon.generators.cubes import MAX_TRIANGLES, case_tables
from daemon.generators.diffusers_backend import DiffusersGenerator
from daemon.generators.mesh import prepare_image
from daemon.values import ModelSource

PICTURE = Image.new("RGB", (48, 40), (180, 60, 40))


def mesh_request(
    model: ModelSource,
    *,
    seed: int = 1,
    resolution: int = 64,
    formats: tuple[MeshFormat, ...] = ("glb",),
    texture: bool = False,
    steps: int = 2,
) -> MeshRequest:
    """Build a request for the red test picture, named ``cat.png`` in messages."""
    return MeshRequest(model, PICTURE, "cat.png", steps, 3.0, seed, resolution, formats, texture)


@dataclass
class Steps:
    """Collects step reports and can ask for a stop after some of them."""

    stop_after: int | None = None
    seen: list[tuple[int, int]] = field(default_factory=list)

    def on_step(self, done: int, total: int) -> None:
        self.seen.append((done, total))

    def events(self) -> GenerationEvents:
        return GenerationEvents(
            on_image=lambda index, image: None,
            on_step=self.on_step,
            should_stop=lambda: self.stop_after is not None and len(self.seen) >= self.stop_after,
        )


def load(data: bytes, file_type: str) -> Any:
    """Load mesh bytes with trimesh as one mesh, exactly as written."""
    return trimesh.load(io.BytesIO(data), file_type=file_type, force="mesh", process=False)


@dataclass
class Stages(Steps):
    """Also notes each mesh stage as it starts; ``stage`` runs out of memory its first ``times``.

    ``sample`` starts at a sampler's first step report, inside the pipeline call; ``surface``
    when the renderer's marching cubes (a MeshDecoder) is about to run, seen by a forward
    pre-hook on every torch module (``watch``): the surface extraction has no callback.
    """

    stage: str = ""
    times: int = 0
    started: list[str] = field(default_factory=list)

    def on_step(self, done: int, total: int) -> None:
        super().on_step(done, total)
        if done == 1:
            self.start("sample")

    def start(self, stage: str) -> None:
        self.started.append(stage)
        if stage == self.stage and self.started.count(stage) <= self.times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Note the surface stages started meanwhile."""

        def before_forward(module: torch.nn.Module, inputs: Any) -> None:
            if isinstance(module, MeshDecoder):
                self.start("surface")

        hook = register_module_forward_pre_hook(before_forward)
        try:
            yield
        finally:
            hook.remove()


# -- marching-cubes tables -------------------------------------------------------------------------


def decoder() -> MeshDecoder:
    """Return diffusers' marching-cubes decoder with the computed tables filled in."""
    cases, masks = case_tables()
    mesh_decoder = MeshDecoder()
    mesh_decoder.cases.copy_(torch.tensor(cases))
    mesh_decoder.masks.copy_(torch.tensor(masks))
    return mesh_decoder


def surface(field_values: torch.Tensor) -> Any:
    """Run the decoder over a field padded with outside values, as Shap-E's renderer does."""
    size = field_values.shape[0] + 2
    padded = -torch.ones(size, size, size)
    padded[1:-1, 1:-1, 1:-1] = field_values
    out = decoder()(padded, torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([2.0, 2.0, 2.0]))
    return trimesh.Trimesh(out.verts.numpy(), out.faces.numpy(), process=False)


def test_case_tables_fit_the_renderers_layout() -> None:
    """256 cases of five triangles; masks mark a prefix; the empty and full cube have none."""
    cases, masks = case_tables()
    assert len(cases) == len(masks) == 256
    assert all(len(row) == MAX_TRIANGLES for row in cases)
    assert all(mask == sorted(mask, reverse=True) for mask in masks)
    assert sum(masks[0]) == sum(masks[255]) == 0
    assert sum(masks[1]) == 1  # one corner inside: one triangle
    assert max(sum(mask) for mask in masks) == MAX_TRIANGLES
    assert {e for row in cases for tri in row for e in tri} == set(range(12))


def test_case_tables_give_closed_outward_surfaces() -> None:
    """A sphere and a random field both become closed, consistently wound, outward surfaces."""
    axis = torch.linspace(-1, 1, 24)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    sphere = surface(0.7 - (x**2 + y**2 + z**2).sqrt())
    generator = torch.Generator().manual_seed(0)
    noise = surface(torch.randn(12, 12, 12, generator=generator) + 0.2)
    for mesh in (sphere, noise):
        assert mesh.is_watertight
        assert mesh.is_winding_consistent
        assert mesh.volume > 0  # positive volume: normals point outward
    scale = 23 / 25  # the padding shrinks the grid's extent, as in the renderer
    assert sphere.volume == pytest.approx(4 / 3 * np.pi * (0.7 * scale) ** 3, rel=0.03)


def test_tiny_mesh_model_carries_the_tables(tiny_models: Path) -> None:
    """The tiny renderer's weights hold the computed tables, unlike a random-init renderer."""
    weights = load_file(
        str(tiny_models / "mesh/shap_e_renderer/diffusion_pytorch_model.safetensors")
    )
    cases, masks = case_tables()
    assert torch.equal(weights["mesh_decoder.cases"], torch.tensor(cases))
    assert torch.equal(weights["mesh_decoder.masks"], torch.tensor(masks))


# -- generating meshes -----------------------------------------------------------------------------


def test_mesh_job_gives_a_glb_and_a_ply(
    generator: DiffusersGenerator, tiny_mesh: ModelSource
) -> None:
    """glb and ply come back as files trimesh loads, with the same vertices and faces."""
    files = generator.generate_mesh(
        mesh_request(tiny_mesh, formats=("glb", "ply")), Steps().events()
    )
    assert sorted(files) == ["glb", "ply"]
    assert files["glb"][:4] == b"glTF"
    glb, ply = load(files["glb"], "glb"), load(files["ply"], "ply")
    assert len(glb.vertices) > 1000
    assert len(glb.faces) > 1000
    assert glb.is_watertight
    assert (len(ply.vertices), len(ply.faces)) == (len(glb.vertices), len(glb.faces))
    assert generator.loaded_models()["mesh"] == tiny_mesh.ref


def test_obj_is_written_as_text(generator: DiffusersGenerator, tiny_mesh: ModelSource) -> None:
    """An obj is plain text with v and f lines that trimesh loads."""
    files = generator.generate_mesh(mesh_request(tiny_mesh, formats=("obj",)), Steps().events())
    text = files["obj"].decode("utf-8")
    assert "\nv " in text
    assert "\nf " in text
    assert len(load(files["obj"], "obj").faces) > 1000


def test_resolution_changes_the_vertex_count(
    generator: DiffusersGenerator, tiny_mesh: ModelSource
) -> None:
    """A finer marching-cubes grid gives a mesh of more vertices of the same size."""
    coarse = load(generator.generate_mesh(mesh_request(tiny_mesh), Steps().events())["glb"], "glb")
    fine = load(
        generator.generate_mesh(mesh_request(tiny_mesh, resolution=96), Steps().events())["glb"],
        "glb",
    )
    assert len(fine.vertices) > 1.8 * len(coarse.vertices)
    assert fine.volume == pytest.approx(coarse.volume, rel=0.1)


def test_texture_bakes_the_colours_and_the_ply_keeps_them_per_vertex(
    generator: DiffusersGenerator, tiny_mesh: ModelSource
) -> None:
    """With texture the GLB carries UVs and a varied colour texture and the PLY varied vertex
    colours; without, the files carry no colour at all."""
    textured = generator.generate_mesh(
        mesh_request(tiny_mesh, formats=("glb", "ply"), texture=True), Steps().events()
    )
    plain = generator.generate_mesh(
        mesh_request(tiny_mesh, formats=("glb", "ply")), Steps().events()
    )
    glb = load(textured["glb"], "glb")
    assert glb.visual.kind == "texture" and glb.visual.uv.shape == (len(glb.vertices), 2)
    texels = np.asarray(glb.visual.material.baseColorTexture.convert("RGB"), dtype=int)
    assert texels.reshape(-1, 3).std(axis=0).max() > 5
    colours = load(textured["ply"], "ply").visual.vertex_colors[:, :3].astype(int)
    assert colours.std(axis=0).max() > 5
    for fmt in ("glb", "ply"):
        assert load(plain[fmt], fmt).visual.kind is None, fmt
    assert b"TEXCOORD_0" in textured["glb"] and b"TEXCOORD_0" not in plain["glb"]


def test_same_seed_gives_the_same_mesh(
    generator: DiffusersGenerator, tiny_mesh: ModelSource
) -> None:
    """The same image and seed give byte-identical files; another seed another shape."""
    first = generator.generate_mesh(mesh_request(tiny_mesh, seed=5), Steps().events())
    again = generator.generate_mesh(mesh_request(tiny_mesh, seed=5), Steps().events())
    other = generator.generate_mesh(mesh_request(tiny_mesh, seed=6), Steps().events())
    assert first == again
    assert len(load(other["glb"], "glb").vertices) != len(load(first["glb"], "glb").vertices)


def test_steps_are_reported_with_the_surface_last(
    generator: DiffusersGenerator, tiny_mesh: ModelSource
) -> None:
    """Each sampler step is reported, then the surface extraction as the last step."""
    steps = Steps()
    generator.generate_mesh(mesh_request(tiny_mesh, steps=3), steps.events())
    assert steps.seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_stop_request_interrupts_the_sampler(
    generator: DiffusersGenerator, tiny_mesh: ModelSource
) -> None:
    """should_stop turning True after the first step raises Interrupted before the surface."""
    steps = Steps(stop_after=1)
    with pytest.raises(Interrupted):
        generator.generate_mesh(mesh_request(tiny_mesh, steps=3), steps.events())
    assert steps.seen == [(1, 4)]


def test_transparent_background_becomes_white() -> None:
    """Transparent pixels turn white, as Shap-E expects; opaque ones keep their colour."""
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    image.putpixel((0, 0), (10, 200, 30, 255))
    flat = prepare_image(image)
    assert flat.mode == "RGB"
    assert flat.getpixel((0, 0)) == (10, 200, 30)
    assert flat.getpixel((3, 1)) == (255, 255, 255)


# -- failures --------------------------------------------------------------------------------------


def test_no_surface_is_an_input_error(tiny_models: Path, tmp_path: Path) -> None:
    """A model whose surface function is negative everywhere fails naming the image."""
    folder = tmp_path / "mesh"
    shutil.copytree(tiny_models / "mesh", folder)
    weights_file = folder / "shap_e_renderer/diffusion_pytorch_model.safetensors"
    weights = load_file(str(weights_file))
    weights["mlp.mlp.6.bias"][0] = -1000.0
    save_file(weights, str(weights_file))
    generator = DiffusersGenerator("cpu", threads=1)
    with pytest.raises(InputError) as caught:
        generator.generate_mesh(
            mesh_request(ModelSource("mesh", "folder", str(folder))), Steps().events()
        )
    assert str(caught.value) == "cat.png: the model produced no surface for this image"


def test_out_of_memory_once_is_retried(
    generator: DiffusersGenerator, tiny_mesh: ModelSource
) -> None:
    """A surface extraction that runs out of memory once is run again and gives the same mesh."""
    expected = generator.generate_mesh(mesh_request(tiny_mesh), Steps().events())
    stages = Stages(stage="surface", times=1)
    with stages.watch():
        files = generator.generate_mesh(mesh_request(tiny_mesh), stages.events())
    assert stages.started == ["sample", "surface", "surface"]
    assert files == expected
    assert stages.seen == [(1, 3), (2, 3), (3, 3)]


def test_out_of_memory_in_the_sampler_once_is_retried(
    generator: DiffusersGenerator, tiny_mesh: ModelSource
) -> None:
    """A sampler that runs out of memory once samples again and gives the same mesh."""
    expected = generator.generate_mesh(mesh_request(tiny_mesh), Steps().events())
    stages = Stages(stage="sample", times=1)
    with stages.watch():
        files = generator.generate_mesh(mesh_request(tiny_mesh), stages.events())
    assert stages.started == ["sample", "sample", "surface"]
    assert files == expected


def test_out_of_memory_twice_raises_out_of_memory(tiny_mesh: ModelSource) -> None:
    """Out of memory again after freeing memory ends in OutOfMemory with what to change."""
    generator = DiffusersGenerator("cpu", threads=1)
    stages = Stages(stage="surface", times=2)
    with stages.watch(), pytest.raises(OutOfMemory) as caught:
        generator.generate_mesh(mesh_request(tiny_mesh), stages.events())
    assert str(caught.value) == (
        "out of memory on cpu for a mesh at resolution 64, even after freeing memory: "
        "lower mesh_resolution"
    )
    assert stages.started == ["sample", "surface", "surface"]


def test_image_model_as_mesh_model_is_unavailable(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Pointing the mesh alias at a Stable Diffusion folder says what it is instead."""
    source = ModelSource("mesh", "folder", tiny_sd.ref)
    with pytest.raises(ModelUnavailable) as caught:
        generator.generate_mesh(mesh_request(source), Steps().events())
    assert str(caught.value) == (
        f'model "mesh" ({tiny_sd.ref}) is a StableDiffusionPipeline, not a Shap-E image-to-3D '
        "pipeline (ShapEImg2ImgPipeline)"
    )


def test_single_file_mesh_model_is_unavailable(generator: DiffusersGenerator) -> None:
    """A .safetensors file cannot be a mesh model."""
    source = ModelSource("mesh", "file", "/models/shap-e.safetensors")
    with pytest.raises(ModelUnavailable) as caught:
        generator.generate_mesh(mesh_request(source), Steps().events())
    assert str(caught.value) == (
        'model "mesh" (/models/shap-e.safetensors) is a single file; a mesh model is a diffusers '
        "folder or a hub id (e.g. openai/shap-e-img2img)"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resolution": 32}, "parameters: mesh_resolution must be 64..512, got 32"),
        (
            {"formats": ("stl",)},
            'parameters: formats must be a list of "glb", "ply", "obj", got ["stl"]',
        ),
        ({"formats": ()}, 'parameters: formats must be a list of "glb", "ply", "obj", got []'),
    ],
)
def test_bad_mesh_parameters_are_input_errors(
    generator: DiffusersGenerator, tiny_mesh: ModelSource, changes: dict[str, Any], message: str
) -> None:
    """A grid outside 64..512 or an unknown format is refused before any model loads."""
    request = mesh_request(tiny_mesh, **changes)
    with pytest.raises(InputError) as caught:
        generator.generate_mesh(request, Steps().events())
    assert str(caught.value) == message


def test_image_and_mesh_models_stay_resident_together(
    generator: DiffusersGenerator, tiny_sd: ModelSource, tiny_mesh: ModelSource
) -> None:
    """A mesh job does not unload the image model, and unload() drops both."""
    spec = ImageSpec(0, "a cat", "", 1, 1, 7.5, 0.6)
    generator.generate_images(
        ImageRequest("text2image", tiny_sd, 64, 64, (spec,)), Steps().events()
    )
    generator.generate_mesh(mesh_request(tiny_mesh), Steps().events())
    assert generator.loaded_models() == {"default": tiny_sd.ref, "mesh": tiny_mesh.ref}
    generator.unload()
    assert generator.loaded_models() == {}
