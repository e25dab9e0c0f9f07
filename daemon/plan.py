"""Parameters → job key and expected outputs. Pure: no file or clock access here."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from daemon.config import InboxConfig
from daemon.errors import InputError
from daemon.generators import GENERATOR_VERSION, LoraSource, ModelSource
from daemon.outputs import sanitize_name

if TYPE_CHECKING:
    from daemon.sequences import SequencePlan

SEED_SPACE = 2**32
IMAGE_TASKS = ("text2image", "variations", "inpaint")
VARY_INT_KEYS = ("steps",)


@dataclass(frozen=True)
class Dependency:
    """A file a job depends on, relative to its inbox, with its content hash."""

    path: str
    sha256: str


@dataclass(frozen=True)
class PlanInput:
    """Everything known about one input before planning; built by daemon.prepare."""

    inbox: InboxConfig
    rel: str  # POSIX path of the input inside the inbox
    kind: str  # "image", "prompt" or "job"
    input_sha256: str
    input_bytes: int
    params: Mapping[str, Any]  # effective parameters (daemon.params.effective_params)
    model: ModelSource
    lora: LoraSource | None = None
    scenes: tuple[str, ...] = ()  # prompt files: scene texts, template applied
    mask: Dependency | None = None
    sidecars: tuple[Dependency, ...] = ()  # _defaults.toml chain and the file's own sidecar


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


@dataclass(frozen=True)
class Plan:
    """A fully resolved job: what to make, where, and the key that identifies it."""

    job_key: str
    task: str
    inbox: InboxConfig
    rel: str
    input_sha256: str
    input_bytes: int
    out_dir: Path
    params: Mapping[str, Any]
    model: ModelSource
    lora: LoraSource | None
    mask: Dependency | None
    sidecars: tuple[Dependency, ...]
    outputs: tuple[PlannedOutput, ...]
    force: bool
    sequences: tuple[SequencePlan, ...] = ()

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

    @property
    def wants_contact_sheet(self) -> bool:
        """A contact sheet is made for batches of two or more images."""
        return self.task in IMAGE_TASKS and len(self.outputs) > 1


def canonical_json(value: Any) -> str:
    """Stable JSON used for hashing: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    """Hex sha256 of UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def output_dir(inbox: InboxConfig, rel: str) -> Path:
    """``OUT/a/b/cat`` for ``INBOX/a/b/cat.png`` (``NAME`` for ``NAME.job.toml``)."""
    path = PurePosixPath(rel)
    stem = path.name[: -len(".job.toml")] if path.name.endswith(".job.toml") else path.stem
    parts = [sanitize_name(p) for p in path.parent.parts]
    return inbox.output.joinpath(*parts, sanitize_name(stem))


def resolve_task(params: Mapping[str, Any], inbox: InboxConfig, kind: str, display: str) -> str:
    """Turn ``auto`` into a concrete task and check it suits the input's kind."""
    task = str(params.get("task", "auto"))
    if task == "auto":
        task = inbox.default_task
    if task == "auto":
        task = {"image": "variations", "prompt": "text2image", "job": "tween"}[kind]
    allowed = {
        "image": ("variations", "inpaint", "mesh"),
        "prompt": ("text2image",),
        "job": ("tween",),
    }[kind]
    if task not in allowed:
        what = {"image": "an image", "prompt": "a prompt file", "job": "a job file"}[kind]
        raise InputError(
            display,
            f"task must be one of {', '.join(allowed)} for {what}, got {json.dumps(task)}",
            key="task",
            rule="suits the input",
            value=task,
        )
    return task


def resolve_seeds(params: Mapping[str, Any], input_sha256: str) -> list[int]:
    """Explicit ``seeds``, else ``seed, seed+1, …``, else seeds derived from the content hash."""
    if params.get("seeds"):
        return [int(s) for s in params["seeds"]]
    count = int(params.get("count", 1))
    first = params.get("seed")
    base = int(first) if first is not None else int(input_sha256[:8], 16)
    return [(base + i) % SEED_SPACE for i in range(count)]


def spread(low: float, high: float, count: int, index: int) -> float:
    """Evenly spread ``count`` values from low to high (both ends included)."""
    if count == 1:
        return low
    return low + (high - low) * index / (count - 1)


