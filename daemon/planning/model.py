"""The plan model: what a job will make, where, and the key that identifies it. Pure values.

Built by a task's planner (``daemon.tasks``) from a ``PlanInput``; read by the worker, the
survey, ``check`` and ``once --dry-run``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from daemon.config import InboxConfig
from daemon.errors import InputError
from daemon.intake.names import job_name
from daemon.outputs.names import sanitize_name
from daemon.planning.params import Params
from daemon.values import LoraSource, ModelSource, Task

SEQUENCES_DIR = "sequences"
# Which tasks suit which kind of input; the first is the default for ``task = "auto"``.
TASKS_FOR_KIND: Mapping[str, tuple[Task, ...]] = {
    "image": (Task.variations, Task.inpaint, Task.mesh),
    "prompt": (Task.text2image,),
    "job": (Task.tween,),
}
_KIND_NAMES = {"image": "an image", "prompt": "a prompt file", "job": "a job file"}


@dataclass(frozen=True)
class Dependency:
    """A file a job depends on, relative to its inbox, with its content hash."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Scene:
    """One scene of a prompt file: its text, the parts found in it and the prompt it gets."""

    number: int  # 1-based, in the file (after excluded sections)
    text: str
    prompt: str  # what the images are made from: ``made``, or the user's edit
    made: str  # the prompt made from the text with ``prompt_template``
    parts: Mapping[str, str]  # subject, setting, time, mood, action
    name_words: tuple[str, ...] = ()  # for descriptive file names
    edited: bool = False


@dataclass(frozen=True)
class PromptsFile:
    """``STEM.prompts.toml``, the editable prompts of a multi-scene prompt file."""

    path: Path  # in the output folder
    content: str  # what the job writes there (its hash is one of the job's dependencies)


@dataclass(frozen=True)
class PlanInput:
    """Everything known about one input before planning; built by ``daemon.tasks.prepare``."""

    inbox: InboxConfig
    rel: str  # POSIX path of the input inside the inbox
    kind: str  # "image", "prompt" or "job"
    input_sha256: str
    input_bytes: int
    params: Params  # effective parameters (daemon.planning.params.resolve_params)
    model: ModelSource
    lora: LoraSource | None = None
    scenes: tuple[str, ...] = ()  # prompt files: scene texts, template applied
    mask: Dependency | None = None
    sidecars: tuple[Dependency, ...] = ()  # _defaults.toml chain and the file's own sidecar
    scene_plans: tuple[Scene, ...] = ()  # prompt files: every scene, parts and edits resolved
    chapter: int | None = None  # prompt files: the chapter number, for descriptive names
    prompts_file: PromptsFile | None = None  # multi-scene prompt files
    notes: tuple[str, ...] = ()  # for the manifest's warnings
    image_size: tuple[int, int] | None = None  # an image input's size as shown (probed)
    set_by_sidecars: frozenset[str] = frozenset()  # keys a _defaults.toml or sidecar sets


@dataclass(frozen=True)
class PlannedOutput:
    """One file the job will produce, with the values that make it."""

    index: int
    file: str
    seed: int
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    strength: float
    scene: int | None = None  # 1-based scene number for multi-scene prompt files
    varied: Mapping[str, float | int] = field(default_factory=dict)
    t: float | None = None
    # What makes this one image (not its name): an image on disk whose chunk holds it is kept,
    # whichever job made it, so an edited scene leaves the other scenes' images alone.
    key: str = ""


@dataclass(frozen=True)
class Endpoint:
    """An endpoint image of a tween: its file and the expression it shows."""

    dep: Dependency
    expr: str
    pose: str | None


@dataclass(frozen=True)
class GeneratedEndpoint:
    """An endpoint a tween job makes from its ``base`` image by img2img with an expression's
    prompt, because no ``{expr}__{pose}`` image exists (seed 004's extreme expressions)."""

    dep: Dependency  # absolute path in the job's output folder; sha256 is the image's key
    expr: str
    pose: str
    prompt: str
    seed: int

    @property
    def file(self) -> str:
        """Its name in the job's output folder: ``endpoints/{expr}__{pose}.png``."""
        return f"endpoints/{self.expr}__{self.pose}.png"


@dataclass(frozen=True)
class Frame:
    """One frame of a sequence: its time, file name and (for tweens) seed."""

    t: float
    file: str
    seed: int | None  # None for the copied endpoints


