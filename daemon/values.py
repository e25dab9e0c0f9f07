"""Plain values shared by every layer: tasks, job states, model references and the clock shape.

Nothing here reads a file or imports a third-party package; every other module may import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

Clock = Callable[[], float]
"""Seconds as a float: ``time.time`` for wall-clock stamps, ``time.monotonic`` for intervals."""


class Task(str, Enum):
    """What a job makes; the values are the names sidecars and manifests use."""

    text2image = "text2image"
    variations = "variations"
    inpaint = "inpaint"
    mesh = "mesh"
    tween = "tween"

    def __str__(self) -> str:
        return self.value

    @property
    def makes_images(self) -> bool:
        """text2image, variations and inpaint: a batch of PNG images with a contact sheet."""
        return self in IMAGE_TASKS


IMAGE_TASKS = frozenset({Task.text2image, Task.variations, Task.inpaint})
TASK_NAMES: tuple[str, ...] = tuple(t.value for t in Task)


class JobState(str, Enum):
    """Where a job stands; see DESIGN.md "Journal and job states"."""

    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    waiting = "waiting"
    quarantined = "quarantined"

    def __str__(self) -> str:
        return self.value


ModelKind = Literal["hub", "folder", "file"]


@dataclass(frozen=True)
class ModelSource:
    """Where an alias from ``config.toml [models]`` points: a hub id, a folder or a file."""

    alias: str
    kind: ModelKind
    ref: str  # hub id ("org/name"), or an absolute path to a diffusers folder / .safetensors file
    portable: bool = False  # in a cluster: job keys name a local model by its alias

    def describe(self) -> str:
        """Return the source as recorded in manifests (and in job keys on one host)."""
        return self.ref

    def key_source(self) -> str:
        """The source as it enters job keys: the hub id, or the local path on one host; in a
        cluster, where hosts keep local models at different paths, ``local:ALIAS``."""
        if self.portable and self.kind != "hub":
            return f"local:{self.alias}"
        return self.ref


@dataclass(frozen=True)
class LoraSource:
    """A LoRA alias from ``config.toml [loras]`` resolved to a local .safetensors file."""

    alias: str
    path: str
    scale: float
    portable: bool = False  # in a cluster: job keys name the LoRA by its alias

    def key_path(self) -> str:
        """The LoRA as it enters job keys: its path on one host, ``local:ALIAS`` in a cluster."""
        return f"local:{self.alias}" if self.portable else self.path