def build_plan(pi: PlanInput) -> Plan:
    """Resolve task, seeds, prompts and outputs; compute the job key."""
    params = dict(pi.params)
    task = resolve_task(params, pi.inbox, pi.kind, pi.rel)
    if task == "tween":
        raise InputError(
            pi.rel, "tween jobs are planned by daemon.sequences", key="task", value=task
        )
    if task == "mesh":
        return _mesh_plan(pi, params)
    if task == "inpaint" and pi.mask is None:
        stem = PurePosixPath(pi.rel).stem
        raise InputError(
            pi.rel,
            f"inpaint needs a mask: add {stem}.mask.png beside it or set mask in {stem}.toml",
            key="mask",
            rule="required for inpaint",
            value=None,
        )
    seeds = resolve_seeds(params, pi.input_sha256)
    stem = sanitize_name(output_dir(pi.inbox, pi.rel).name)

    if pi.kind == "prompt":
        prompts = list(pi.scenes)
        tag = "s"
    else:
        prompts = list(params.get("prompts") or [params.get("prompt", "")])
        tag = "p"
    outputs: list[PlannedOutput] = []
    vary: Mapping[str, Sequence[float]] = params.get("vary") or {}
    for p_index, prompt in enumerate(prompts, 1):
        for s_index, seed in enumerate(seeds):
            values: dict[str, Any] = {
                "steps": int(params["steps"]),
                "guidance": float(params["guidance"]),
                "strength": float(params["strength"]),
            }
            varied: dict[str, float | int] = {}
            for key, (low, high) in vary.items():
                value = spread(float(low), float(high), len(seeds), s_index)
                varied[key] = round(value) if key in VARY_INT_KEYS else round(value, 4)
            values.update({k: v for k, v in varied.items() if k in values})
            middle = f"-{tag}{p_index:02d}" if len(prompts) > 1 else ""
            outputs.append(
                PlannedOutput(
                    index=len(outputs),
                    file=f"{stem}{middle}-{seed}.png",
                    seed=seed,
                    prompt=prompt,
                    negative_prompt=str(params.get("negative_prompt", "")),
                    steps=values["steps"],
                    guidance=values["guidance"],
                    strength=values["strength"],
                    scene=p_index if pi.kind == "prompt" and len(prompts) > 1 else None,
                    varied=varied,
                )
            )

    if task in ("variations", "inpaint"):
        for out in outputs:
            if int(out.steps * out.strength) < 1:
                raise InputError(
                    pi.rel,
                    f"strength must be at least 1/steps ({1 / out.steps:g} with {out.steps} "
                    f"steps) for {task}, got {out.strength:g}",
                    key="strength",
                    rule="at least 1/steps",
                    value=out.strength,
                )
    params["task"] = task
    params["seeds"] = seeds
    params["seed"] = seeds[0]
    params["count"] = len(seeds)
    if pi.kind == "prompt":
        params["scenes"] = len(prompts)
    return _finish(pi, task, params, outputs)


def _mesh_plan(pi: PlanInput, params: dict[str, Any]) -> Plan:
    """Image → 3D: one seed, one file per requested format (``cat.glb``, ``cat.ply``…)."""
    seed = resolve_seeds({**params, "count": 1, "seeds": None}, pi.input_sha256)[0]
    stem = sanitize_name(output_dir(pi.inbox, pi.rel).name)
    outputs = [
        PlannedOutput(
            index=i,
            file=f"{stem}.{fmt}",
            seed=seed,
            prompt="",
            negative_prompt="",
            steps=int(params["steps"]),
            guidance=float(params["guidance"]),
            strength=float(params["strength"]),
        )
        for i, fmt in enumerate(params["formats"])
    ]
    for key in ("prompt", "negative_prompt", "prompts", "count", "seeds", "strength", "vary"):
        params.pop(key, None)
    params.update(task="mesh", seed=seed, formats=list(params["formats"]))
    return _finish(pi, "mesh", params, outputs)


def _finish(
    pi: PlanInput, task: str, params: dict[str, Any], outputs: Sequence[PlannedOutput]
) -> Plan:
    key_material = {
        "generator": GENERATOR_VERSION,
        "task": task,
        "input": pi.input_sha256,
        "mask": pi.mask.sha256 if pi.mask else None,
        "params": {k: v for k, v in params.items() if k != "force"},
        "model": {"alias": pi.model.alias, "source": pi.model.describe()},
        "lora": None if pi.lora is None else {"alias": pi.lora.alias, "path": pi.lora.path},
        "outputs": [[o.file, o.seed, o.prompt, o.steps, o.guidance, o.strength] for o in outputs],
    }
    return Plan(
        job_key=sha256_text(canonical_json(key_material)),
        task=task,
        inbox=pi.inbox,
        rel=pi.rel,
        input_sha256=pi.input_sha256,
        input_bytes=pi.input_bytes,
        out_dir=output_dir(pi.inbox, pi.rel),
        params=params,
        model=pi.model,
        lora=pi.lora,
        mask=pi.mask,
        sidecars=pi.sidecars,
        outputs=tuple(outputs),
        force=bool(params.get("force", False)),
    )


def failure_key(fingerprint: str, message: str) -> str:
    """The job key recorded for an input that could not be planned."""
    return sha256_text(canonical_json({"failed": fingerprint, "error": message}))


def fingerprint(config_fp: str, deps: Sequence[Dependency]) -> str:
    """Hash of the config and every dependency's content: unchanged ⇒ nothing to redo."""
    items = sorted((d.path, d.sha256) for d in deps)
    return sha256_text(canonical_json({"config": config_fp, "deps": items}))


def config_fingerprint(values: Mapping[str, Any]) -> str:
    """Hash of the settings that shape job parameters (defaults, presets, models, loras…)."""
    return sha256_text(canonical_json({"generator": GENERATOR_VERSION, **values}))


@functools.lru_cache(maxsize=32)
def sampler_name(model: ModelSource) -> str:
    """The scheduler class of a diffusers folder (``DDIMScheduler``…), for the A1111 text.

    Read from ``scheduler/scheduler_config.json`` without importing diffusers; hub ids and
    single files report ``default``.
    """
    if model.kind != "folder":
        return "default"
    try:
        with open(Path(model.ref) / "scheduler" / "scheduler_config.json", encoding="utf-8") as f:
            name = json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return "default"
    return name if isinstance(name, str) and name else "default"
