"""Image → 3D mesh with a Shap-E pipeline: sample the latent, extract the surface, export it.

``ShapEImg2ImgPipeline(output_type="mesh")`` always extracts at diffusers' default 128-point
grid; the grid is a parameter of the renderer's ``decode_to_mesh`` only. So the pipeline is
asked for the latent and the surface is extracted here at the requested resolution. torch,
diffusers and trimesh are imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from daemon.errors import InputError, Interrupted, NoSurface
from daemon.generators import GenerationEvents, MeshFormat, MeshRequest

if TYPE_CHECKING:
    import torch
    from PIL import Image

NO_SURFACE = "the model produced no surface for this image"
# Field points per MLP call: large calls keep an accelerator busy; on a CPU they only cost memory.
_QUERY_BATCH = {"cpu": 16384, "accelerator": 131072}


def prepare_image(image: Image.Image) -> Image.Image:
    """Return ``image`` as RGB, transparent parts white (Shap-E expects a plain background)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def sample_latent(pipe: Any, request: MeshRequest, events: GenerationEvents) -> torch.Tensor:
    """Run the Shap-E prior; return the latent of the one object, reporting sampler steps."""
    import torch

    total = request.steps + 1  # the surface extraction counts as the last step

    def report(timesteps: Iterable[Any]) -> Iterator[Any]:
        # Heun evaluates twice per step but once for the last: evaluations 0, 2, 4, ...
        # each complete one step of the schedule.
        for index, timestep in enumerate(timesteps):
            yield timestep
            if index % 2 == 0:
                events.on_step(index // 2 + 1, total)
            if events.should_stop():
                raise Interrupted("stop requested")

    # The pipeline has no step callback; its progress bar wraps the sampling loop.
    pipe.progress_bar = report
    try:
        output = pipe(
            prepare_image(request.image),
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            # A CPU generator: the same seed gives the same starting noise on every device.
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="latent",
        )
    finally:
        del pipe.progress_bar  # back to the class's, which holds no reference to these events
    latent: torch.Tensor = output.images[0]
    return latent


def extract_surface(pipe: Any, latent: torch.Tensor, resolution: int, device: str) -> Any:
    """Return the renderer's MeshDecoderOutput for ``latent`` on a ``resolution``³ grid.

    Raises NoSurface when there is none.
    """
    renderer = pipe.shap_e_renderer

    def refuse_empty(module: Any, inputs: Any, output: Any) -> None:
        # decode_to_mesh fails obscurely when asked to colour zero vertices; stop before.
        if output.faces.shape[0] == 0:
            raise NoSurface

    hook = renderer.mesh_decoder.register_forward_hook(refuse_empty)
    try:
        return renderer.decode_to_mesh(
            latent[None],
            device,
            grid_size=resolution,
            query_batch_size=_QUERY_BATCH["cpu" if device == "cpu" else "accelerator"],
        )
    finally:
        hook.remove()


def to_trimesh(decoded: Any, texture: bool) -> Any:
    """Convert a MeshDecoderOutput into an upright trimesh.Trimesh (glTF is y-up, Shap-E z-up)."""
    import numpy as np
    import trimesh

    colors = None
    if texture:
        channels = np.stack([decoded.vertex_channels[c].cpu().numpy() for c in "RGB"], axis=1)
        colors = np.clip(np.round(channels * 255), 0, 255).astype(np.uint8)
    mesh = trimesh.Trimesh(
        vertices=decoded.verts.float().cpu().numpy(),
        faces=decoded.faces.cpu().numpy(),
        vertex_colors=colors,
        # Merging vertices that happen to coincide would make the closed surface non-manifold.
        process=False,
    )
    # Shap-E is z-up, glTF y-up: -90° about x, then 180° about y, as diffusers' Shap-E guide does.
    upright = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    mesh.apply_transform(upright)
    return mesh


def export(
    mesh: Any,
    formats: Iterable[MeshFormat],
    *,
    texture: bool = False,
    name: str = "mesh",
    events: GenerationEvents | None = None,
) -> dict[str, bytes]:
    """Return format → file bytes: glb (glTF binary), ply (binary) and obj (text).

    With ``texture`` (the mesh carries vertex colours), the colours are baked into a texture
    (``texture.bake``): the GLB gets TEXCOORD_0 and a baseColorTexture; the OBJ comes with
    ``mtl`` (``NAME.mtl``) and ``png`` (``NAME-texture.png``, which the MTL names); the PLY
    keeps its vertex colours. ``events``: the bake honours stop requests and reports its
    notes (a fallback) as warnings.
    """
    formats = tuple(formats)
    files: dict[str, bytes] = {}
    textured = None
    if texture and ("glb" in formats or "obj" in formats):
        from daemon.generators.texture import bake, textured_mesh

        colors = mesh.visual.vertex_colors[:, :3]
        events = events or GenerationEvents(on_image=lambda index, image: None)
        baked = bake(
            mesh.vertices,
            mesh.faces,
            colors,
            should_stop=events.should_stop,
            on_warning=events.on_warning,
        )
        textured = textured_mesh(baked, f"{name}-texture")
    for fmt in formats:
        if textured is not None and fmt == "obj":
            obj: Any = importlib.import_module("trimesh.exchange.obj")  # untyped
            text, extra = obj.export_obj(
                textured, include_texture=True, return_texture=True, mtl_name=f"{name}.mtl"
            )
            files["obj"] = text.encode("utf-8")
            files["mtl"] = bytes(extra[f"{name}.mtl"])
            files["png"] = bytes(extra[f"{name}-texture.png"])
            continue
        source = textured if textured is not None and fmt == "glb" else mesh
        data = source.export(file_type=fmt)
        files[fmt] = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return files


def make_mesh(
    pipe: Any,
    request: MeshRequest,
    events: GenerationEvents,
    device: str,
    run_stage: Callable[[str, Callable[[], Any]], Any],
) -> dict[str, bytes]:
    """Make the files of ``request``; each stage runs through ``run_stage(name, stage)``.

    ``run_stage`` is where the caller handles running out of memory.
    """
    latent = run_stage("sample", lambda: sample_latent(pipe, request, events))
    if events.should_stop():
        raise Interrupted("stop requested")
    try:
        decoded = run_stage(
            "surface", lambda: extract_surface(pipe, latent, request.resolution, device)
        )
    except NoSurface:
        raise InputError(request.display, NO_SURFACE) from None
    events.on_step(request.steps + 1, request.steps + 1)
    mesh = to_trimesh(decoded, request.texture)
    return export(mesh, request.formats, texture=request.texture, name=request.name, events=events)
