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
from daemon.intake.paths import confine
from daemon.intake.scenes import apply_template, read_prompt_text, split_scenes
from daemon.planning.inputs import Hasher, base_dependencies, hash_dependencies, relative
from daemon.planning.keys import fingerprint, settings_fingerprint
from daemon.planning.model import Dependency, Plan, PlanInput, output_dir, resolve_task
from daemon.planning.params import Params, read_sidecar, resolve_params
from daemon.tasks.context import Draft, Prepared
from daemon.tasks.probes import check_endpoints, check_mask, probe_dependency
from daemon.tasks.registry import TASKS
from daemon.values import Task


def prepare(settings: Settings, hasher: Hasher, candidate: Candidate) -> Prepared:
    """Read sidecars, validate parameters, hash dependencies and build the plan."""
    deps = list(hash_dependencies(hasher, candidate, base_dependencies(candidate)))
    config_fp = settings_fingerprint(settings, candidate.inbox.default_task)
    out_dir = output_dir(candidate.inbox, candidate.rel)
    try:
        plan = _plan(settings, hasher, candidate, deps)
    except InputError as exc:
        return Prepared(candidate, fingerprint(config_fp, deps), tuple(deps), out_dir, error=exc)
    return Prepared(candidate, fingerprint(config_fp, deps), tuple(deps), plan.out_dir, plan=plan)


def _plan(settings: Settings, hasher: Hasher, candidate: Candidate, deps: list[Dependency]) -> Plan:
    layers: list[tuple[str, dict[str, Any]]] = []
    sidecar_paths = list(candidate.defaults)
    if candidate.sidecar is not None:
        sidecar_paths.append(candidate.sidecar)
    for path in sidecar_paths:
        display = relative(candidate, path)
        layers.append((display, read_sidecar(path, display, settings.max_sidecar_bytes)))
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

    notes: list[str] = []
    image_size = None
    if kind == "image":
        # Every image task decodes the input: refuse a bad one now, as the job would.
        image_size = probe_dependency(settings, inbox.path, by_path[candidate.rel]).size
        if mask is not None and task is Task.inpaint:
            check_mask(settings, inbox.path, mask, image_size)
        elif mask is not None:
            notes.append(f"{mask.path}: mask not used: the task is {task.value}")
            mask = None
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
            scenes=scenes(candidate, params) if kind == "prompt" else (),
            mask=mask if kind != "job" else None,
            sidecars=sidecar_deps,
            image_size=image_size,
            set_by_sidecars=frozenset(key for _, layer in layers for key in layer),
            notes=tuple(notes),
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


def scenes(candidate: Candidate, params: Params) -> tuple[str, ...]:
    """A prompt file's scenes: split, excluded sections dropped, the template applied."""
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
    template = params.prompt_template or "{text}"
    return tuple(apply_template(template, s) for s in found)
