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
    canceled = "canceled"

    def __str__(self) -> str:
        return self.value

    @property
    def active(self) -> bool:
        """Queued, running or waiting: work still to do (what a cancel stops)."""
        return self in ACTIVE_STATES


ACTIVE_STATES = frozenset({JobState.queued, JobState.running, JobState.waiting})


class CancelReason(str, Enum):
    """Why a job was canceled (or is being stopped for a cancel)."""

    requested = "requested"  # `dropforge cancel`, the web UI, the library API
    removed = "removed"  # its input was deleted or moved out of the inbox

    def __str__(self) -> str:
        return self.value

    def describe(self) -> str:
        """The words status, manifests and notices use."""
        return CANCEL_TEXT[self]


CANCEL_TEXT = {
    CancelReason.requested: "canceled on request",
    CancelReason.removed: "canceled: its input was removed from the inbox",
}


class AttemptEnd(str, Enum):
    """How one claim of a job ended; ``running`` while it has not."""

    running = "running"
    done = "done"
    failed = "failed"
    waiting = "waiting"  # a cause outside the input; retried later
    stopped = "stopped"  # a stop interrupted it at a step; requeued
    died = "died"  # the process ended without finishing it (killed, crashed, power lost)
    canceled = "canceled"  # a cancel stopped it (or it died while one was asked of it)

    def __str__(self) -> str:
        return self.value


class AttemptStage(str, Enum):
    """Where a claim of a job stands, as far as telling a crash loop from outside kills goes."""

    preparing = "preparing"  # claimed: reading the input and its sidecars, planning
    first_load = "first_load"  # loading a model that has never loaded on this host
    loading = "loading"  # loading a model that has loaded on this host before
    generating = "generating"  # the model is loaded: denoising steps and outputs

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
