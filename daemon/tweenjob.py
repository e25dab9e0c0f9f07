"""Tween jobs: copy endpoints, make the missing frames, write manifests and a preview GIF."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from PIL import Image

from daemon.errors import InputError
from daemon.generators import GenerationEvents, TweenRequest
from daemon.images import LoadedImage, load_input_image
from daemon.manifest import manifest_is_done, write_manifest
from daemon.outputs import (
    OutputFile,
    a1111_parameters,
    atomic_write_bytes,
    read_dropforge_chunk,
    sha256_file,
    write_png,
)
from daemon.plan import sampler_name
from daemon.sequences import SEQUENCES_DIR

if TYPE_CHECKING:
    from pathlib import Path

    from daemon.journal import Job
    from daemon.plan import Plan
    from daemon.prepare import Prepared
    from daemon.sequences import SequencePlan
    from daemon.worker import Worker

PREVIEW_NAME = "preview.gif"
PREVIEW_MS = 120


def run_tween(
    worker: Worker, job: Job, prepared: Prepared, plan: Plan, force: bool, started: float
) -> tuple[int, int, list[str]]:
    """Make every sequence of a tween job; return (frames made, frames kept, notes)."""
    worker.check_space(plan.out_dir)
    notes: list[str] = []
    made = kept = 0
    total = sum(len(s.frames) for s in plan.sequences)
    progress = [0]
    summaries: list[dict[str, Any]] = []
    for seq in plan.sequences:
        if not force and manifest_is_done(seq.out_dir, seq.job_key):
            kept += len(seq.frames)
            progress[0] += len(seq.frames)
        else:
            m, k = _run_sequence(
                worker, job, prepared, plan, seq, force, started, notes, progress, total
            )
            made, kept = made + m, kept + k
        summaries.append(
            {
                "path_id": seq.path_id,
                "folder": f"{SEQUENCES_DIR}/{seq.out_dir.name}",
                "job_key": seq.job_key,
                "frames": len(seq.frames),
            }
        )
    manifest = worker.manifest_base(prepared, started, worker.clock())
    manifest["sequences"] = summaries
    manifest["warnings"] = notes
    write_manifest(plan.out_dir, manifest)
    return made, kept, notes


def _load(worker: Worker, plan: Plan, rel: str) -> LoadedImage:
    return load_input_image(plan.inbox.path / rel, rel, worker.settings.max_pixels)


def _run_sequence(
    worker: Worker,
    job: Job,
    prepared: Prepared,
    plan: Plan,
    seq: SequencePlan,
    force: bool,
    started: float,
    notes: list[str],
    progress: list[int],
    total: int,
) -> tuple[int, int]:
    start, end = _load(worker, plan, seq.start.path), _load(worker, plan, seq.end.path)
    notes += [*start.warnings, *end.warnings]
    size = start.image.size
    if end.image.size != size:
        raise InputError(
            seq.end.path,
            f"endpoint is {end.image.size[0]}x{end.image.size[1]} but {seq.start.path} is "
            f"{size[0]}x{size[1]}: tween endpoints must have the same size",
            key="end",
            rule="same size as start",
            value=f"{end.image.size[0]}x{end.image.size[1]}",
        )
    files: dict[float, OutputFile] = {}
    existing: dict[float, Image.Image] = {}
    for frame in seq.frames:
        path = seq.out_dir / frame.file
        if frame.seed is None:  # an endpoint: copied byte for byte
            source = plan.inbox.path / (seq.start if frame.t == 0.0 else seq.end).path
            if not path.is_file() or sha256_file(path) != sha256_file(source):
                atomic_write_bytes(path, source.read_bytes())
            files[frame.t] = OutputFile(frame.file, sha256_file(path), path.stat().st_size)
            continue
        chunk = None if force else read_dropforge_chunk(path)
        if chunk and chunk.get("job_key") == seq.job_key and chunk.get("t") == frame.t:
            with Image.open(path) as im:
                existing[frame.t] = im.convert("RGB")
            files[frame.t] = OutputFile(frame.file, sha256_file(path), path.stat().st_size)
    kept = len(existing)
    progress[0] += len(files)
    worker.journal.set_progress(job.id, progress[0], total, seq.path_id)
    by_t = {f.t: f for f in seq.frames}
    needed = tuple(f.t for f in seq.frames if f.seed is not None and f.t not in existing)
    width, height = max(64, size[0] // 8 * 8), max(64, size[1] // 8 * 8)

    def on_frame(t: float, image: Image.Image) -> None:
        frame = by_t[t]
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        files[t] = write_png(
            seq.out_dir / frame.file,
            image,
            _parameters(plan, frame.seed or 0, width, height, t),
            {"job_key": seq.job_key, "t": t, "seed": frame.seed},
        )
        progress[0] += 1
        worker.journal.set_progress(job.id, progress[0], total, f"{seq.path_id} {frame.file}")
        worker.progress.on_image(job, progress[0], total)

    def on_step(step: int, steps: int) -> None:
        worker.journal.set_progress(job.id, progress[0], total, f"step {step}/{steps}")
        worker.progress.on_step(job, step, steps)

    if needed:
        request = TweenRequest(
            model=plan.model,
            start=start.image,
            end=end.image,
            width=width,
            height=height,
            depth=int(plan.params["depth"]),
            prompt=str(plan.params.get("prompt", "")),
            negative_prompt=str(plan.params.get("negative_prompt", "")),
            steps=int(plan.params["steps"]),
            guidance=float(plan.params["guidance"]),
            strength=float(plan.params["strength"]),
            seed=int(plan.params["seed"]),
            times_needed=needed,
            existing=existing,
            lora=plan.lora,
            max_batch=worker.settings.max_batch,
        )
        events = GenerationEvents(
            on_image=lambda index, image: None,
            on_step=on_step,
            should_stop=worker.stop.is_set,
            on_warning=notes.append,
            on_frame=on_frame,
        )
        worker.generator.generate_tween(request, events)
    _write_preview(seq.out_dir, [seq.out_dir / f.file for f in seq.frames])
    manifest = worker.manifest_base(prepared, started, worker.clock())
    manifest.update(
        path_id=seq.path_id,
        expr_start=seq.expr_start,
        expr_end=seq.expr_end,
        pose=seq.pose,
        frames=[{"t": f.t, "file": f.file} for f in seq.frames],
        job_key=seq.job_key,
        endpoints=[{"path": d.path, "sha256": d.sha256} for d in (seq.start, seq.end)],
    )
    manifest["outputs"] = [
        {
            "file": files[f.t].file,
            "sha256": files[f.t].sha256,
            "bytes": files[f.t].bytes,
            "seed": f.seed,
            "t": f.t,
            "prompt": plan.params.get("prompt", "") if f.seed is not None else None,
        }
        for f in seq.frames
    ]
    preview = seq.out_dir / PREVIEW_NAME
    manifest["outputs"].append(
        {
            "file": PREVIEW_NAME,
            "sha256": sha256_file(preview),
            "bytes": preview.stat().st_size,
            "seed": None,
            "t": None,
            "prompt": None,
            "role": "preview",
        }
    )
    manifest["warnings"] = notes
    write_manifest(seq.out_dir, manifest)
    return len(needed), kept


def _parameters(plan: Plan, seed: int, width: int, height: int, t: float) -> str:
    extra: dict[str, Any] = {"Denoising strength": plan.params["strength"], "Tween t": t}
    if plan.lora is not None:
        extra["Lora"] = f"{plan.lora.alias}:{plan.lora.scale}"
    return a1111_parameters(
        prompt=str(plan.params.get("prompt", "")),
        negative_prompt=str(plan.params.get("negative_prompt", "")),
        steps=int(plan.params["steps"]),
        sampler=sampler_name(plan.model),
        guidance=float(plan.params["guidance"]),
        seed=seed,
        width=width,
        height=height,
        model=plan.model.alias,
        extra=extra,
    )


def _write_preview(folder: Path, frames: list[Path]) -> None:
    """An animated GIF playing the sequence forth and back."""
    images = []
    for path in frames:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    loop = images + images[-2:0:-1]
    buffer = io.BytesIO()
    loop[0].save(
        buffer, format="GIF", save_all=True, append_images=loop[1:], duration=PREVIEW_MS, loop=0
    )
    atomic_write_bytes(folder / PREVIEW_NAME, buffer.getvalue())
