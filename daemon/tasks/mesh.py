"""Image → 3D jobs: Shap-E through the generator, meshes written atomically, manifest last."""

from __future__ import annotations

import dataclasses
from typing import cast

from daemon.errors import Interrupted
from daemon.generators import GenerationEvents, MeshFormat, MeshRequest
from daemon.intake.images import load_input_image
from daemon.outputs.files import atomic_write_bytes, sha256_file
from daemon.outputs.manifest_fields import OutputEntry
from daemon.outputs.names import sanitize_name
from daemon.planning.keys import finish_plan, input_version, resolve_seeds
from daemon.planning.model import Plan, PlannedOutput, output_dir
from daemon.tasks.context import Draft, JobContext, Prepared, TaskRun
from daemon.tasks.records import job_manifest, replace_manifest, write_canceled
from daemon.values import Task

# Keys that mean nothing for a mesh: left out of its manifest and key.
_NOT_RECORDED = frozenset(
    {"prompt", "negative_prompt", "prompts", "count", "seeds", "strength", "vary", "sampler"}
    | {"name_style", "scenes", "fps", "size", "base", "expressions"}
)


def plan(draft: Draft) -> Plan:
    """One seed, one file per requested format (``cat.glb``, ``cat.ply``…)."""
    pi = draft.input
    params = pi.params
    version = input_version(pi)
    seed = resolve_seeds(params.replace(seeds=None), pi.input_sha256, count=1, version=version)[0]
    stem = sanitize_name(output_dir(pi.inbox, pi.rel).name)
    outputs = [
        PlannedOutput(
            index=i,
            file=f"{stem}.{fmt}",
            seed=seed,
            prompt="",
            negative_prompt="",
            steps=params.steps,
            guidance=params.guidance,
            strength=params.strength,
        )
        for i, fmt in enumerate(params.formats)
    ]
    if params.texture and "obj" in params.formats:
        # The OBJ's material and texture, named as the generator names them in the MTL.
        for companion in (f"{stem}.mtl", f"{stem}-texture.png"):
            outputs.append(dataclasses.replace(outputs[0], index=len(outputs), file=companion))
    resolved = params.replace(task=Task.mesh.value, seed=seed)
    record = resolved.as_record(_NOT_RECORDED)
    # Textures used to be vertex colours; baked textures are made anew (other meshes are not).
    extra = {"texture": "baked"} if params.texture else None
    return finish_plan(pi, Task.mesh, resolved, record, outputs, key_extra=extra)


def run(ctx: JobContext, prepared: Prepared, force: bool, started: float) -> TaskRun:
    """Make the mesh of one image in every requested format."""
    plan = prepared.plan
    assert plan is not None
    ctx.check_space(plan.out_dir)
    loaded = load_input_image(plan.inbox.path / plan.rel, plan.rel, ctx.settings.max_pixels)
    notes = [*plan.notes, *loaded.warnings]
    formats = plan.params.formats
    ctx.progress.record(0, len(formats), "")
    request = MeshRequest(
        model=plan.model,
        image=loaded.image,
        display=plan.rel,
        steps=plan.params.steps,
        guidance=plan.params.guidance,
        seed=plan.outputs[0].seed,
        resolution=plan.params.mesh_resolution,
        formats=cast(tuple[MeshFormat, ...], formats),
        texture=plan.params.texture,
        name=plan.outputs[0].file.rsplit(".", 1)[0],
    )
    events = GenerationEvents(
        on_image=lambda index, image: None,
        on_step=lambda step, steps: ctx.progress.step(0, len(formats), step, steps),
        should_stop=ctx.should_stop,
        on_warning=notes.append,
    )
    try:
        meshes = ctx.generator_for(plan.model, 0, len(formats)).generate_mesh(request, events)
    except Interrupted:
        reason = ctx.cancel_reason()
        if reason is not None:  # a mesh is all or nothing: canceled with no outputs
            planned = len(formats)
            out_dir = plan.out_dir
            write_canceled(
                ctx, prepared, out_dir, reason, outputs=(), planned=planned, started=started
            )
        raise
    files: list[OutputEntry] = []
    for out in plan.outputs:
        path = plan.out_dir / out.file
        atomic_write_bytes(path, meshes[path.suffix.lstrip(".")])
        files.append(OutputEntry(out.file, sha256_file(path), path.stat().st_size, seed=out.seed))
        ctx.progress.finish((out.index,))
        ctx.progress.on_image(len(files), len(plan.outputs))
    replace_manifest(
        prepared,
        job_manifest(prepared, started, ctx.clock(), ctx.device_name(), ctx.attempts),
        files,
        notes,
    )
    return TaskRun(len(files), 0, tuple(notes))
