"""One candidate → hashed dependencies, effective parameters and a plan (or an input error).

The steps every input shares happen here (its sidecars read and layered, its model, LoRA and
mask resolved, its task chosen); the task's own planner (``registry.TASKS``) does the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from daemon.config import Settings
from daemon.errors import ConfigError, InputError, show_value
from daemon.intake.candidates import Candidate
from daemon.intake.expressions import read_expressions
from daemon.intake.names import is_expressions_file
from daemon.intake.paths import confine, read_small_text
from daemon.intake.scenes import chapter_number, read_prompt_text, split_scenes
from daemon.planning.checks import CHECKS
from daemon.planning.inputs import Hasher, base_dependencies, hash_dependencies, relative
from daemon.planning.keys import fingerprint, settings_fingerprint, sha256_text
from daemon.planning.model import (
    Dependency,
    Plan,
    PlanInput,
    PromptsFile,
    output_dir,
    resolve_task,
)
from daemon.planning.params import Params, read_sidecar, resolve_params
from daemon.planning.scene_prompts import (
    PROMPTS_SUFFIX,
    Edit,
    plan_scenes,
    read_prompts,
    render_prompts,
)
from daemon.tasks.context import Draft, Prepared
from daemon.tasks.probes import check_endpoints, check_mask, probe_dependency
from daemon.tasks.registry import TASKS
from daemon.values import Task


def prepare(settings: Settings, hasher: Hasher, candidate: Candidate) -> Prepared:
    """Read sidecars, validate parameters, hash dependencies and build the plan."""
    deps = list(hash_dependencies(hasher, candidate, base_dependencies(candidate)))
    config_fp = settings_fingerprint(settings, candidate.inbox.default_task)
    out_dir = output_dir(candidate.inbox, candidate.rel)
    output_root = str(candidate.inbox.output) if settings.cluster else None
    try:
        plan = _plan(settings, hasher, candidate, deps)
    except InputError as exc:
        fp = fingerprint(config_fp, deps, output_root=output_root)
        return Prepared(candidate, fp, tuple(deps), out_dir, error=exc)
    fp = fingerprint(config_fp, deps, output_root=output_root)
    return Prepared(candidate, fp, tuple(deps), plan.out_dir, plan=plan)


def _plan(settings: Settings, hasher: Hasher, candidate: Candidate, deps: list[Dependency]) -> Plan:
    layers: list[tuple[str, dict[str, Any]]] = []
    sidecar_paths = list(candidate.defaults)
    if candidate.sidecar is not None:
        sidecar_paths.append(candidate.sidecar)
    for path in sidecar_paths:
        display = relative(candidate, path)
        layers.append((display, read_sidecar(path, display, settings.max_sidecar_bytes)))
    notes: tuple[str, ...] = ()
    if is_expressions_file(candidate.path.name):
        # Seed 004's own job file: a layer below its sidecar (expressions.toml), above folders.
        layer, notes = _expressions_layer(settings, candidate)
        layers.insert(len(candidate.defaults), (candidate.rel, layer))
    params = resolve_params(settings, layers)
    by_path = {d.path: d for d in deps}
    sidecar_deps = tuple(by_path[relative(candidate, p)] for p in sidecar_paths)
    sidecar_display = relative(candidate, sidecar_paths[-1]) if sidecar_paths else candidate.rel

    mask: Dependency | None = None
    if params.mask:
        mask_path = confine(
            candidate.inbox.path,
            params.mask,
            base=candidate.path.parent,
            display=sidecar_display,
            key="mask",
        )
        if not mask_path.is_file():
            raise InputError.bad_value(sidecar_display, "mask", "an existing file", params.mask)
        mask = hash_dependencies(hasher, candidate, [mask_path])[0]
        deps.append(mask)
    elif candidate.mask is not None:
        mask = by_path[relative(candidate, candidate.mask)]

    kind = candidate.kind.value
    inbox = candidate.inbox
    task = resolve_task(params, inbox, kind, candidate.rel, has_mask=mask is not None)
    alias = params.model or ("mesh" if task is Task.mesh else "default")
    try:
        model = settings.model_source(alias)
    except ConfigError:
        choices = ", ".join(sorted(settings.models)) or "none defined"
        raise InputError.bad_value(
            sidecar_display, "model", f"one of the [models] aliases: {choices}", alias
        ) from None
    lora = settings.lora_source(params.lora, params.lora_scale) if params.lora else None

    found_notes = list(notes)  # an expressions.json's
    image_size = None
    if kind == "image":
        # Every image task decodes the input: refuse a bad one now, as the job would.
        image_size = probe_dependency(settings, inbox.path, by_path[candidate.rel]).size
        if mask is not None and task is Task.inpaint:
            check_mask(settings, inbox.path, mask, image_size)
        elif mask is not None:
            found_notes.append(f"{mask.path}: mask not used: the task is {task.value}")
            mask = None
    scene_input: dict[str, Any] = {}
    if kind == "prompt":
        scene_input = prompt_scenes(hasher, candidate, params, deps)
        found_notes += scene_input.pop("notes", ())
    draft = Draft(
        hasher=hasher,
        candidate=candidate,
        deps=deps,
        sidecar_display=sidecar_display,
        input=PlanInput(
            inbox=inbox,
            rel=candidate.rel,
            kind=kind,
            input_sha256=by_path[candidate.rel].sha256,
            input_bytes=candidate.path.stat().st_size,
            params=params,
            model=model,
            lora=lora,
            mask=mask if kind != "job" else None,
            sidecars=sidecar_deps,
            image_size=image_size,
            set_by_sidecars=frozenset(key for _, layer in layers for key in layer),
            notes=tuple(found_notes),
            **scene_input,
        ),
    )
    plan = plan_job(draft)
    check_endpoints(settings, plan)
    return plan


def plan_job(draft: Draft) -> Plan:
    """Choose the task for ``task = "auto"`` (the inbox's or the input kind's default) and
    let that task's planner build the plan."""
    pi = draft.input
    task = resolve_task(pi.params, pi.inbox, pi.kind, pi.rel, has_mask=pi.mask is not None)
    chosen = dataclasses.replace(pi, params=pi.params.replace(task=task.value))
    return TASKS[task].plan(dataclasses.replace(draft, input=chosen))