@dataclass(frozen=True)
class SequencePlan:
    """One sequence folder ``sequences/<path_id>`` and the frames it must hold."""

    path_id: str
    expr_start: str
    expr_end: str
    pose: str | None
    start: Dependency
    end: Dependency
    out_dir: Path
    frames: tuple[Frame, ...]
    job_key: str
    # What the frames' pixels depend on (not the preview's fps): frames holding it are kept.
    frames_key: str = ""
    size: tuple[int, int] | None = None  # ``size``: frames made at it, endpoints fitted to it


@dataclass(frozen=True)
class Plan:
    """A fully resolved job: what to make, where, and the key that identifies it.

    ``params`` are the effective parameters with the task and seeds resolved; ``record`` is the
    part of them the manifest records and the job key covers (each task leaves out the keys
    that do not apply to it).
    """

    job_key: str
    task: Task
    inbox: InboxConfig
    rel: str
    input_sha256: str
    input_bytes: int
    out_dir: Path
    params: Params
    record: Mapping[str, Any]
    model: ModelSource
    lora: LoraSource | None
    mask: Dependency | None
    sidecars: tuple[Dependency, ...]
    outputs: tuple[PlannedOutput, ...]
    force: bool
    sequences: tuple[SequencePlan, ...] = ()
    prompts_file: PromptsFile | None = None
    notes: tuple[str, ...] = ()  # warnings known from planning (an edit that no longer applies)
    base: Dependency | None = None  # tweens: the image generated endpoints are made from
    generated: tuple[GeneratedEndpoint, ...] = ()  # tweens: endpoints the job makes first

    @property
    def display(self) -> str:
        """The input's path as users see it (relative to its inbox)."""
        return self.rel

    @property
    def output_count(self) -> int:
        """How many files the job makes (tween frames included)."""
        return len(self.outputs) + sum(len(s.frames) for s in self.sequences)

    def describe_outputs(self) -> list[str]:
        """One line per planned file, for `check` and `once --dry-run`."""
        lines = [
            f"{o.file}  seed {o.seed}  prompt {json.dumps(o.prompt, ensure_ascii=False)}"
            for o in self.outputs
        ]
        if self.wants_contact_sheet:
            lines.append("contact.png")
        for seq in self.sequences:
            frames = " ".join(f.file for f in seq.frames)
            lines.append(f"sequences/{seq.out_dir.name}/  {frames}  preview.gif")
        return lines

    def planned_files(self) -> list[tuple[str, int | None]]:
        """Every file the job makes, relative to the inbox's output root, with its seed (None
        for a tween's copied endpoints): images and meshes, then each sequence's frames."""
        root = self.inbox.output
        folder = self.out_dir.relative_to(root).as_posix()
        files: list[tuple[str, int | None]] = [(f"{folder}/{o.file}", o.seed) for o in self.outputs]
        for seq in self.sequences:
            seq_folder = seq.out_dir.relative_to(root).as_posix()
            files += [(f"{seq_folder}/{f.file}", f.seed) for f in seq.frames]
        return files

    @property
    def wants_contact_sheet(self) -> bool:
        """A contact sheet is made for batches of two or more images."""
        return self.task.makes_images and len(self.outputs) > 1


def output_dir(inbox: InboxConfig, rel: str) -> Path:
    """``OUT/a/b/cat`` for ``INBOX/a/b/cat.png`` (``NAME`` for ``NAME.job.toml``)."""
    path = PurePosixPath(rel)
    stem = job_name(path.name)
    parts = [sanitize_name(p) for p in path.parent.parts]
    return inbox.output.joinpath(*parts, sanitize_name(stem))


def resolve_task(
    params: Params, inbox: InboxConfig, kind: str, display: str, *, has_mask: bool = False
) -> Task:
    """Turn ``auto`` into a concrete task and check it suits the input's kind.

    ``auto`` (in the sidecars and the inbox) means: an image with a mask is inpainted, any
    other image varied (img2img), a prompt file drawn (text2image), a job file tweened.
    """
    name = params.task
    if name == "auto":
        name = inbox.default_task
    allowed = TASKS_FOR_KIND[kind]
    if name == "auto":
        return Task.inpaint if kind == "image" and has_mask else allowed[0]
    if name not in allowed:
        raise InputError(
            display,
            f"task must be one of {', '.join(allowed)} for {_KIND_NAMES[kind]}, "
            f"got {json.dumps(name)}",
            key="task",
            rule="suits the input",
            value=name,
        )
    return Task(name)
