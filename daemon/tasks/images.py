"""Image tasks (text2image, variations, inpaint): seeds × prompts → PNGs, a contact sheet, the
manifest last. A run keeps the images an interrupted run of the same job already wrote."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from daemon.errors import InputError, Interrupted
from daemon.generators import GenerationEvents, ImageRequest, ImageSpec
from daemon.intake.images import load_input_image, load_mask
from daemon.outputs.contact import contact_sheet, contact_thumbnail
from daemon.outputs.files import OutputFile, atomic_write_bytes, sha256_file
from daemon.outputs.manifest import read_manifest
from daemon.outputs.manifest_fields import OutputEntry
from daemon.outputs.names import sanitize_name
from daemon.outputs.png import read_dropforge_chunk, write_png
from daemon.outputs.ratings import discarded_missing
from daemon.outputs.thumbs import THUMB_DIR, save_thumbnail
from daemon.planning.keys import (
    RANDOM,
    finish_plan,
    input_version,
    output_key,
    resolve_seeds,
    sha256_text,
    spread,
)
from daemon.planning.model import Plan, PlanInput, PlannedOutput, output_dir
from daemon.planning.scene_prompts import descriptive_name
from daemon.planning.sizes import choose_size
from daemon.tasks.context import Draft, JobContext, Prepared, TaskRun
from daemon.tasks.records import job_manifest, parameters_text, replace_manifest, write_canceled
from daemon.values import Task

CONTACT_NAME = "contact.png"
PROMPTS_ROLE = "prompts"
VARY_INT_KEYS = ("steps",)
# Keys that mean nothing for an image: left out of its manifest and key.
_TWEEN_ONLY = frozenset({"fps", "size", "base", "expressions"})


# --- plan ------------------------------------------------------------------------------------


def plan(draft: Draft) -> Plan:
    """Resolve seeds, prompts (a prompt file's scenes) and outputs; compute the job key."""
    pi = draft.input
    params = pi.params
    task = Task(params.task)
    if task is Task.inpaint and pi.mask is None:
        stem = PurePosixPath(pi.rel).stem
        raise InputError(
            pi.rel,
            f"inpaint needs a mask: add {stem}.mask.png beside it or set mask in {stem}.toml",
            key="mask",
            rule="required for inpaint",
            value=None,
        )
    notes: list[str] = []
    if task in (Task.variations, Task.inpaint) and pi.image_size is not None:
        box = (params.width, params.height)
        size = choose_size(pi.rel, pi.image_size, box, pi.set_by_sidecars)
        params = params.replace(width=size.width, height=size.height)
        notes += [size.note] if size.note else []
    if params.seed_range is not None and params.seeds is None:
        first, last = params.seed_range
        if last - first + 1 < params.count:
            raise InputError(
                draft.sidecar_display,
                f"seed_range must hold at least count ({params.count}) seeds, "
                f"got [{first}, {last}]",
                key="seed_range",
                rule=f"at least {params.count} seeds",
                value=[first, last],
            )
    seeds = resolve_seeds(params, pi.input_sha256, version=input_version(pi))
    stem = sanitize_name(output_dir(pi.inbox, pi.rel).name)
    groups = _prompt_groups(pi, seeds, stem)
    outputs: list[PlannedOutput] = []
    for prompt, scene, names, group_seeds in groups:
        for s_index, (seed, name) in enumerate(zip(group_seeds, names, strict=True)):
            values: dict[str, Any] = {
                "steps": params.steps,
                "guidance": params.guidance,
                "strength": params.strength,
            }
            varied: dict[str, float | int] = {}
            for key, (low, high) in params.vary.items():
                value = spread(float(low), float(high), len(seeds), s_index)
                varied[key] = round(value) if key in VARY_INT_KEYS else round(value, 4)
            values.update({k: v for k, v in varied.items() if k in values})
            out = PlannedOutput(
                index=len(outputs),
                file=name,
                seed=seed,
                prompt=prompt,
                negative_prompt=params.negative_prompt,
                steps=values["steps"],
                guidance=values["guidance"],
                strength=values["strength"],
                scene=scene,
                varied=varied,
            )
            outputs.append(dataclasses.replace(out, key=output_key(pi, task, params, out)))
    if task in (Task.variations, Task.inpaint):
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
    if _seeds_per_scene(pi):
        resolved = params  # each scene's seeds come from its own text: see the outputs
    else:
        resolved = params.replace(seeds=tuple(seeds), seed=seeds[0], count=len(seeds))
    record = resolved.as_record(_TWEEN_ONLY)
    if pi.kind == "prompt":
        record["scene_count"] = len(pi.scene_plans)
    plan = finish_plan(pi, task, resolved, record, outputs, notes)  # pi.notes included
    return dataclasses.replace(plan, prompts_file=pi.prompts_file)


def _seeds_per_scene(pi: PlanInput) -> bool:
    """Multi-scene prompt files without seed or seeds derive each scene's seeds from its text
    (drawn ones, with seed = "random" or seed_range, from the scene's own version), so that
    editing one scene leaves the seeds (and images) of the others alone."""
    params = pi.params
    drawn = params.seed == RANDOM or params.seed_range is not None
    return len(pi.scene_plans) > 1 and (params.seed is None or drawn) and not params.seeds


def _prompt_groups(
    pi: PlanInput, seeds: list[int], stem: str
) -> list[tuple[str, int | None, list[str], list[int]]]:
    """(prompt, scene number, file names, seeds) for each prompt of the job."""
    params = pi.params
    groups: list[tuple[str, int | None, list[str], list[int]]] = []
    if pi.kind != "prompt":
        prompts = list(params.prompts or [params.prompt])
        for p_index, prompt in enumerate(prompts, 1):
            middle = f"-p{p_index:02d}" if len(prompts) > 1 else ""
            groups.append((prompt, None, [f"{stem}{middle}-{s}.png" for s in seeds], seeds))
        return groups
    many = len(pi.scene_plans) > 1
    chosen = [s for s in pi.scene_plans if not params.scenes or s.number in params.scenes]
    for scene in chosen:
        own = seeds
        if _seeds_per_scene(pi):
            version = input_version(pi, content=sha256_text(scene.text))
            own = resolve_seeds(params, sha256_text(scene.text), version=version)
        if params.name_style == "descriptive":
            base = descriptive_name(pi.chapter, scene, scene.name_words)
            names = [f"{base}.png"] if len(own) == 1 else [f"{base}-{s}.png" for s in own]
        else:
            middle = f"-s{scene.number:02d}" if many else ""
            names = [f"{stem}{middle}-{s}.png" for s in own]
        groups.append((scene.prompt, scene.number if many else None, names, own))
    return groups


# --- run -------------------------------------------------------------------------------------


def run(ctx: JobContext, prepared: Prepared, force: bool, started: float) -> TaskRun:
    """Make the missing images in batches, then the contact sheet and the manifest."""
    plan = prepared.plan
    assert plan is not None
    notes: list[str] = list(plan.notes)
    ctx.check_space(plan.out_dir)
    init = mask = None
    if plan.task in (Task.variations, Task.inpaint):
        size = (plan.params.width, plan.params.height)
        max_pixels = ctx.settings.max_pixels
        loaded = load_input_image(plan.inbox.path / plan.rel, plan.rel, max_pixels, size)
        init = loaded.image
        notes += loaded.warnings
        if plan.task is Task.inpaint and plan.mask is not None:
            assert loaded.source_size is not None
            mask_loaded = load_mask(
                plan.inbox.path / plan.mask.path,
                plan.mask.path,
                max_pixels,
                loaded.source_size,
                size,
            )
            mask = mask_loaded.image
            notes += mask_loaded.warnings

    if plan.prompts_file is not None:
        _write_prompts(plan.prompts_file.path, plan.prompts_file.content)
    done: dict[int, OutputFile] = {} if force else _reusable(plan)
    kept = len(done)
    missing = [o for o in plan.outputs if o.index not in done]
    total = len(plan.outputs)
    ctx.progress.finish(done)
    ctx.progress.record(kept, total, "")
    thumbs: dict[int, Image.Image] = {}

    def on_image(index: int, image: Image.Image) -> None:
        out = plan.outputs[index]
        done[index] = write_png(
            plan.out_dir / out.file,
            image,
            _parameters(plan, out),
            {
                "job_key": plan.job_key,
                "index": out.index,
                "key": out.key,
                "seed": out.seed,
                **out.varied,
            },
            sync_folder=False,  # the manifest's write syncs the folder, after every image
        )
        small = contact_thumbnail(image)  # for the contact sheet and the gallery
        if plan.wants_contact_sheet:
            thumbs[index] = small
        try:
            save_thumbnail(ctx.settings.state_dir / THUMB_DIR, plan.out_dir / out.file, small)
        except OSError as exc:  # a cache: the gallery makes it later
            ctx.log.warning("thumbnail.failed", file=out.file, error=str(exc))
        # One line per image written: how the crash tests count generations.
        ctx.log.info("output.written", file=out.file)
        ctx.progress.image(len(done), total, out.file, index)

    steps = ctx.progress.steps(lambda: len(done), lambda: total)
    events = GenerationEvents(
        on_image=on_image,
        on_step=steps.on_step,
        should_stop=ctx.should_stop,
        on_warning=notes.append,
        on_call_step=steps.on_call_step,
    )
    # A varied lora_scale needs one request per scale; everything else batches together.
    groups: dict[float | None, list[PlannedOutput]] = {}
    for out in missing:
        groups.setdefault(_lora_scale(plan, out), []).append(out)
    try:
        for scale, outs in groups.items():
            lora = plan.lora
            if lora is not None and scale is not None:
                lora = dataclasses.replace(lora, scale=scale)
            request = ImageRequest(
                task=plan.task,
                model=plan.model,
                width=plan.params.width,
                height=plan.params.height,
                images=tuple(_spec(o) for o in outs),
                init_image=init,
                mask_image=mask,
                lora=lora,
                max_batch=ctx.settings.max_batch,
                sampler=plan.params.sampler,
            )
            ctx.generator_for(plan.model, len(done), total).generate_images(request, events)
            if ctx.should_stop():
                raise Interrupted("stop requested")
    except Interrupted:
        reason = ctx.cancel_reason()
        if reason is not None:  # a cancel, not a shutdown: say what was finished
            entries = [_entry(out, done[out.index]) for out in plan.outputs if out.index in done]
            write_canceled(
                ctx,
                prepared,
                plan.out_dir,
                reason,
                outputs=entries,
                planned=total,
                started=started,
                notes=notes,
            )
        raise
    _finish(ctx, prepared, plan, done, notes, started, thumbs)
    return TaskRun(len(missing), kept, tuple(notes))


def _reusable(plan: Plan) -> dict[int, OutputFile]:
    """Outputs already on disk with the same image key (from an interrupted run of this job, or
    an earlier version of it that made the same image), or of the same job and index; and
    those of this job a person deleted (a discard is recorded where they were: not remade)."""
    kept: dict[int, OutputFile] = {}
    old = read_manifest(plan.out_dir)
    listed = {e.file: e for e in old.outputs or ()} if old and old.job_key == plan.job_key else {}
    for out in plan.outputs:
        path = plan.out_dir / out.file
        entry = listed.get(out.file)
        if entry is not None and entry.sha256 and entry.bytes and discarded_missing(path):
            kept[out.index] = OutputFile(out.file, entry.sha256, entry.bytes)
            continue
        chunk = read_dropforge_chunk(path)
        if not chunk:
            continue
        same_image = bool(out.key) and chunk.get("key") == out.key
        if same_image or (chunk.get("job_key") == plan.job_key and chunk.get("index") == out.index):
            kept[out.index] = OutputFile(out.file, sha256_file(path), path.stat().st_size)
    return kept


def _write_prompts(path: Path, content: str) -> None:
    """Write ``STEM.prompts.toml`` unless it already holds exactly this (keeps its mtime)."""
    data = content.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data)


