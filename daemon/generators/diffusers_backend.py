"""The diffusers generator backend: images, tweens and meshes on resident pipelines.

Which pipelines stay in memory, and how they are loaded, is ``residents`` and ``loading``;
the mesh and tween specifics are ``mesh`` and ``tween``. This module runs the requests:
batches, progress, stop requests and the out-of-memory fallbacks. torch and diffusers are
imported on first use, never at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from daemon.errors import InputError, Interrupted, OutOfMemory
from daemon.generators import (
    MESH_FORMATS,
    MESH_RESOLUTIONS,
    TWEEN_DEPTHS,
    GenerationEvents,
    ImageRequest,
    ImageSpec,
    MeshRequest,
    TweenRequest,
)
from daemon.generators import mesh as meshes
from daemon.generators import tween as tweens
from daemon.generators.conditioning import prompt_kwargs, weighs_prompts
from daemon.generators.loading import MemorySavers, backend_versions, is_out_of_memory
from daemon.generators.residents import ImageModel, Residents
from daemon.generators.subdivision import plan_levels
from daemon.values import Task

__all__ = ["DiffusersGenerator", "backend_versions", "is_out_of_memory"]

_Item = TypeVar("_Item")


@dataclass
class _Progress:
    """Denoising steps across a whole request, reported through ``events.on_step``.

    The total is the steps done, those left in the running call and those planned for the
    batches not started; out-of-memory retries make it grow.
    """

    events: GenerationEvents
    waiting: int
    done: int = 0

    def step(self, index: int, count: int) -> None:
        """Count step ``index`` (from 0) of a pipeline call of ``count`` steps."""
        self.done += 1
        self.events.on_call_step(index + 1, count)
        self.events.on_step(self.done, self.done + count - index - 1 + self.waiting)

    def callback(self) -> Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]:
        """Return a ``callback_on_step_end`` that counts steps and honours stop requests."""

        def on_step_end(
            pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            self.step(step, int(pipeline.num_timesteps))
            if self.events.should_stop():
                raise Interrupted("stop requested")
            return tensors

        return on_step_end


class DiffusersGenerator:
    """Generate images, tweens and meshes with diffusers pipelines that stay resident."""

    def __init__(
        self,
        device: str = "auto",
        *,
        cpu_offload: bool = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        attention_slicing: bool = False,
        threads: int | None = None,
    ) -> None:
        savers = MemorySavers(cpu_offload, vae_slicing, vae_tiling, attention_slicing)
        self._models = Residents(device, threads, savers)

    # -- device and resident models -----------------------------------------------------------

    def device_name(self) -> str:
        """Describe the device, e.g. ``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
        return self._models.device_name()

    def loaded_models(self) -> Mapping[str, str]:
        """Return alias → source of the pipelines now resident."""
        return self._models.loaded()

    def unload(self) -> None:
        """Drop every loaded pipeline and release accelerator memory."""
        self._models.unload()

    # -- shared machinery -------------------------------------------------------------------

    def _with_fallbacks(
        self,
        model: ImageModel,
        items: list[_Item],
        attempt: Callable[[list[_Item]], bool],
        what: str,
    ) -> None:
        """Run ``attempt(items)``; out of memory, one item at a time, then with every saver on.

        ``attempt`` returns False, memory freed, when it ran out of memory.
        """
        if attempt(items):
            return
        for item in items:
            if len(items) > 1 and attempt([item]):
                continue
            model.enable_every_saver(self._models.device())
            if not attempt([item]):
                raise OutOfMemory(
                    f"out of memory on {self.device_name()} for {what}, even with every memory "
                    "saver on"
                )

    # -- images -------------------------------------------------------------------------------

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """Make every image of ``request`` in batches, reporting each through ``events``."""
        if request.task != Task.text2image and request.init_image is None:
            raise ValueError(f"{request.task} needs an init_image")
        if request.task == Task.inpaint and request.mask_image is None:
            raise ValueError("inpaint needs a mask_image")
        if request.task != Task.text2image:
            for spec in request.images:
                _check_strength(request.task, spec.steps, spec.strength)
        model = self._models.image_model(request.model)
        events.on_ready()
        model.use_lora(request.lora)
        pipe = model.pipe(request.task)
        pairs = [(spec.prompt, spec.negative_prompt) for spec in request.images]
        self._warn_truncation(pipe, pairs, events)
        batches = list(_batches(request))
        progress = _Progress(events, sum(_planned_steps(request.task, b[0]) for b in batches))
        what = f"one {request.width}x{request.height} image"
        for batch in batches:
            if events.should_stop():
                raise Interrupted("stop requested")
            progress.waiting -= _planned_steps(request.task, batch[0])
            self._with_fallbacks(
                model,
                batch,
                lambda specs: self._try_images(model, request, specs, progress),
                what,
            )

    def _try_images(
        self,
        model: ImageModel,
        request: ImageRequest,
        batch: list[ImageSpec],
        progress: _Progress,
    ) -> bool:
        """Make and deliver ``batch``; return False, memory freed, if it ran out of memory."""
        # Set for every batch: an out-of-memory fallback may have derived the pipelines anew.
        pipe = model.use_sampler(request.task, request.sampler)
        try:
            images = list(pipe(**_image_kwargs(pipe, request, batch, progress)).images)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._models.make_room("images")
            return False
        for spec, image in zip(batch, images, strict=True):
            progress.events.on_image(spec.index, image)
        return True

    def _warn_truncation(
        self, pipe: Any, pairs: Iterable[tuple[str, str]], events: GenerationEvents
    ) -> None:
        """Warn once per prompt the text encoder will cut short (pipelines compel does not
        encode for truncate)."""
        tokenizer = getattr(pipe, "tokenizer", None)
        if tokenizer is None or weighs_prompts(pipe):
            return
        limit = int(tokenizer.model_max_length)
        seen: set[tuple[str, str]] = set()
        for prompt, negative_prompt in pairs:
            for kind, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
                if (kind, text) in seen:
                    continue
                seen.add((kind, text))
                ids = tokenizer(text, truncation=False, verbose=False).input_ids
                if len(ids) > limit:
                    dropped = " ".join(tokenizer.decode(ids[limit - 1 : -1]).split())
                    if len(dropped) > 60:
                        dropped = dropped[:57] + "..."
                    events.on_warning(f"{kind} truncated to {limit} tokens: dropped {dropped!r}")

    # -- tweens -------------------------------------------------------------------------------

    def generate_tween(self, request: TweenRequest, events: GenerationEvents) -> None:
        """Make the missing frames of ``request`` level by level, one batch per level."""
        if request.depth not in TWEEN_DEPTHS:
            raise InputError.bad_value("parameters", "depth", "1..6", request.depth)
        _check_strength("tweens", request.steps, request.strength)
        levels = plan_levels(request.depth, request.times_needed, request.existing)
        if not levels:
            return
        model = self._models.image_model(request.model)
        events.on_ready()
        model.use_lora(request.lora)
        pipe = model.pipe(Task.variations)
        self._warn_truncation(pipe, [(request.prompt, request.negative_prompt)], events)
        made = [t for frames in levels for t in frames]
        cache = tweens.LatentCache(tweens.known_frames(request, made))
        size = max(1, request.max_batch)
        batches = [list(lvl[i : i + size]) for lvl in levels for i in range(0, len(lvl), size)]
        planned = _img2img_steps(request.steps, request.strength)
        progress = _Progress(events, planned * len(batches))
        what = f"one {request.width}x{request.height} tween frame"
        for batch in batches:
            if events.should_stop():
                raise Interrupted("stop requested")
            progress.waiting -= planned
            self._with_fallbacks(
                model,
                batch,
                lambda frames: self._try_frames(model, request, frames, cache, progress),
                what,
            )

    def _try_frames(
        self,
        model: ImageModel,
        request: TweenRequest,
        frames: list[float],
        cache: tweens.LatentCache,
        progress: _Progress,
    ) -> bool:
        """Make and deliver tween ``frames``; return False, memory freed, if out of memory."""
        pipe = model.use_sampler(Task.variations, request.sampler)
        try:
            kwargs = tweens.batch_kwargs(request, frames, cache, pipe, progress.callback())
            images = list(pipe(**kwargs).images)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._models.make_room("images")
            return False
        for t, image in zip(frames, images, strict=True):
            cache.add(t, image)
            progress.events.on_frame(t, image)
        return True

    # -- meshes -------------------------------------------------------------------------------

    def generate_mesh(self, request: MeshRequest, events: GenerationEvents) -> dict[str, bytes]:
        """Make the mesh of ``request``; return format → file bytes."""
        if request.resolution not in MESH_RESOLUTIONS:
            raise InputError.bad_value(
                "parameters", "mesh_resolution", "64..512", request.resolution
            )
        if not request.formats or any(f not in MESH_FORMATS for f in request.formats):
            raise InputError.bad_value(
                "parameters", "formats", 'a list of "glb", "ply", "obj"', list(request.formats)
            )
        pipe = self._models.mesh_model(request.model).pipe
        events.on_ready()

        def retry_once(stage: str, run: Callable[[], Any]) -> Any:
            for attempt in (1, 2):
                try:
                    return run()
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    self._models.make_room("mesh")
                    if attempt == 2:
                        raise OutOfMemory(
                            f"out of memory on {self.device_name()} for a mesh at resolution "
                            f"{request.resolution}, even after freeing memory: lower "
                            "mesh_resolution"
                        ) from exc
            raise AssertionError("unreachable")

        return meshes.make_mesh(pipe, request, events, self._models.device(), retry_once)


