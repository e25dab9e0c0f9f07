"""The pipelines kept in memory between jobs: one image model and one mesh model, on one device.

The image model's text-to-image pipeline is loaded from disk; its img2img and inpaint pipelines
are derived with ``from_pipe``, so the weights exist once, and LoRA adapters are loaded into it
once and switched per job. A Shap-E mesh model may be resident beside it. Out of memory, the
model of the other kind is dropped first. torch and diffusers are imported on first use.
"""

from __future__ import annotations

import gc
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.errors import ModelUnavailable, OutOfMemory
from daemon.generators.fetch import locate_lora
from daemon.generators.loading import (
    MemorySavers,
    apply_savers,
    diffusers_module,
    first_line,
    is_out_of_memory,
    load_image_pipeline,
    load_mesh_pipeline,
    resolve_device,
)
from daemon.generators.samplers import find_sampler
from daemon.values import LoraSource, ModelSource, Task

Kind = Literal["images", "mesh"]
_PEFT_SECOND_ADAPTER = "Already found a `peft_config` attribute in the model"


@dataclass
class ImageModel:
    """The pipelines of the resident image model, keyed by task."""

    ref: str
    base: Any
    pipes: dict[Task, Any]
    offloaded: bool  # model CPU offload hooks installed (CUDA only)
    aliases: dict[str, str] = field(default_factory=dict)
    adapters: dict[tuple[str, str], str] = field(default_factory=dict)  # (alias, path) → name
    # The model's own scheduler, as loaded: what a job without a ``sampler`` gets.
    scheduler_class: Any = None
    scheduler_config: Any = None

    def __post_init__(self) -> None:
        if self.scheduler_class is None:
            self.scheduler_class = type(self.base.scheduler)
            self.scheduler_config = self.base.scheduler.config

    def pipe(self, task: Task) -> Any:
        """Return the pipeline of ``task``, derived from the base one on first use."""
        if task not in self.pipes:
            diffusers = diffusers_module()
            auto = (
                diffusers.AutoPipelineForImage2Image
                if task == Task.variations
                else diffusers.AutoPipelineForInpainting
            )
            # from_pipe shares the scheduler object, whose state is per call; and it casts the
            # shared weights to fp32 unless told the dtype.
            scheduler = self.scheduler_class.from_config(self.scheduler_config)
            pipe = auto.from_pipe(self.base, scheduler=scheduler, dtype=self.base.dtype)
            pipe.set_progress_bar_config(disable=True)
            self.pipes[task] = pipe
        return self.pipes[task]

    def use_sampler(self, task: Task, sampler: str) -> Any:
        """Give the pipeline of ``task`` a fresh scheduler for ``sampler`` and return the pipeline.

        Each pipeline has its own scheduler object (schedulers keep per-call state), made anew
        for every request from the model's own config, so a job's sampler never leaks into the
        next job or into another task's pipeline.
        """
        pipe = self.pipe(task)
        if not sampler:
            pipe.scheduler = self.scheduler_class.from_config(self.scheduler_config)
            return pipe
        found = find_sampler(sampler)
        if found is None:
            raise ValueError(f"unknown sampler {sampler!r}")
        scheduler_class = getattr(diffusers_module(), found.scheduler)
        pipe.scheduler = scheduler_class.from_config(self.scheduler_config, **found.options)
        return pipe

    def use_lora(self, lora: LoraSource | None) -> None:
        """Activate ``lora`` on the shared components, or switch every adapter off."""
        if lora is None:
            if self.adapters:
                self.base.disable_lora()
            return
        key = (lora.alias, lora.path)
        if key not in self.adapters:
            path = locate_lora(lora)
            name = f"lora{len(self.adapters)}_{re.sub(r'[^0-9A-Za-z_]', '_', lora.alias)}"
            try:
                with warnings.catch_warnings():
                    # peft warns on every adapter after the first ("Already found a
                    # `peft_config` attribute … multiple adapters"): several adapters, one
                    # active at a time, is how LoRAs are switched per job here.
                    warnings.filterwarnings("ignore", _PEFT_SECOND_ADAPTER, UserWarning)
                    self.base.load_lora_weights(str(path), adapter_name=name)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                if is_out_of_memory(exc):
                    raise
                raise ModelUnavailable(
                    f'LoRA "{lora.alias}" ({lora.path}) does not fit this model: {first_line(exc)}'
                ) from exc
            self.adapters[key] = name
        self.base.enable_lora()
        self.base.set_adapters([self.adapters[key]], adapter_weights=[lora.scale])

    def enable_every_saver(self, device: str) -> None:
        """Switch every memory saver on, until the model is unloaded."""
        apply_savers(self.base, True, True, True)
        if device.startswith("cuda") and not self.offloaded:
            self.base.enable_model_cpu_offload(device=device)
            self.offloaded = True
            # Pipelines derived before the offload hooks existed are derived again.
            self.pipes = {Task.text2image: self.base}


