"""What every task records: the manifest fields all jobs share, and the A1111 text of a PNG."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from daemon.generators.samplers import sampler_for_scheduler
from daemon.outputs.manifest import (
    Manifest,
    ManifestStatus,
    installed_versions,
    read_manifest,
    remove_obsolete_outputs,
    write_manifest,
)
from daemon.outputs.manifest_fields import (
    AttemptRecord,
    FileRecord,
    InputRecord,
    LoraRecord,
    ModelRecord,
    OutputEntry,
    SequenceSummary,
    Timings,
)
from daemon.outputs.png import a1111_parameters
from daemon.planning.model import Plan
from daemon.tasks.context import JobContext, Prepared
from daemon.values import CancelReason, ModelSource


def job_manifest(
    prepared: Prepared,
    started: float,
    finished: float,
    device: str,
    attempts: tuple[AttemptRecord, ...] = (),
) -> Manifest:
    """The manifest of a finished job with no outputs yet (tasks add theirs), status done;
    ``attempts`` are the earlier claims that did not finish it."""
    plan = prepared.plan
    rel = prepared.candidate.rel
    deps = {d.path: d for d in prepared.deps}
    return Manifest(
        status=ManifestStatus.done,
        job_key=prepared.job_key,
        task=plan.task.value if plan else None,
        input=InputRecord(
            path=rel,
            sha256=deps[rel].sha256 if rel in deps else None,
            bytes=plan.input_bytes if plan else _size(prepared.candidate.path),
        ),
        sidecars=tuple(
            FileRecord(d.path, d.sha256) for d in (plan.sidecars if plan else prepared.deps[1:])
        ),
        params=dict(plan.record) if plan else {},
        model=ModelRecord(plan.model.alias, plan.model.describe()) if plan else None,
        outputs=(),
        timings=Timings(_iso(started), _iso(finished), round(finished - started, 3)),
        versions=installed_versions(),
        device=device,
        warnings=(),
        mask=FileRecord(plan.mask.path, plan.mask.sha256) if plan and plan.mask else None,
        lora=LoraRecord(plan.lora.alias, plan.lora.scale) if plan and plan.lora else None,
        attempts=attempts,
    )


def replace_manifest(
    prepared: Prepared,
    base: Manifest,
    outputs: Sequence[OutputEntry],
    notes: Sequence[str],
) -> Manifest:
    """Write a finished job's manifest listing ``outputs``, then delete what the manifest it
    replaces listed and this one does not (outputs of an older version of the job)."""
    assert prepared.plan is not None
    out_dir = prepared.plan.out_dir
    old = read_manifest(out_dir)
    manifest = dataclasses.replace(base, outputs=tuple(outputs), warnings=tuple(notes))
    write_manifest(out_dir, manifest)
    remove_obsolete_outputs(out_dir, old, manifest)
    return manifest


def failed_manifest(
    prepared: Prepared,
    message: str,
    started: float,
    finished: float,
    device: str,
    attempts: tuple[AttemptRecord, ...] = (),
) -> Manifest:
    """The manifest of a job that failed: what is known of it, and the one-line error."""
    done = job_manifest(prepared, started, finished, device, attempts)
    return dataclasses.replace(done, status=ManifestStatus.failed, error=message, outputs=())


def write_canceled(
    ctx: JobContext,
    prepared: Prepared,
    out_dir: Path,
    reason: CancelReason,
    *,
    outputs: Sequence[OutputEntry],
    planned: int,
    started: float,
    notes: Sequence[str] = (),
    sequences: tuple[SequenceSummary | None, ...] | None = None,
) -> None:
    """Write the manifest of a job stopped for a cancel: status canceled, the outputs it
    finished (kept on disk, reused if the job is retried) and a line saying why."""
    manifest = dataclasses.replace(
        job_manifest(prepared, started, ctx.clock(), ctx.device_name()),
        status=ManifestStatus.canceled,
        outputs=tuple(outputs),
        warnings=(*notes, f"{reason.describe()}, {len(outputs)} of {planned} outputs finished"),
        sequences=sequences,
    )
    write_manifest(out_dir, manifest)
    ctx.log.info("manifest.canceled", outputs=len(outputs), planned=planned)


def parameters_text(
    plan: Plan,
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    guidance: float,
    seed: int,
    width: int,
    height: int,
    extra: Mapping[str, Any],
) -> str:
    """The A1111 ``parameters`` text of one image of ``plan``."""
    return a1111_parameters(
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=steps,
        sampler=plan.params.sampler or sampler_name(plan.model),
        guidance=guidance,
        seed=seed,
        width=width,
        height=height,
        model=plan.model.alias,
        extra=extra,
    )


@functools.lru_cache(maxsize=32)
def sampler_name(model: ModelSource) -> str:
    """The A1111 name of a model's own scheduler (``DDIM``, ``PLMS``, ``DPM++ 2M Karras``…).

    Read from a diffusers folder's ``scheduler/scheduler_config.json`` without importing
    diffusers; a scheduler A1111 has no name for keeps its class name; hub ids and single
    files report ``default``.
    """
    if model.kind != "folder":
        return "default"
    try:
        with open(Path(model.ref) / "scheduler" / "scheduler_config.json", encoding="utf-8") as f:
            config = json.load(f)
        name = config.get("_class_name")
    except (OSError, ValueError, AttributeError):
        return "default"
    if not isinstance(name, str) or not name:
        return "default"
    found = sampler_for_scheduler(name, config)
    return found.name if found is not None else name


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