def _finish(
    ctx: JobContext,
    prepared: Prepared,
    plan: Plan,
    done: Mapping[int, OutputFile],
    notes: Sequence[str],
    started: float,
    thumbs: Mapping[int, Image.Image],
) -> None:
    files = [_entry(out, done[out.index]) for out in plan.outputs]
    if plan.prompts_file is not None:
        prompts = plan.prompts_file.path
        data = prompts.read_bytes()
        files.append(
            OutputEntry(
                prompts.name, hashlib.sha256(data).hexdigest(), len(data), role=PROMPTS_ROLE
            )
        )
    if plan.wants_contact_sheet:
        items = []
        for out in plan.outputs:
            if out.index in thumbs:  # made in this run: shrunk when it was written
                items.append((thumbs[out.index], tile_label(plan, out)))
                continue
            if discarded_missing(plan.out_dir / out.file):
                continue  # deleted by a person: not on the sheet either
            with Image.open(plan.out_dir / out.file) as im:  # kept from an earlier run
                items.append((contact_thumbnail(im), tile_label(plan, out)))
        sheet = contact_sheet(items)
        tiles = "; ".join(" ".join(label.split("\n")) for _, label in items)
        contact = write_png(
            plan.out_dir / CONTACT_NAME,
            sheet,
            f"contact sheet of {plan.rel}: {tiles}",
            {"job_key": plan.job_key, "index": -1},
        )
        ctx.log.info("output.written", file=CONTACT_NAME, role="contact")
        files.append(OutputEntry(contact.file, contact.sha256, contact.bytes, role="contact"))
    replace_manifest(
        prepared,
        job_manifest(prepared, started, ctx.clock(), ctx.device_name(), ctx.attempts),
        files,
        notes,
    )


