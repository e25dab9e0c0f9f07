"""Hashes and seeds: canonical JSON, job keys' material, fingerprints, seed resolution. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from daemon.generators import GENERATOR_VERSION
from daemon.planning.model import Dependency, Plan, PlanInput, PlannedOutput, output_dir
from daemon.values import Task

if TYPE_CHECKING:
    from daemon.config import Settings
    from daemon.planning.params import Params

SEED_SPACE = 2**32
RANDOM = "random"  # seed = "random": seeds drawn for each version of the input


def canonical_json(value: Any) -> str:
    """Stable JSON used for hashing: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    """Hex sha256 of UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resolve_seeds(
    params: Params, input_sha256: str, *, count: int | None = None, version: str | None = None
) -> list[int]:
    """Explicit ``seeds``, else ``seed, seed+1, …``, else drawn (``seed = "random"``, or from
    ``seed_range``), else seeds derived from the content hash.

    ``count`` overrides the parameters' count (a mesh or a tween takes one seed). Draws are
    made from ``version`` (``input_version``; the input's hash when not given): the same
    version of an input always gets the same draw, so a rerun, a restart or a lost journal
    never draws again, and any change to the input, its sidecars or its mask draws anew.
    """
    if params.seeds:
        return [int(s) for s in params.seeds]
    n = params.count if count is None else count
    if params.seed == RANDOM or params.seed_range is not None:
        low, high = params.seed_range or (0, SEED_SPACE - 1)
        return draw_seeds(version or input_sha256, n, low, high)
    base = params.seed if isinstance(params.seed, int) else int(input_sha256[:8], 16)
    return [(base + i) % SEED_SPACE for i in range(n)]


def draw_seeds(version: str, count: int, low: int, high: int) -> list[int]:
    """``count`` distinct seeds in ``low..high``, drawn from ``version`` (the i-th draw does
    not depend on ``count``, so a larger count keeps the seeds already drawn)."""
    span = high - low + 1
    if count >= span:  # the whole range (checks make sure it is large enough)
        return list(range(low, high + 1))[:count]
    seeds: list[int] = []
    attempt = 0
    while len(seeds) < count:
        digest = sha256_text(f"dropforge seed draw\0{version}\0{attempt}")
        seed = low + int(digest[:16], 16) % span
        if seed not in seeds:
            seeds.append(seed)
        attempt += 1
    return seeds


def input_version(pi: PlanInput, *, content: str | None = None) -> str:
    """A hash of what makes this version of an input: its path and content, its sidecar
    stack and its mask (not the settings, so that a settings change draws no new seeds).

    ``content`` replaces the input's own hash: one scene's text of a prompt file, so that
    editing a scene draws new seeds for that scene only.
    """
    return sha256_text(
        canonical_json(
            {
                "input": [pi.rel, content or pi.input_sha256],
                "sidecars": [[d.path, d.sha256] for d in pi.sidecars],
                "mask": pi.mask.sha256 if pi.mask else None,
            }
        )
    )


def spread(low: float, high: float, count: int, index: int) -> float:
    """Evenly spread ``count`` values from low to high (both ends included)."""
    if count == 1:
        return low
    return low + (high - low) * index / (count - 1)


def failure_key(deps: Sequence[Dependency], message: str) -> str:
    """The job key recorded for an input that could not be planned: its files and the error.

    The settings are left out: a settings change that leaves the error as it was (an alias
    the input does not name) leaves the failed job as it is.
    """
    items = sorted((d.path, d.sha256) for d in deps)
    return sha256_text(canonical_json({"failed": items, "error": message}))


def fingerprint(
    config_fp: str, deps: Sequence[Dependency], *, output_root: str | None = None
) -> str:
    """Hash of the config and every dependency's content: unchanged ⇒ nothing to redo.

    With ``output_root`` (a cluster), dependencies in the output tree, recorded by their
    absolute path, enter as ``<output>/REL``: hosts mount the share at different places.
    """
    items = sorted((_portable(d.path, output_root), d.sha256) for d in deps)
    return sha256_text(canonical_json({"config": config_fp, "deps": items}))


def _portable(path: str, output_root: str | None) -> str:
    if (
        output_root
        and path.startswith(output_root)
        and path[len(output_root) : len(output_root) + 1] in ("/", "\\")
    ):
        return "<output>/" + path[len(output_root) + 1 :].replace("\\", "/")
    return path


def config_fingerprint(values: Mapping[str, Any]) -> str:
    """Hash of the settings that shape job parameters (defaults, presets, models, loras…)."""
    return sha256_text(canonical_json({"generator": GENERATOR_VERSION, **values}))


def settings_fingerprint(settings: Settings, default_task: str) -> str:
    """Hash of every setting that shapes a job's parameters in one inbox."""
    return config_fingerprint(
        {
            "defaults": dict(settings.defaults),
            "presets": {k: dict(v) for k, v in settings.presets.items()},
            "models": {k: settings.model_source(k).key_source() for k in settings.models},
            "loras": dict(settings.loras) if settings.cluster is None else sorted(settings.loras),
            "default_task": default_task,
            "max_pixels": settings.max_pixels,
        }
    )


def output_key(pi: PlanInput, task: Task, params: Params, out: PlannedOutput) -> str:
    """The key of one image: everything that makes its pixels, nothing that only names it.

    A prompt file's own hash is left out (its scene's prompt is in), so editing one scene
    leaves the keys of the other scenes' images as they were.
    """
    lora = pi.lora
    material = {
        "generator": GENERATOR_VERSION,
        "task": task.value,
        "input": None if pi.kind == "prompt" else pi.input_sha256,
        "mask": pi.mask.sha256 if pi.mask else None,
        "model": {"alias": pi.model.alias, "source": pi.model.key_source()},
        "lora": None if lora is None else [lora.alias, lora.key_path(), lora.scale],
        "size": [params.width, params.height],
        "sampler": params.sampler,
        "prompt": out.prompt,
        "negative_prompt": out.negative_prompt,
        "seed": out.seed,
        "steps": out.steps,
        "guidance": out.guidance,
        "strength": None if task is Task.text2image else out.strength,
        "varied": dict(out.varied),
    }
    return sha256_text(canonical_json(material))


def finish_plan(
    pi: PlanInput,
    task: Task,
    params: Params,
    record: Mapping[str, Any],
    outputs: Sequence[PlannedOutput],
    notes: Sequence[str] = (),
    key_extra: Mapping[str, Any] | None = None,
) -> Plan:
    """The plan of an image or mesh job, with the key over everything that shapes its outputs.

    ``key_extra`` is hashed into the key as well: a task's way of making one kind of its
    outputs anew (say, after a change to how textures are made) without touching other keys.
    """
    key_material = {
        "generator": GENERATOR_VERSION,
        "task": task.value,
        "input": pi.input_sha256,
        "mask": pi.mask.sha256 if pi.mask else None,
        "params": {k: v for k, v in record.items() if k != "force"},
        "model": {"alias": pi.model.alias, "source": pi.model.key_source()},
        "lora": None if pi.lora is None else {"alias": pi.lora.alias, "path": pi.lora.key_path()},
        "outputs": [[o.file, o.seed, o.prompt, o.steps, o.guidance, o.strength] for o in outputs],
    }
    if key_extra:
        key_material["extra"] = dict(key_extra)
    return Plan(
        job_key=sha256_text(canonical_json(key_material)),
        task=task,
        inbox=pi.inbox,
        rel=pi.rel,
        input_sha256=pi.input_sha256,
        input_bytes=pi.input_bytes,
        out_dir=output_dir(pi.inbox, pi.rel),
        params=params,
        record=record,
        model=pi.model,
        lora=pi.lora,
        mask=pi.mask,
        sidecars=pi.sidecars,
        outputs=tuple(outputs),
        force=params.force,
        notes=(*pi.notes, *notes),
    )
