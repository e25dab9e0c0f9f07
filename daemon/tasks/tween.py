"""Tween jobs run: copy the endpoints, make the missing frames, write each sequence's manifest and
preview GIF, then the job's own manifest listing its sequences."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from daemon.errors import Interrupted
from daemon.generators import GenerationEvents, TweenRequest
from daemon.intake.images import LoadedImage, load_input_image
from daemon.outputs.files import OutputFile, atomic_write_bytes, sha256_file
from daemon.outputs.manifest import manifest_is_done, write_manifest
from daemon.outputs.manifest_fields import FileRecord, OutputEntry, SequenceRecord, SequenceSummary
from daemon.outputs.png import read_dropforge_chunk, write_png
from daemon.planning.model import SEQUENCES_DIR, Plan, SequencePlan
from daemon.tasks.context import JobContext, Prepared, TaskRun
from daemon.tasks.endpoints import make_endpoints
from daemon.tasks.probes import endpoint_mismatch
from daemon.tasks.records import job_manifest, parameters_text, write_canceled
from daemon.tasks.sequences import plan

__all__ = ["plan", "run"]

PREVIEW_NAME = "preview.gif"


def run(ctx: JobContext, prepared: Prepared, force: bool, started: float) -> TaskRun:
    """Make every sequence of a tween job; count frames made and kept."""
    job_plan = prepared.plan
    assert job_plan is not None
    ctx.check_space(job_plan.out_dir)
    notes: list[str] = list(job_plan.notes)
    endpoint_files = make_endpoints(ctx, job_plan, force, notes)
    made = kept = 0
    counter = _Counter(sum(len(s.frames) for s in job_plan.sequences))
    summaries: list[SequenceSummary | None] = []
    for seq in job_plan.sequences:
        first = counter.planned
        counter.planned += len(seq.frames)
        if not force and manifest_is_done(seq.out_dir, seq.job_key):
            kept += len(seq.frames)
            counter.done += len(seq.frames)
            ctx.progress.finish(range(first, counter.planned))
        else:
            try:
                m, k = _run_sequence(
                    ctx, prepared, job_plan, seq, force, started, notes, counter, first
                )
            except Interrupted:
                reason = ctx.cancel_reason()
                if reason is not None:  # the job's own manifest names the finished sequences
                    write_canceled(
                        ctx,
                        prepared,
                        job_plan.out_dir,
                        reason,
                        outputs=(),
                        planned=counter.total,
                        started=started,
                        notes=notes,
                        sequences=tuple(summaries),
                    )
                raise
            made, kept = made + m, kept + k
        summaries.append(
            SequenceSummary(
                path_id=seq.path_id,
                folder=f"{SEQUENCES_DIR}/{seq.out_dir.name}",
                job_key=seq.job_key,
                frames=len(seq.frames),
            )
        )
    manifest = dataclasses.replace(
        job_manifest(prepared, started, ctx.clock(), ctx.device_name(), ctx.attempts),
        sequences=tuple(summaries),
        outputs=tuple(endpoint_files),
        warnings=tuple(notes),
    )
    write_manifest(job_plan.out_dir, manifest)
    return TaskRun(made, kept, tuple(notes))


@dataclasses.dataclass
class _Counter:
    """Frames done of all the job's sequences, for the progress shown."""

    total: int
    done: int = 0
    planned: int = 0  # frames of the sequences begun so far: the next one's first index


def _load(ctx: JobContext, plan: Plan, rel: str) -> LoadedImage:
    return load_input_image(plan.inbox.path / rel, rel, ctx.settings.max_pixels)


