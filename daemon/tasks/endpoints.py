"""Tween endpoints made from one base image (seed 004's extreme expressions): img2img with each
expression's prompt, written to ``endpoints/{expr}__{pose}.png`` in the job's output folder
before the sequences that start or end on them are tweened."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image, ImageOps

from daemon.generators import GenerationEvents, ImageRequest, ImageSpec
from daemon.intake.images import load_input_image
from daemon.outputs.files import OutputFile, sha256_file
from daemon.outputs.manifest_fields import OutputEntry
from daemon.outputs.png import read_dropforge_chunk, write_png
from daemon.planning.model import GeneratedEndpoint, Plan
from daemon.tasks.context import JobContext
from daemon.tasks.records import parameters_text
from daemon.tasks.sequences import parse_size
from daemon.values import Task


def make_endpoints(ctx: JobContext, plan: Plan, force: bool, notes: list[str]) -> list[OutputEntry]:
    """Make the job's missing generated endpoints; return the manifest entries of all of them.

    An endpoint on disk whose ``dropforge`` chunk holds its key is kept (``force`` remakes it).
    """
    if not plan.generated or plan.base is None:
        return []
    files: dict[str, OutputFile] = {}
    missing: list[GeneratedEndpoint] = []
    for endpoint in plan.generated:
        path = Path(endpoint.dep.path)
        chunk = None if force else read_dropforge_chunk(path)
        if chunk and chunk.get("key") == endpoint.dep.sha256:
            files[endpoint.file] = OutputFile(endpoint.file, sha256_file(path), path.stat().st_size)
        else:
            missing.append(endpoint)
    if missing:
        base_path = plan.inbox.path / plan.base.path
        loaded = load_input_image(base_path, plan.base.path, ctx.settings.max_pixels)
        notes += loaded.warnings
        size = parse_size(plan.params.size) or (
            max(64, loaded.image.width // 8 * 8),
            max(64, loaded.image.height // 8 * 8),
        )
        base = ImageOps.fit(loaded.image.convert("RGB"), size, Image.Resampling.LANCZOS)
        params = plan.params
        specs = tuple(
            ImageSpec(
                i, e.prompt, params.negative_prompt, e.seed, params.steps, params.guidance,
                params.strength,
            )
            for i, e in enumerate(missing)
        )  # fmt: skip

        def on_image(index: int, image: Image.Image) -> None:
            endpoint = missing[index]
            text = parameters_text(
                plan,
                prompt=endpoint.prompt,
                negative_prompt=params.negative_prompt,
                steps=params.steps,
                guidance=params.guidance,
                seed=endpoint.seed,
                width=size[0],
                height=size[1],
                extra={"Denoising strength": params.strength, "Task": "tween endpoint"},
            )
            chunk = {"job_key": plan.job_key, "key": endpoint.dep.sha256, "expr": endpoint.expr}
            written = write_png(Path(endpoint.dep.path), image, text, chunk)
            files[endpoint.file] = dataclasses.replace(written, file=endpoint.file)
            ctx.log.info("output.written", file=endpoint.file, role="endpoint")

        request = ImageRequest(
            task=Task.variations,
            model=plan.model,
            width=size[0],
            height=size[1],
            images=specs,
            init_image=base,
            lora=plan.lora,
            max_batch=ctx.settings.max_batch,
            sampler=params.sampler,
        )
        events = GenerationEvents(
            on_image=on_image, should_stop=ctx.should_stop, on_warning=notes.append
        )
        ctx.generator_for(plan.model, 0, len(specs)).generate_images(request, events)
    return [
        OutputEntry(
            files[e.file].file,
            files[e.file].sha256,
            files[e.file].bytes,
            seed=e.seed,
            prompt=e.prompt,
            role="endpoint",
        )
        for e in plan.generated
    ]
