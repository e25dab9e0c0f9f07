"""The diffusers generator backend: resident pipelines for text2image, variations and inpaint.

One base pipeline per model is loaded from disk (the local HF cache, a diffusers folder or a
single .safetensors file); img2img and inpaint pipelines are derived from it with ``from_pipe``
so the weights exist once. torch and diffusers are imported on first use, never at import.
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.errors import ConfigError, InputError, Interrupted, ModelUnavailable, OutOfMemory
from daemon.generators import (
    GenerationEvents,
    ImageRequest,
    ImageSpec,
    ImageTask,
    LoraSource,
    ModelSource,
)
from daemon.generators.fetch import locate_configs, locate_lora, locate_model, locate_single_file

if TYPE_CHECKING:
    import torch
    from PIL import Image


def backend_versions() -> dict[str, str]:
    """Return the installed diffusers, torch and transformers versions, without importing them."""
    versions: dict[str, str] = {}
    for name in ("diffusers", "torch", "transformers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def is_out_of_memory(exc: BaseException) -> bool:
    """Tell whether ``exc`` is an accelerator or host out-of-memory error."""
    # By class name, so that telling does not import torch (torch.OutOfMemoryError).
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _diffusers(submodule: str = "") -> Any:
    """Import diffusers (or one of its submodules) on first use; it is only partly typed."""
    return importlib.import_module("diffusers" + (f".{submodule}" if submodule else ""))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass
class _Resident:
    """The pipelines of the one model kept in memory, keyed by task."""

    ref: str
    base: Any
    pipes: dict[ImageTask, Any]
    offloaded: bool  # model CPU offload hooks installed (CUDA only)
    aliases: dict[str, str] = field(default_factory=dict)
    adapters: dict[tuple[str, str], str] = field(default_factory=dict)  # (alias, path) → name


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
        self.events.on_step(self.done, self.done + count - index - 1 + self.waiting)


class DiffusersGenerator:
    """Generate images with diffusers pipelines that stay resident between jobs."""

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
        self._requested_device = device
        self._cpu_offload = cpu_offload
        self._vae_slicing = vae_slicing
        self._vae_tiling = vae_tiling
        self._attention_slicing = attention_slicing
        self._threads = threads
        self._device: str | None = None
        self._resident: _Resident | None = None

    # -- device ---------------------------------------------------------------------------

    def _torch_device(self) -> str:
        """Resolve the device on first use (importing torch is slow; the CLI must start fast)."""
        if self._device is not None:
            return self._device
        import torch

        if self._threads is not None:
            torch.set_num_threads(self._threads)
        wanted = self._requested_device
        if wanted == "auto":
            if torch.cuda.is_available():
                wanted = "cuda:0"
            elif torch.backends.mps.is_available():
                wanted = "mps"
            else:
                wanted = "cpu"
        elif wanted == "cuda":
            wanted = "cuda:0"
        if wanted.startswith("cuda"):
            index = wanted.partition(":")[2]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise ConfigError(
                    f'device "{self._requested_device}" is not available: torch sees '
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )
        elif wanted == "mps" and not torch.backends.mps.is_available():
            raise ConfigError('device "mps" is not available on this machine')
        elif wanted != "cpu":
            raise ConfigError(
                f'device must be auto, cpu, cuda, cuda:N or mps, got "{self._requested_device}"'
            )
        self._device = wanted
        return wanted

    def _dtype(self) -> torch.dtype:
        import torch

        # fp16 halves memory on CUDA; MPS and CPU stay in fp32, where fp16 is slow or unstable.
        return torch.float16 if self._torch_device().startswith("cuda") else torch.float32

    def device_name(self) -> str:
        """Describe the device, e.g. ``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
        device = self._torch_device()
        if device.startswith("cuda"):
            import torch

            return f"{device} ({torch.cuda.get_device_name(device)})"
        return device

    # -- loading --------------------------------------------------------------------------

    def loaded_models(self) -> Mapping[str, str]:
        """Return alias → source of the pipelines now resident."""
        return dict(self._resident.aliases) if self._resident else {}

    def unload(self) -> None:
        """Drop every loaded pipeline and release accelerator memory."""
        self._resident = None
        self._free_memory()

    def _free_memory(self) -> None:
        gc.collect()
        if self._device is None:
            return
        import torch

        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
        elif self._device == "mps":
            torch.mps.empty_cache()

    def _load_base(self, source: ModelSource) -> Any:
        """Load the text-to-image pipeline of ``source`` onto the device."""
        diffusers = _diffusers()
        transformers_logging = importlib.import_module("transformers.utils.logging")
        # Loading bars and notes would litter a daemon's log; failures raise anyway.
        for logging in (diffusers.utils.logging, transformers_logging):
            logging.set_verbosity_error()
            logging.disable_progress_bar()
        label = f'model "{source.alias}" ({source.ref})'
        options: dict[str, Any] = {
            "dtype": self._dtype(),
            "use_safetensors": True,
            "local_files_only": True,
        }
        try:
            if source.kind == "file":
                pipe = self._load_single_file(source, options)
            else:
                pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
                    str(locate_model(source)), **options
                )
        except ModelUnavailable:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelUnavailable(f"{label} could not be loaded: {_first_line(exc)}") from exc
        pipe.set_progress_bar_config(disable=True)
        device = self._torch_device()
        if self._cpu_offload and device.startswith("cuda"):
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        self._apply_savers(pipe, self._vae_slicing, self._vae_tiling, self._attention_slicing)
        return pipe

    def _load_single_file(self, source: ModelSource, options: dict[str, Any]) -> Any:
        """Load a single-file checkpoint with its architecture's configs from the local cache."""
        from safetensors import safe_open

        path = locate_single_file(source)
        # Only key names and shapes tell the architecture: read the header, not the weights.
        with safe_open(str(path), framework="pt") as handle:
            names = handle.keys()
            shapes = {name: _Shape(handle.get_slice(name).get_shape()) for name in names}
        single_file_utils = _diffusers("loaders.single_file_utils")
        repo = single_file_utils.fetch_diffusers_config(shapes)["pretrained_model_name_or_path"]
        # Located here because diffusers itself would go online for missing configs.
        config = locate_configs(source, str(repo))
        index = json.loads((config / "model_index.json").read_text(encoding="utf-8"))
        pipeline_class = getattr(_diffusers(), str(index["_class_name"]), None)
        if pipeline_class is None or not hasattr(pipeline_class, "from_single_file"):
            raise ModelUnavailable(
                f'model "{source.alias}" ({source.ref}): {index["_class_name"]} cannot load '
                "single-file checkpoints"
            )
        return pipeline_class.from_single_file(str(path), config=str(config), **options)

    @staticmethod
    def _apply_savers(pipe: Any, vae_slicing: bool, vae_tiling: bool, attention: bool) -> None:
        if vae_slicing:
            pipe.vae.enable_slicing()
        if vae_tiling:
            pipe.vae.enable_tiling()
        if attention:
            pipe.enable_attention_slicing()

    def _resident_for(self, source: ModelSource) -> _Resident:
        """Return the resident pipelines of ``source``, replacing any other model's."""
        if self._resident is None or self._resident.ref != source.ref:
            # One resident model at a time keeps accelerator memory bounded.
            self.unload()
            try:
                base = self._load_base(source)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self._free_memory()
                raise OutOfMemory(
                    f'model "{source.alias}" ({source.ref}) does not fit in memory on '
                    f"{self.device_name()}"
                ) from exc
            offloaded = self._cpu_offload and self._torch_device().startswith("cuda")
            self._resident = _Resident(source.ref, base, {"text2image": base}, offloaded)
        self._resident.aliases[source.alias] = source.ref
        return self._resident

    def _pipe_for(self, resident: _Resident, task: ImageTask) -> Any:
        """Derive the img2img or inpaint pipeline from the base one, sharing its weights."""
        if task not in resident.pipes:
            diffusers = _diffusers()
            auto = (
                diffusers.AutoPipelineForImage2Image
                if task == "variations"
                else diffusers.AutoPipelineForInpainting
            )
            base = resident.base
            # from_pipe shares the scheduler object, whose state is per call; and it casts the
            # shared weights to fp32 unless told the dtype.
            scheduler = type(base.scheduler).from_config(base.scheduler.config)
            pipe = auto.from_pipe(base, scheduler=scheduler, dtype=base.dtype)
            pipe.set_progress_bar_config(disable=True)
            resident.pipes[task] = pipe
        return resident.pipes[task]

    def _use_lora(self, resident: _Resident, lora: LoraSource | None) -> None:
        """Activate ``lora`` on the shared components, or switch every adapter off."""
        base = resident.base
        if lora is None:
            if resident.adapters:
                base.disable_lora()
            return
        key = (lora.alias, lora.path)
        if key not in resident.adapters:
            path = locate_lora(lora)
            name = f"lora{len(resident.adapters)}_{re.sub(r'[^0-9A-Za-z_]', '_', lora.alias)}"
            try:
                base.load_lora_weights(str(path), adapter_name=name)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                if is_out_of_memory(exc):
                    raise
                raise ModelUnavailable(
                    f'LoRA "{lora.alias}" ({lora.path}) does not fit this model: {_first_line(exc)}'
                ) from exc
            resident.adapters[key] = name
        base.enable_lora()
        base.set_adapters([resident.adapters[key]], adapter_weights=[lora.scale])

    # -- generation -----------------------------------------------------------------------

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """Make every image of ``request`` in batches, reporting each through ``events``."""
        if request.task != "text2image" and request.init_image is None:
            raise ValueError(f"{request.task} needs an init_image")
        if request.task == "inpaint" and request.mask_image is None:
            raise ValueError("inpaint needs a mask_image")
        for spec in request.images:
            if request.task != "text2image" and int(spec.steps * spec.strength) < 1:
                raise InputError.bad_value(
                    "parameters",
                    "strength",
                    f"at least 1/steps ({1 / spec.steps:.3g} with {spec.steps} steps) for "
                    f"{request.task}",
                    spec.strength,
                )
        resident = self._resident_for(request.model)
        self._use_lora(resident, request.lora)
        pipe = self._pipe_for(resident, request.task)
        self._warn_truncation(pipe, request, events)
        batches = list(_batches(request))
        progress = _Progress(events, sum(_planned_steps(request.task, b[0]) for b in batches))
        for batch in batches:
            if events.should_stop():
                raise Interrupted("stop requested")
            progress.waiting -= _planned_steps(request.task, batch[0])
            self._generate_batch(resident, request, batch, progress)

    def _generate_batch(
        self,
        resident: _Resident,
        request: ImageRequest,
        batch: list[ImageSpec],
        progress: _Progress,
    ) -> None:
        """Run one batch; on out-of-memory retry one image at a time, then with every saver on."""
        if self._try_batch(resident, request, batch, progress):
            return
        for spec in batch:
            if len(batch) > 1 and self._try_batch(resident, request, [spec], progress):
                continue
            self._enable_every_saver(resident)
            if not self._try_batch(resident, request, [spec], progress):
                raise OutOfMemory(
                    f"out of memory on {self.device_name()} for one {request.width}x"
                    f"{request.height} image, even with every memory saver on"
                )

    def _try_batch(
        self,
        resident: _Resident,
        request: ImageRequest,
        batch: list[ImageSpec],
        progress: _Progress,
    ) -> bool:
        """Make and deliver ``batch``; return False, memory freed, if it ran out of memory."""
        pipe = self._pipe_for(resident, request.task)
        try:
            images = self._run_pipeline(pipe, self._pipeline_kwargs(request, batch, progress))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._free_memory()
            return False
        for spec, image in zip(batch, images, strict=True):
            progress.events.on_image(spec.index, image)
        return True

    def _enable_every_saver(self, resident: _Resident) -> None:
        """Switch every memory saver on for the resident model, until it is unloaded."""
        self._apply_savers(resident.base, True, True, True)
        if self._torch_device().startswith("cuda") and not resident.offloaded:
            resident.base.enable_model_cpu_offload(device=self._torch_device())
            resident.offloaded = True
            # Pipelines derived before the offload hooks existed are derived again.
            resident.pipes = {"text2image": resident.base}

    def _run_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> list[Image.Image]:
        """Call the pipeline once; the one place a test subclass can inject failures."""
        return list(pipe(**kwargs).images)

    def _pipeline_kwargs(
        self, request: ImageRequest, batch: list[ImageSpec], progress: _Progress
    ) -> dict[str, Any]:
        import torch
        from PIL import Image

        first = batch[0]

        def on_step_end(
            pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            progress.step(step, int(pipeline.num_timesteps))
            if progress.events.should_stop():
                raise Interrupted("stop requested")
            return tensors

        kwargs: dict[str, Any] = {
            "prompt": [spec.prompt for spec in batch],
            "negative_prompt": [spec.negative_prompt for spec in batch],
            # CPU generators: the same seed gives the same starting noise on every device.
            "generator": [torch.Generator("cpu").manual_seed(spec.seed) for spec in batch],
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance,
            "callback_on_step_end": on_step_end,
        }
        size = (request.width, request.height)
        if request.task != "variations":  # img2img takes its size from the image
            kwargs["width"], kwargs["height"] = size
        if request.init_image is not None and request.task != "text2image":
            kwargs["image"] = request.init_image.convert("RGB").resize(
                size, Image.Resampling.LANCZOS
            )
            kwargs["strength"] = first.strength
        if request.mask_image is not None and request.task == "inpaint":
            kwargs["mask_image"] = request.mask_image.convert("L").resize(
                size, Image.Resampling.NEAREST
            )
        return kwargs

    def _warn_truncation(self, pipe: Any, request: ImageRequest, events: GenerationEvents) -> None:
        """Warn once per prompt the text encoder will cut short (the pipeline truncates)."""
        tokenizer = getattr(pipe, "tokenizer", None)
        if tokenizer is None:
            return
        limit = int(tokenizer.model_max_length)
        seen: set[tuple[str, str]] = set()
        for spec in request.images:
            for kind, text in (("prompt", spec.prompt), ("negative prompt", spec.negative_prompt)):
                if (kind, text) in seen:
                    continue
                seen.add((kind, text))
                ids = tokenizer(text, truncation=False, verbose=False).input_ids
                if len(ids) > limit:
                    dropped = " ".join(tokenizer.decode(ids[limit - 1 : -1]).split())
                    if len(dropped) > 60:
                        dropped = dropped[:57] + "..."
                    events.on_warning(f"{kind} truncated to {limit} tokens: dropped {dropped!r}")


@dataclass(frozen=True)
class _Shape:
    """Stands in for a tensor where diffusers only looks at ``.shape``."""

    shape: list[int]


def _planned_steps(task: ImageTask, spec: ImageSpec) -> int:
    """Denoising steps one pipeline call takes (img2img and inpaint skip the first part)."""
    if task == "text2image":
        return spec.steps
    return min(int(spec.steps * spec.strength), spec.steps)


def _batches(request: ImageRequest) -> Iterator[list[ImageSpec]]:
    """Group images of identical sampler values, in order of first appearance, max_batch each."""
    groups: dict[tuple[int, float, float], list[ImageSpec]] = {}
    for spec in request.images:
        groups.setdefault((spec.steps, spec.guidance, spec.strength), []).append(spec)
    size = max(1, request.max_batch)
    for specs in groups.values():
        for start in range(0, len(specs), size):
            yield specs[start : start + size]
