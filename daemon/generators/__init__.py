"""The Generator protocol and the plain values that cross into a generator backend.

Nothing here imports torch or diffusers: the backend modules do, and only they
(``daemon.generators.diffusers_backend`` and ``daemon.generators.tiny``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from PIL import Image

ImageTask = Literal["text2image", "variations", "inpaint"]
ModelKind = Literal["hub", "folder", "file"]

# Bumped whenever a change to the generation code changes what the same job produces:
# it is part of every job key, so old outputs are regenerated.
GENERATOR_VERSION = "1"


@dataclass(frozen=True)
class ModelSource:
    """Where an alias from ``config.toml [models]`` points: a hub id, a folder or a file."""

    alias: str
    kind: ModelKind
    ref: str  # hub id ("org/name"), or an absolute path to a diffusers folder / .safetensors file

    def describe(self) -> str:
        """Return the source as recorded in manifests and job keys."""
        return self.ref


@dataclass(frozen=True)
class LoraSource:
    """A LoRA alias from ``config.toml [loras]`` resolved to a local .safetensors file."""

    alias: str
    path: str
    scale: float


@dataclass(frozen=True)
class ImageSpec:
    """One image to make: its own prompt, seed and sampler values."""

    index: int  # position in the job's output list; passed back to on_image
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    strength: float


@dataclass(frozen=True)
class ImageRequest:
    """Everything one job asks of the image pipelines."""

    task: ImageTask
    model: ModelSource
    width: int
    height: int
    images: tuple[ImageSpec, ...]
    init_image: Image.Image | None = None  # variations and inpaint
    mask_image: Image.Image | None = None  # inpaint: white = repaint
    lora: LoraSource | None = None
    max_batch: int = 8


def _never() -> bool:
    return False


def _ignore_step(done: int, total: int) -> None:
    return None


def _ignore_warning(message: str) -> None:
    return None


@dataclass
class GenerationEvents:
    """Callbacks a backend calls while it works.

    ``on_image(index, image)`` is called as soon as an image exists, so the caller can
    write it before the next batch starts; ``should_stop()`` is polled at every
    denoising step and the backend raises ``Interrupted`` when it returns True;
    ``on_warning`` receives one-line notes for the manifest (e.g. a truncated prompt).
    """

    on_image: Callable[[int, Image.Image], None]
    on_step: Callable[[int, int], None] = field(default=_ignore_step)
    should_stop: Callable[[], bool] = field(default=_never)
    on_warning: Callable[[str], None] = field(default=_ignore_warning)


class Generator(Protocol):
    """What the worker needs from a generation backend."""

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """Make every image of ``request``, reporting each through ``events.on_image``.

        Raises ``ModelUnavailable`` (model not on this machine), ``OutOfMemory`` (after
        every fallback), ``InputError`` (the input cannot be used) or ``Interrupted``.
        """
        ...

    def device_name(self) -> str:
        """Describe the device generation runs on, e.g. ``cpu`` or ``cuda:0 (NVIDIA H100)``."""
        ...

    def unload(self) -> None:
        """Drop every loaded pipeline and release accelerator memory."""
        ...

    def loaded_models(self) -> Mapping[str, str]:
        """Return alias → source of the pipelines now resident."""
        ...
