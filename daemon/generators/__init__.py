"""The Generator protocol and the plain values that cross into a generator backend.

This is the interface a backend implements (the diffusers one here, or a third party's); model
references (``ModelSource``, ``LoraSource``) and ``Task`` come from ``daemon.values``.

Nothing here imports torch or diffusers: the backend modules do, and only they, on first use
(``diffusers_backend`` with ``loading``, ``residents``, ``mesh`` and ``tween``, and ``tiny``).
``subdivision`` (tween frame times and seeds) and ``cubes`` are plain arithmetic; ``texture``
bakes a mesh's colours into a UV-mapped texture (xatlas in a child process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from daemon.values import LoraSource, ModelSource, Task

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "GENERATOR_VERSION",
    "GenerationEvents",
    "Generator",
    "ImageRequest",
    "ImageSpec",
    "LoraSource",
    "MeshRequest",
    "ModelSource",
    "Task",
    "TweenRequest",
]

MeshFormat = Literal["glb", "ply", "obj"]
MESH_FORMATS: tuple[MeshFormat, ...] = ("glb", "ply", "obj")
MESH_RESOLUTIONS = range(64, 513)  # marching-cubes grid points per axis
TWEEN_DEPTHS = range(1, 7)

# Bumped whenever a change to the generation code changes what the same job produces:
# it is part of every job key, so old outputs are regenerated.
GENERATOR_VERSION = "1"


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

    task: Task  # text2image, variations or inpaint
    model: ModelSource
    width: int
    height: int
    images: tuple[ImageSpec, ...]
    init_image: Image.Image | None = None  # variations and inpaint
    mask_image: Image.Image | None = None  # inpaint: white = repaint
    lora: LoraSource | None = None
    max_batch: int = 8
    sampler: str = ""  # an A1111 name (generators.samplers); "" keeps the model's own


@dataclass(frozen=True)
class MeshRequest:
    """One image-to-3D job: an image in, a mesh out in each of ``formats``."""

    model: ModelSource
    image: Image.Image
    display: str  # how messages name the input, e.g. "chairs/cat.png"
    steps: int
    guidance: float
    seed: int
    resolution: int  # marching-cubes grid points per axis, in MESH_RESOLUTIONS
    formats: tuple[MeshFormat, ...] = ("glb",)
    texture: bool = False  # the model's colours baked into a texture (PLY: vertex colours)
    name: str = "mesh"  # file stem the OBJ's companions are named after (NAME.mtl, …)


@dataclass(frozen=True)
class TweenRequest:
    """One tween sequence between two images, subdivided ``depth`` times.

    Frame times are ``k / 2**depth`` (``subdivision.tween_times``). ``times_needed`` lists the
    frames the caller still needs (0 and 1, the endpoints themselves, are never generated);
    ``existing`` holds frames already made, used as neighbours instead of being made again.
    A time in both is made again. Frames that a needed one is derived from are made too when
    they do not exist, and reported like the others.
    """

    model: ModelSource
    start: Image.Image
    end: Image.Image
    width: int
    height: int
    depth: int  # in TWEEN_DEPTHS
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    strength: float
    seed: int  # frame t uses subdivision.frame_seed(seed, t)
    times_needed: tuple[float, ...]
    existing: Mapping[float, Image.Image] = field(default_factory=dict)
    lora: LoraSource | None = None
    max_batch: int = 8
    sampler: str = ""  # an A1111 name (generators.samplers); "" keeps the model's own


def _never() -> bool:
    return False


def _ignore_step(done: int, total: int) -> None:
    return None


def _ignore_warning(message: str) -> None:
    return None


def _ignore_frame(t: float, image: Image.Image) -> None:
    return None


def _ignore_ready() -> None:
    return None


@dataclass
class GenerationEvents:
    """Callbacks a backend calls while it works.

    ``on_image(index, image)`` is called as soon as an image exists, so the caller can
    write it before the next batch starts; ``should_stop()`` is polled at every
    denoising step and the backend raises ``Interrupted`` when it returns True;
    ``on_warning`` receives one-line notes for the manifest (e.g. a truncated prompt);
    ``on_frame(t, image)`` receives each new tween frame as soon as it exists;
    ``on_call_step(step, steps)`` tells how far the running pipeline call (one batch of
    images or frames) has come, where ``on_step`` counts over the whole request (a backend
    reports a step's ``on_call_step`` first, then its ``on_step``);
    ``on_ready()`` is called once the request's model is loaded (resident), before anything
    of the request itself (LoRA, prompts, images) touches it: a process that dies before
    then died loading the model, not working on the job.
    """

    on_image: Callable[[int, Image.Image], None]
    on_step: Callable[[int, int], None] = field(default=_ignore_step)
    should_stop: Callable[[], bool] = field(default=_never)
    on_warning: Callable[[str], None] = field(default=_ignore_warning)
    on_frame: Callable[[float, Image.Image], None] = field(default=_ignore_frame)
    on_call_step: Callable[[int, int], None] = field(default=_ignore_step)
    on_ready: Callable[[], None] = field(default=_ignore_ready)


class Generator(Protocol):
    """What the worker needs from a generation backend."""

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """Make every image of ``request``, reporting each through ``events.on_image``.

        Raises ``ModelUnavailable`` (model not on this machine), ``OutOfMemory`` (after
        every fallback), ``InputError`` (the input cannot be used) or ``Interrupted``.
        """
        ...

    def generate_mesh(self, request: MeshRequest, events: GenerationEvents) -> dict[str, bytes]:
        """Make the mesh of ``request``; return format (``glb``, ``ply``, ``obj``) → file bytes.

        A textured OBJ comes with ``mtl`` and ``png`` entries (its material and texture).

        Steps are reported through ``events.on_step``. Raises ``ModelUnavailable``,
        ``OutOfMemory``, ``InputError`` (the model found no surface in the image) or
        ``Interrupted``.
        """
        ...

    def generate_tween(self, request: TweenRequest, events: GenerationEvents) -> None:
        """Make the missing frames of ``request``, reporting each through ``events.on_frame``.

        Raises like ``generate_images``.
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