def _check_strength(task: str, steps: int, strength: float) -> None:
    """Refuse a strength that leaves img2img no denoising step."""
    if int(steps * strength) < 1:
        raise InputError.bad_value(
            "parameters",
            "strength",
            f"at least 1/steps ({1 / steps:.3g} with {steps} steps) for {task}",
            strength,
        )


def _img2img_steps(steps: int, strength: float) -> int:
    return min(int(steps * strength), steps)


def _planned_steps(task: Task, spec: ImageSpec) -> int:
    """Denoising steps one pipeline call takes (img2img and inpaint skip the first part)."""
    if task == Task.text2image:
        return spec.steps
    return _img2img_steps(spec.steps, spec.strength)


def _batches(request: ImageRequest) -> Iterator[list[ImageSpec]]:
    """Group images of identical sampler values, in order of first appearance, max_batch each."""
    groups: dict[tuple[int, float, float], list[ImageSpec]] = {}
    for spec in request.images:
        groups.setdefault((spec.steps, spec.guidance, spec.strength), []).append(spec)
    size = max(1, request.max_batch)
    for specs in groups.values():
        for start in range(0, len(specs), size):
            yield specs[start : start + size]


def _image_kwargs(
    pipe: Any, request: ImageRequest, batch: list[ImageSpec], progress: _Progress
) -> dict[str, Any]:
    """Return the pipeline call for one batch of images with identical sampler values."""
    import torch
    from PIL import Image

    first = batch[0]
    kwargs: dict[str, Any] = {
        **prompt_kwargs(
            pipe, [spec.prompt for spec in batch], [spec.negative_prompt for spec in batch]
        ),
        # CPU generators: the same seed gives the same starting noise on every device.
        "generator": [torch.Generator("cpu").manual_seed(spec.seed) for spec in batch],
        "num_inference_steps": first.steps,
        "guidance_scale": first.guidance,
        "callback_on_step_end": progress.callback(),
    }
    size = (request.width, request.height)
    if request.task != Task.variations:  # img2img takes its size from the image
        kwargs["width"], kwargs["height"] = size
    if request.init_image is not None and request.task != Task.text2image:
        kwargs["image"] = request.init_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        kwargs["strength"] = first.strength
    if request.mask_image is not None and request.task == Task.inpaint:
        kwargs["mask_image"] = request.mask_image.convert("L").resize(
            size, Image.Resampling.NEAREST
        )
    return kwargs