@dataclass
class MeshModel:
    """The resident Shap-E pipeline."""

    ref: str
    pipe: Any
    aliases: dict[str, str] = field(default_factory=dict)


class Residents:
    """The device and the models resident on it."""

    def __init__(self, requested_device: str, threads: int | None, savers: MemorySavers) -> None:
        self._requested_device = requested_device
        self._threads = threads
        self._savers = savers
        self._device: str | None = None
        self.images: ImageModel | None = None
        self.mesh: MeshModel | None = None

    def device(self) -> str:
        """Resolve the device on first use (importing torch is slow; the CLI must start fast)."""
        if self._device is None:
            self._device = resolve_device(self._requested_device, self._threads)
        return self._device

    def device_name(self) -> str:
        """Describe the device, e.g. ``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
        device = self.device()
        if device.startswith("cuda"):
            import torch

            return f"{device} ({torch.cuda.get_device_name(device)})"
        return device

    def loaded(self) -> dict[str, str]:
        """Return alias → source of the resident models."""
        loaded = dict(self.images.aliases) if self.images else {}
        loaded.update(self.mesh.aliases if self.mesh else {})
        return loaded

    def unload(self) -> None:
        """Drop every resident model and release accelerator memory."""
        self.images = None
        self.mesh = None
        self.free_memory()

    def free_memory(self) -> None:
        """Collect garbage and return cached accelerator memory."""
        gc.collect()
        if self._device is None:
            return
        import torch

        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
        elif self._device == "mps":
            torch.mps.empty_cache()

    def make_room(self, keep: Kind) -> bool:
        """Drop the model of the other kind and free caches; tell whether one was dropped."""
        dropped = (self.mesh if keep == "images" else self.images) is not None
        if keep == "images":
            self.mesh = None
        else:
            self.images = None
        self.free_memory()
        return dropped

    def image_model(self, source: ModelSource) -> ImageModel:
        """Return the resident pipelines of ``source``, replacing any other image model's."""
        if self.images is None or self.images.ref != source.ref:
            self.images = None  # one image model at a time keeps memory bounded
            self.free_memory()
            device = self.device()
            base = self._load(
                lambda: load_image_pipeline(source, device, self._savers), source, "images"
            )
            offloaded = self._savers.cpu_offload and device.startswith("cuda")
            self.images = ImageModel(source.ref, base, {Task.text2image: base}, offloaded)
        self.images.aliases[source.alias] = source.ref
        return self.images

    def mesh_model(self, source: ModelSource) -> MeshModel:
        """Return the resident Shap-E pipeline of ``source``, replacing any other mesh model."""
        if self.mesh is None or self.mesh.ref != source.ref:
            self.mesh = None
            self.free_memory()
            device = self.device()
            pipe = self._load(
                lambda: load_mesh_pipeline(source, device, self._savers), source, "mesh"
            )
            self.mesh = MeshModel(source.ref, pipe)
        self.mesh.aliases[source.alias] = source.ref
        return self.mesh

    def _load(self, load: Callable[[], Any], source: ModelSource, keep: Kind) -> Any:
        """Call ``load``; out of memory, drop the other kind's model and try once more."""
        for attempt in (1, 2):
            try:
                return load()
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if attempt == 1 and self.make_room(keep):
                    continue
                raise OutOfMemory(
                    f'model "{source.alias}" ({source.ref}) does not fit in memory on '
                    f"{self.device_name()}"
                ) from exc
        raise AssertionError("unreachable")