def prompt_scenes(
    hasher: Hasher, candidate: Candidate, params: Params, deps: list[Dependency]
) -> dict[str, Any]:
    """A prompt file's scenes (headings and excluded sections dropped), their parts and prompts,
    the edits of ``STEM.prompts.toml`` applied; the ``PlanInput`` fields they fill.

    The prompts file is a dependency of the job, hashed as the job will write it; a file that
    cannot be read is one with its content's hash, so that fixing it runs the job again.
    """
    text = read_prompt_text(candidate.path, candidate.rel)
    excluded = list(params.exclude_sections)
    found = split_scenes(text, excluded)
    if not found:
        raise InputError(
            candidate.rel,
            "no scenes left after excluding sections " + ", ".join(show_value(x) for x in excluded),
            key="exclude_sections",
            rule="leaves at least one scene",
            value=excluded,
        )
    if params.scenes:
        for i, number in enumerate(params.scenes, 1):
            if number > len(found):
                raise InputError.bad_value(
                    _innermost(candidate),
                    f"scenes[{i}]",
                    f"a scene number in 1..{len(found)}",
                    number,
                )
    out_dir = output_dir(candidate.inbox, candidate.rel)
    prompts: PromptsFile | None = None
    edits: list[Edit] = []
    path = out_dir / (out_dir.name + PROMPTS_SUFFIX)
    display = f"{candidate.inbox.output.name}/{path.relative_to(candidate.inbox.output).as_posix()}"
    if len(found) > 1 and path.is_file():
        deps.append(Dependency(str(path), hasher.hash_file(path)))
        edits = read_prompts(read_small_text(path, display, 4_000_000), display)
        deps.pop()
    scene_list, notes = plan_scenes(found, params.prompt_template or "{text}", edits, display)
    if len(found) > 1:
        prompts = PromptsFile(path, render_prompts(candidate.path.name, scene_list))
        deps.append(Dependency(str(path), sha256_text(prompts.content)))
    return {
        "scenes": tuple(s.prompt for s in scene_list),
        "scene_plans": tuple(scene_list),
        "chapter": chapter_number(text, candidate.path.name),
        "prompts_file": prompts,
        "notes": tuple(notes),
    }


def _expressions_layer(
    settings: Settings, candidate: Candidate
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """An ``expressions.json`` as a parameter layer (``base_paths`` → ``paths``), checked with
    the file's own key names, and a note naming the keys it holds for other tools."""
    found = read_expressions(candidate.path, candidate.rel, settings.max_sidecar_bytes)
    layer = {
        "paths": CHECKS["paths"](candidate.rel, "base_paths", found.values["base_paths"], settings)
    }
    if "expressions" in found.values:
        layer["expressions"] = CHECKS["expressions"](
            candidate.rel, "expressions", found.values["expressions"], settings
        )
    layer = {k: [dict(v) for v in values] for k, values in layer.items()}
    notes: tuple[str, ...] = ()
    if found.ignored:
        notes = (f"{candidate.rel}: keys not used by dropforge: {', '.join(found.ignored)}",)
    return layer, notes


def _innermost(candidate: Candidate) -> str:
    """The file a scene-selection error names: the innermost sidecar, else the input."""
    if candidate.sidecar is not None:
        return relative(candidate, candidate.sidecar)
    if candidate.defaults:
        return relative(candidate, candidate.defaults[-1])
    return candidate.rel