def _run_sequence(
    ctx: JobContext,
    prepared: Prepared,
    plan: Plan,
    seq: SequencePlan,
    force: bool,
    started: float,
    notes: list[str],
    counter: _Counter,
    first: int,
) -> tuple[int, int]:
    start, end = _load(ctx, plan, seq.start.path), _load(ctx, plan, seq.end.path)
    notes += [*start.warnings, *end.warnings]
    size = seq.size or start.image.size
    if seq.size is not None:  # endpoints scaled and centre-cropped to fill the frame size
        start = dataclasses.replace(start, image=ImageOps.fit(start.image.convert("RGB"), size))
        end = dataclasses.replace(end, image=ImageOps.fit(end.image.convert("RGB"), size))
    if end.image.size != size:
        raise endpoint_mismatch(seq, size, end.image.size)
    files: dict[float, OutputFile] = {}
    existing: dict[float, Image.Image] = {}
    for frame in seq.frames:
        path = seq.out_dir / frame.file
        if frame.seed is None and seq.size is not None:  # an endpoint fitted to ``size``
            chunk = read_dropforge_chunk(path)
            if not chunk or chunk.get("key") != seq.frames_key or chunk.get("t") != frame.t:
                image = (start if frame.t == 0.0 else end).image
                write_png(path, image, "", {"key": seq.frames_key, "t": frame.t})
            files[frame.t] = OutputFile(frame.file, sha256_file(path), path.stat().st_size)
            continue
        if frame.seed is None:  # an endpoint: copied byte for byte
            source = plan.inbox.path / (seq.start if frame.t == 0.0 else seq.end).path
            if not path.is_file() or sha256_file(path) != sha256_file(source):
                atomic_write_bytes(path, source.read_bytes())
            files[frame.t] = OutputFile(frame.file, sha256_file(path), path.stat().st_size)
            continue
        chunk = None if force else read_dropforge_chunk(path)
        same = chunk and (chunk.get("key") or chunk.get("job_key")) in (seq.frames_key, seq.job_key)
        if chunk and same and chunk.get("t") == frame.t:
            with Image.open(path) as im:
                existing[frame.t] = im.convert("RGB")
            files[frame.t] = OutputFile(frame.file, sha256_file(path), path.stat().st_size)
    kept = len(existing)
    counter.done += len(files)
    index_of = {f.t: first + i for i, f in enumerate(seq.frames)}
    ctx.progress.finish(index_of[t] for t in files)
    ctx.progress.record(counter.done, counter.total, seq.path_id)
    by_t = {f.t: f for f in seq.frames}
    needed = tuple(f.t for f in seq.frames if f.seed is not None and f.t not in existing)
    width, height = max(64, size[0] // 8 * 8), max(64, size[1] // 8 * 8)
    params = plan.params

    def on_frame(t: float, image: Image.Image) -> None:
        frame = by_t[t]
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        files[t] = write_png(
            seq.out_dir / frame.file,
            image,
            _parameters(plan, frame.seed or 0, width, height, t),
            {"job_key": seq.job_key, "key": seq.frames_key, "t": t, "seed": frame.seed},
        )
        counter.done += 1
        note = f"{seq.path_id} {frame.file}"
        ctx.progress.image(counter.done, counter.total, note, index_of[t])

    if needed:
        request = TweenRequest(
            model=plan.model,
            start=start.image,
            end=end.image,
            width=width,
            height=height,
            depth=params.depth,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            steps=params.steps,
            guidance=params.guidance,
            strength=params.strength,
            seed=int(params.seed or 0),  # resolved by the planner
            times_needed=needed,
            existing=existing,
            lora=plan.lora,
            max_batch=ctx.settings.max_batch,
            sampler=params.sampler,
        )
        steps = ctx.progress.steps(lambda: counter.done, lambda: counter.total)
        events = GenerationEvents(
            on_image=lambda index, image: None,
            on_step=steps.on_step,
            on_call_step=steps.on_call_step,
            should_stop=ctx.should_stop,
            on_warning=notes.append,
            on_frame=on_frame,
        )
        generator = ctx.generator_for(plan.model, counter.done, counter.total)
        try:
            generator.generate_tween(request, events)
        except Interrupted:
            reason = ctx.cancel_reason()
            if reason is not None:  # the sequence's finished frames, in its own folder
                entries = [
                    OutputEntry(files[f.t].file, files[f.t].sha256, files[f.t].bytes, t=f.t)
                    for f in seq.frames
                    if f.t in files
                ]
                write_canceled(
                    ctx,
                    prepared,
                    seq.out_dir,
                    reason,
                    outputs=entries,
                    planned=len(seq.frames),
                    started=started,
                    notes=notes,
                )
            raise
    _write_preview(seq.out_dir, [seq.out_dir / f.file for f in seq.frames], params.fps)
    outputs = [
        OutputEntry(
            files[f.t].file,
            files[f.t].sha256,
            files[f.t].bytes,
            seed=f.seed,
            t=f.t,
            prompt=params.prompt if f.seed is not None else None,
        )
        for f in seq.frames
    ]
    preview = seq.out_dir / PREVIEW_NAME
    outputs.append(
        OutputEntry(PREVIEW_NAME, sha256_file(preview), preview.stat().st_size, role="preview")
    )
    manifest = dataclasses.replace(
        job_manifest(prepared, started, ctx.clock(), ctx.device_name(), ctx.attempts),
        job_key=seq.job_key,
        outputs=tuple(outputs),
        warnings=tuple(notes),
        sequence=SequenceRecord(
            path_id=seq.path_id,
            expr_start=seq.expr_start,
            expr_end=seq.expr_end,
            pose=seq.pose,
            frames=tuple((f.t, f.file) for f in seq.frames),
            endpoints=tuple(
                FileRecord(_shown(plan, d.path), d.sha256) for d in (seq.start, seq.end)
            ),
            fps=params.fps,
        ),
    )
    write_manifest(seq.out_dir, manifest)
    return len(needed), kept


def _parameters(plan: Plan, seed: int, width: int, height: int, t: float) -> str:
    params = plan.params
    extra: dict[str, Any] = {"Denoising strength": params.strength, "Tween t": t}
    if plan.lora is not None:
        extra["Lora"] = f"{plan.lora.alias}:{plan.lora.scale}"
    return parameters_text(
        plan,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        steps=params.steps,
        guidance=params.guidance,
        seed=seed,
        width=width,
        height=height,
        extra=extra,
    )


def _shown(plan: Plan, path: str) -> str:
    """An endpoint as a manifest shows it: inside the inbox, or (made by the job) as a path
    relative to the output root."""
    if not Path(path).is_absolute():
        return path
    return Path(path).relative_to(plan.inbox.output).as_posix()


def _write_preview(folder: Path, frames: list[Path], fps: float) -> None:
    """An animated GIF playing the sequence forth and back at ``fps`` frames per second."""
    images = []
    for path in frames:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    loop = images + images[-2:0:-1]
    buffer = io.BytesIO()
    loop[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=loop[1:],
        duration=round(1000 / fps),
        loop=0,
    )
    atomic_write_bytes(folder / PREVIEW_NAME, buffer.getvalue())