def tile_label(plan: Plan, out: PlannedOutput) -> str:
    """A contact-sheet tile's label: its seed, under its scene (or prompt) when there are
    several (``scene 2`` / ``seed 7``)."""
    if out.scene is not None:
        return f"scene {out.scene}\nseed {out.seed}"
    prompts = plan.params.prompts or ()
    if len(prompts) > 1:
        return f"prompt {out.index // (len(plan.outputs) // len(prompts)) + 1}\nseed {out.seed}"
    return f"seed {out.seed}"


def _entry(out: PlannedOutput, written: OutputFile) -> OutputEntry:
    """The manifest entry of one written image."""
    return OutputEntry(
        file=written.file,
        sha256=written.sha256,
        bytes=written.bytes,
        seed=out.seed,
        t=out.t,
        prompt=out.prompt,
        scene=out.scene,
        params=dict(out.varied) if out.varied else None,
    )


def _parameters(plan: Plan, out: PlannedOutput) -> str:
    extra: dict[str, Any] = {}
    if plan.task is not Task.text2image:
        extra["Denoising strength"] = out.strength
    if plan.lora is not None:
        extra["Lora"] = f"{plan.lora.alias}:{_lora_scale(plan, out)}"
    extra["Task"] = plan.task.value
    return parameters_text(
        plan,
        prompt=out.prompt,
        negative_prompt=out.negative_prompt,
        steps=out.steps,
        guidance=out.guidance,
        seed=out.seed,
        width=plan.params.width,
        height=plan.params.height,
        extra=extra,
    )


def _lora_scale(plan: Plan, out: PlannedOutput) -> float | None:
    """The LoRA weight of one output: varied by [vary] lora_scale, else the job's."""
    if plan.lora is None:
        return None
    return float(out.varied.get("lora_scale", plan.lora.scale))


def _spec(out: PlannedOutput) -> ImageSpec:
    return ImageSpec(
        index=out.index,
        prompt=out.prompt,
        negative_prompt=out.negative_prompt,
        seed=out.seed,
        steps=out.steps,
        guidance=out.guidance,
        strength=out.strength,
    )
