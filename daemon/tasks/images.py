"""Image tasks (text2image, variations, inpaint): seeds × prompts → PNGs, a contact sheet, the
manifest last. A run keeps the images an interrupted run of the same job already wrote."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from PIL import Image

from daemon.errors import InputError, Interrupted
from daemon.generators import GenerationEvents, ImageRequest, ImageSpec
from daemon.intake.images import load_input_image, load_mask
from daemon.outputs.contact import contact_sheet, contact_thumbnail
from daemon.outputs.files import OutputFile, sha256_file
from daemon.outputs.manifest import read_manifest, remove_obsolete_outputs, write_manifest
from daemon.outputs.manifest_fields import OutputEntry
from daemon.outputs.names import sanitize_name
from daemon.outputs.png import read_dropforge_chunk, write_png
from daemon.planning.keys import finish_plan, resolve_seeds, spread
from daemon.planning.model import Plan, PlannedOutput, output_dir
from daemon.tasks.context import Draft, JobContext, Prepared, TaskRun
from daemon.tasks.records import job_manifest, parameters_text
from daemon.values import Task

CONTACT_NAME = "contact.png"
VARY_INT_KEYS = ("steps",)


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
    seeds = resolve_seeds(params, pi.input_sha256)
    stem = sanitize_name(output_dir(pi.inbox, pi.rel).name)
    if pi.kind == "prompt":
        prompts, tag = list(pi.scenes), "s"
    else:
        prompts, tag = list(params.prompts or [params.prompt]), "p"
    outputs: list[PlannedOutput] = []
    for p_index, prompt in enumerate(prompts, 1):
        for s_index, seed in enumerate(seeds):
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
            middle = f"-{tag}{p_index:02d}" if len(prompts) > 1 else ""
            outputs.append(
                PlannedOutput(
                    index=len(outputs),
                    file=f"{stem}{middle}-{seed}.png",
                    seed=seed,
                    prompt=prompt,
                    negative_prompt=params.negative_prompt,
                    steps=values["steps"],
                    guidance=values["guidance"],
                    strength=values["strength"],
                    scene=p_index if pi.kind == "prompt" and len(prompts) > 1 else None,
                    varied=varied,
                )
            )
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
    resolved = params.replace(seeds=tuple(seeds), seed=seeds[0], count=len(seeds))
    record = resolved.as_record()
    if pi.kind == "prompt":
        record["scenes"] = len(prompts)
    return finish_plan(pi, task, resolved, record, outputs)


# --- run -------------------------------------------------------------------------------------


def run(ctx: JobContext, prepared: Prepared, force: bool, started: float) -> TaskRun:
    """Make the missing images in batches, then the contact sheet and the manifest."""
    plan = prepared.plan
    assert plan is not None
    notes: list[str] = []
    ctx.check_space(plan.out_dir)
    init = mask = None
    if plan.task in (Task.variations, Task.inpaint):
        loaded = load_input_image(plan.inbox.path / plan.rel, plan.rel, ctx.settings.max_pixels)
        init = loaded.image
        notes += loaded.warnings
        if plan.task is Task.inpaint and plan.mask is not None:
            mask_loaded = load_mask(
                plan.inbox.path / plan.mask.path,
                plan.mask.path,
                ctx.settings.max_pixels,
                init.size,
            )
            mask = mask_loaded.image
            notes += mask_loaded.warnings

    done: dict[int, OutputFile] = {} if force else _reusable(plan)
    kept = len(done)
    missing = [o for o in plan.outputs if o.index not in done]
    total = len(plan.outputs)
    ctx.progress.record(kept, total, "")
    thumbs: dict[int, Image.Image] = {}

    def on_image(index: int, image: Image.Image) -> None:
        out = plan.outputs[index]
        done[index] = write_png(
            plan.out_dir / out.file,
            image,
            _parameters(plan, out),
            {"job_key": plan.job_key, "index": out.index, "seed": out.seed, **out.varied},
            sync_folder=False,  # the manifest's write syncs the folder, after every image
        )
        if plan.wants_contact_sheet:
            thumbs[index] = contact_thumbnail(image)
        # One line per image written: how the crash tests count generations.
        ctx.log.info("output.written", file=out.file)
        ctx.progress.image(len(done), total, out.file)

    events = GenerationEvents(
        on_image=on_image,
        on_step=lambda step, steps: ctx.progress.step(len(done), total, step, steps),
        should_stop=ctx.should_stop,
        on_warning=notes.append,
    )
    # A varied lora_scale needs one request per scale; everything else batches together.
    groups: dict[float | None, list[PlannedOutput]] = {}
    for out in missing:
        groups.setdefault(_lora_scale(plan, out), []).append(out)
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
        )
        ctx.generator().generate_images(request, events)
        if ctx.should_stop():
            raise Interrupted("stop requested")
    _finish(ctx, prepared, plan, done, notes, started, thumbs)
    return TaskRun(len(missing), kept, tuple(notes))


def _reusable(plan: Plan) -> dict[int, OutputFile]:
    """Outputs already on disk from an interrupted run of the same job."""
    kept: dict[int, OutputFile] = {}
    for out in plan.outputs:
        path = plan.out_dir / out.file
        chunk = read_dropforge_chunk(path)
        if chunk and chunk.get("job_key") == plan.job_key and chunk.get("index") == out.index:
            kept[out.index] = OutputFile(out.file, sha256_file(path), path.stat().st_size)
    return kept


def _finish(
    ctx: JobContext,
    prepared: Prepared,
    plan: Plan,
    done: Mapping[int, OutputFile],
    notes: Sequence[str],
    started: float,
    thumbs: Mapping[int, Image.Image],
) -> None:
    files: list[OutputEntry] = []
    for out in plan.outputs:
        written = done[out.index]
        files.append(
            OutputEntry(
                file=written.file,
                sha256=written.sha256,
                bytes=written.bytes,
                seed=out.seed,
                t=out.t,
                prompt=out.prompt,
                scene=out.scene,
                params=dict(out.varied) if out.varied else None,
            )
        )
    if plan.wants_contact_sheet:
        items = []
        for out in plan.outputs:
            if out.index in thumbs:  # made in this run: shrunk when it was written
                items.append((thumbs[out.index], f"seed {out.seed}"))
                continue
            with Image.open(plan.out_dir / out.file) as im:  # kept from an earlier run
                items.append((contact_thumbnail(im), f"seed {out.seed}"))
        sheet = contact_sheet(items)
        contact = write_png(
            plan.out_dir / CONTACT_NAME,
            sheet,
            f"contact sheet of {plan.rel}",
            {"job_key": plan.job_key, "index": -1},
        )
        ctx.log.info("output.written", file=CONTACT_NAME, role="contact")
        files.append(OutputEntry(contact.file, contact.sha256, contact.bytes, role="contact"))
    old = read_manifest(plan.out_dir)
    manifest = dataclasses.replace(
        job_manifest(prepared, started, ctx.clock(), ctx.device_name(), ctx.attempts),
        outputs=tuple(files),
        warnings=tuple(notes),
    )
    write_manifest(plan.out_dir, manifest)
    remove_obsolete_outputs(plan.out_dir, old, manifest)


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
