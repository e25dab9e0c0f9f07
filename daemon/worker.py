"""Claim → generate → write → complete, for one job at a time."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, cast

import structlog
from PIL import Image

from daemon.config import Settings
from daemon.errors import (
    DiskFull,
    DropforgeError,
    InputError,
    Interrupted,
    TransientError,
)
from daemon.generators import (
    GenerationEvents,
    Generator,
    ImageRequest,
    ImageSpec,
    ImageTask,
)
from daemon.images import load_input_image, load_mask
from daemon.intake import candidate_for, read_small_table
from daemon.journal import Job, Journal, backoff
from daemon.manifest import (
    installed_versions,
    job_is_done,
    read_manifest,
    remove_obsolete_outputs,
    write_manifest,
)
from daemon.outdirs import escaping_output, foreign_output
from daemon.outputs import (
    OutputFile,
    a1111_parameters,
    contact_sheet,
    contact_thumbnail,
    read_dropforge_chunk,
    sha256_file,
    write_png,
)
from daemon.plan import Plan, PlannedOutput, sampler_name
from daemon.prepare import DependencyMissing, Prepared, prepare

log = structlog.get_logger("dropforge.worker")

CONTACT_NAME = "contact.png"
DISK_RETRY_S = 60.0  # the longest wait of a job held by a full disk or min_free_mb


class Outcome(str, Enum):
    """How one job ended."""

    done = "done"
    skipped = "skipped"
    failed = "failed"
    waiting = "waiting"
    interrupted = "interrupted"
    vanished = "vanished"


@dataclass(frozen=True)
class JobResult:
    """What the report and the status show for one job."""

    inbox: str
    rel: str
    outcome: Outcome
    seconds: float
    message: str = ""
    out_dir: str = ""
    generated: int = 0
    kept: int = 0


@dataclass
class Progress:
    """Callbacks for a progress display: job started, step done, job finished."""

    on_start: Callable[[Job, int], None] = field(default=lambda job, total: None)
    on_image: Callable[[Job, int, int], None] = field(default=lambda job, done, total: None)
    on_step: Callable[[Job, int, int], None] = field(default=lambda job, done, total: None)


class Worker:
    """Runs jobs claimed from the journal through a generator (created on first need)."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        generator_factory: Callable[[], Generator],
        *,
        owner: str,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self._factory = generator_factory
        self._generator: Generator | None = None
        self.owner = owner
        self.stop = stop or threading.Event()
        self.clock = clock
        self.progress = progress or Progress()
        self._inboxes = {str(i.path): i for i in settings.inboxes}

    @property
    def generator(self) -> Generator:
        """The generation backend, created (and torch imported) on first use."""
        if self._generator is None:
            self._generator = self._factory()
        return self._generator

    @property
    def has_generator(self) -> bool:
        """Whether the backend has been created (pipelines may be resident)."""
        return self._generator is not None

    def lease_seconds(self) -> float:
        """How long a claim holds before another process may take the job over."""
        return max(600.0, self.settings.stop_timeout * 4)

    def run_next(self) -> JobResult | None:
        """Claim the oldest runnable job and run it; None when nothing is runnable."""
        job = self.journal.claim(self.owner, self.lease_seconds())
        if job is None:
            return None
        return self.run(job)

    def run(self, job: Job) -> JobResult:
        """Run one claimed job to an end state and record it in the journal."""
        started = self.clock()
        bound = log.bind(job_id=job.id, input=job.input, inbox=job.inbox)
        inbox = self._inboxes.get(job.inbox)
        candidate = (
            candidate_for(
                inbox,
                inbox.path / job.input,
                read_table=lambda p: self.journal.cached_table(p, read_small_table),
            )
            if inbox
            else None
        )
        if inbox is None or candidate is None or not candidate.path.is_file():
            self.journal.delete(job.id)  # the input left the inbox
            bound.info("job.vanished")
            return JobResult(job.inbox, job.input, Outcome.vanished, 0.0, "input vanished")
        try:
            prepared = prepare(self.settings, self.journal, candidate)
        except DependencyMissing as exc:
            self.journal.mark_waiting(job.id, str(exc), retry_in=self.settings.settle_seconds)
            return JobResult(job.inbox, job.input, Outcome.waiting, 0.0, str(exc))
        except DropforgeError as exc:  # e.g. a file still being written
            self.journal.mark_waiting(job.id, str(exc), retry_in=self.settings.settle_seconds)
            return JobResult(job.inbox, job.input, Outcome.waiting, 0.0, str(exc))
        self.journal.update_identity(
            job.id, prepared.fingerprint, prepared.job_key, str(prepared.out_dir)
        )
        escape = escaping_output(prepared)
        if escape is not None:  # before any write, a failed manifest's too
            self.journal.mark_waiting(job.id, escape)
            bound.warning("job.waiting", error=escape)
            return JobResult(job.inbox, job.input, Outcome.waiting, 0.0, escape)
        clash = foreign_output(prepared)
        if clash is not None:  # no manifest: it would replace the other input's
            self.journal.mark_failed(job.id, clash)
            bound.warning("job.failed", error=clash)
            return JobResult(job.inbox, job.input, Outcome.failed, 0.0, clash)
        plan = prepared.plan
        if plan is None:
            assert prepared.error is not None
            return self._fail(job, prepared, str(prepared.error), started, bound)
        force = plan.force or job.force
        if not force and job_is_done(plan.out_dir, plan.job_key):
            self.journal.mark_done(job.id, seconds=0.0)
            self._move_after(prepared, "_done")
            return JobResult(job.inbox, job.input, Outcome.skipped, 0.0, out_dir=str(plan.out_dir))
        bound.info("job.started", task=plan.task, outputs=len(plan.outputs))
        self.progress.on_start(job, len(plan.outputs))
        try:
            generated, kept, notes = self._generate(job, prepared, plan, force, started)
        except InputError as exc:
            if not candidate.path.is_file():
                # Gone since it was planned (deleted, or its share unmounted): not a bad
                # input. No failed manifest; a rescan queues it again if it comes back.
                self.journal.delete(job.id)
                bound.info("job.vanished", error=str(exc))
                return JobResult(job.inbox, job.input, Outcome.vanished, 0.0, "input vanished")
            return self._fail(job, prepared, str(exc), started, bound)
        except Interrupted:
            self.journal.mark_queued(job.id)
            bound.info("job.interrupted")
            return JobResult(job.inbox, job.input, Outcome.interrupted, self.clock() - started)
        except TransientError as exc:
            # Space is freed by hand: look again every minute rather than backing off to 1 h.
            retry_in = min(backoff(job.waits), DISK_RETRY_S) if isinstance(exc, DiskFull) else None
            self.journal.mark_waiting(job.id, str(exc), retry_in=retry_in)
            bound.warning("job.waiting", error=str(exc))
            return JobResult(job.inbox, job.input, Outcome.waiting, 0.0, str(exc))
        except Exception as exc:  # a bug must not stop the daemon; record it where users look
            bound.exception("job.crashed")
            message = f"internal error ({type(exc).__name__}: {exc}); please report it"
            return self._fail(job, prepared, message, started, bound)
        seconds = self.clock() - started
        self.journal.mark_done(job.id, seconds=seconds)
        self._move_after(prepared, "_done")
        bound.info("job.done", seconds=round(seconds, 3), generated=generated, kept=kept)
        message = f"{plan.output_count} outputs" + (f", {kept} kept" if kept else "")
        if notes:
            message += f"; {len(notes)} warning(s)"
        return JobResult(
            job.inbox, job.input, Outcome.done, seconds, message, str(plan.out_dir), generated, kept
        )

    def _fail(
        self, job: Job, prepared: Prepared, message: str, started: float, bound: Any
    ) -> JobResult:
        finished = self.clock()
        manifest = self.manifest_base(prepared, started, finished)
        manifest.update(status="failed", error=message, outputs=[])
        try:
            write_manifest(prepared.out_dir, manifest)
        except (OSError, DropforgeError) as exc:  # e.g. disk full: the journal still records it
            bound.error("manifest.unwritable", error=str(exc))
        self.journal.mark_failed(job.id, message)
        bound.warning("job.failed", error=message)
        self._move_after(prepared, "_failed")
        return JobResult(
            job.inbox, job.input, Outcome.failed, finished - started, message, str(prepared.out_dir)
        )

    def _move_after(self, prepared: Prepared, folder: str) -> None:
        """With ``after = "move"``, file a finished input (and its own sidecar and mask) away."""
        candidate = prepared.candidate
        if candidate.inbox.after != "move":
            return
        parts = [candidate.path]
        if candidate.sidecar is not None and candidate.sidecar != candidate.path:
            parts.append(candidate.sidecar)
        if candidate.mask is not None:
            parts.append(candidate.mask)
        for path in parts:
            rel = path.relative_to(candidate.inbox.path)
            target = candidate.inbox.path / folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            n = 1
            while target.exists():
                target = target.with_name(f"{path.stem}-{n}{path.suffix}")
                n += 1
            try:
                path.replace(target)
            except OSError as exc:
                log.warning("input.unmovable", input=str(rel), error=str(exc))

    def manifest_base(self, prepared: Prepared, started: float, finished: float) -> dict[str, Any]:
        """The manifest fields every job shares (status done; callers add outputs)."""
        plan = prepared.plan
        rel = prepared.candidate.rel
        deps = {d.path: d for d in prepared.deps}
        manifest: dict[str, Any] = {
            "status": "done",
            "job_key": prepared.job_key,
            "task": plan.task if plan else None,
            "input": {
                "path": rel,
                "sha256": deps[rel].sha256 if rel in deps else None,
                "bytes": plan.input_bytes if plan else _size(prepared.candidate.path),
            },
            "sidecars": [
                {"path": d.path, "sha256": d.sha256}
                for d in (plan.sidecars if plan else prepared.deps[1:])
            ],
            "params": dict(plan.params) if plan else {},
            "model": {"alias": plan.model.alias, "source": plan.model.describe()} if plan else None,
            "outputs": [],
            "timings": {
                "started_at": _iso(started),
                "finished_at": _iso(finished),
                "seconds": round(finished - started, 3),
            },
            "versions": installed_versions(),
            "device": self._generator.device_name() if self._generator else "none",
            "warnings": [],
        }
        if plan and plan.mask:
            manifest["mask"] = {"path": plan.mask.path, "sha256": plan.mask.sha256}
        if plan and plan.lora:
            manifest["lora"] = {"alias": plan.lora.alias, "scale": plan.lora.scale}
        return manifest

    def check_space(self, out_dir: Path) -> None:
        """Raise DiskFull when the output's disk has less than ``min_free_mb`` free."""
        probe = out_dir
        while not probe.exists():
            probe = probe.parent
        free_mb = shutil.disk_usage(probe).free // (1024 * 1024)
        if free_mb < self.settings.min_free_mb:
            raise DiskFull(
                f"only {free_mb} MB free on {probe}, below min_free_mb = "
                f"{self.settings.min_free_mb}: free some space; the job resumes by itself"
            )

    def _generate(
        self, job: Job, prepared: Prepared, plan: Plan, force: bool, started: float
    ) -> tuple[int, int, list[str]]:
        if plan.task == "mesh":
            from daemon.meshjob import run_mesh

            return run_mesh(self, job, prepared, plan, started)
        if plan.task == "tween":
            from daemon.tweenjob import run_tween

            return run_tween(self, job, prepared, plan, force, started)
        notes: list[str] = []
        self.check_space(plan.out_dir)
        init = mask = None
        if plan.task in ("variations", "inpaint"):
            loaded = load_input_image(
                plan.inbox.path / plan.rel, plan.rel, self.settings.max_pixels
            )
            init = loaded.image
            notes += loaded.warnings
            if plan.task == "inpaint" and plan.mask is not None:
                mask_loaded = load_mask(
                    plan.inbox.path / plan.mask.path,
                    plan.mask.path,
                    self.settings.max_pixels,
                    init.size,
                )
                mask = mask_loaded.image
                notes += mask_loaded.warnings

        done: dict[int, OutputFile] = {}
        if not force:
            done = self._reusable(plan)
        kept = len(done)
        missing = [o for o in plan.outputs if o.index not in done]
        total = len(plan.outputs)
        self.journal.set_progress(job.id, kept, total, "")

        thumbs: dict[int, Image.Image] = {}

        def on_image(index: int, image: Image.Image) -> None:
            out = plan.outputs[index]
            done[index] = write_png(
                plan.out_dir / out.file,
                image,
                self._parameters_text(plan, out),
                {"job_key": plan.job_key, "index": out.index, "seed": out.seed, **out.varied},
                sync_folder=False,  # the manifest's write syncs the folder, after every image
            )
            if plan.wants_contact_sheet:
                thumbs[index] = contact_thumbnail(image)
            # One line per image written: how the crash tests count generations.
            log.info("output.written", job_id=job.id, input=job.input, file=out.file)
            self.journal.set_progress(job.id, len(done), total, out.file)
            self.progress.on_image(job, len(done), total)

        def on_step(step: int, steps: int) -> None:
            self.journal.set_progress(job.id, len(done), total, f"step {step}/{steps}")
            self.progress.on_step(job, step, steps)

        events = GenerationEvents(
            on_image=on_image,
            on_step=on_step,
            should_stop=self.stop.is_set,
            on_warning=notes.append,
        )
        # A varied lora_scale needs one request per scale; everything else batches together.
        groups: dict[float | None, list[PlannedOutput]] = {}
        for out in missing:
            groups.setdefault(_lora_scale(plan, out), []).append(out)
        for scale, outs in groups.items():
            lora = (
                plan.lora if plan.lora is None or scale is None else replace(plan.lora, scale=scale)
            )
            request = ImageRequest(
                task=cast(ImageTask, plan.task),
                model=plan.model,
                width=int(plan.params["width"]),
                height=int(plan.params["height"]),
                images=tuple(_spec(o) for o in outs),
                init_image=init,
                mask_image=mask,
                lora=lora,
                max_batch=self.settings.max_batch,
            )
            self.generator.generate_images(request, events)
            if self.stop.is_set():
                raise Interrupted("stop requested")
        self._finish(prepared, plan, done, notes, started, thumbs)
        return len(missing), kept, notes

    def _reusable(self, plan: Plan) -> dict[int, OutputFile]:
        """Outputs already on disk from an interrupted run of the same job."""
        kept: dict[int, OutputFile] = {}
        for out in plan.outputs:
            path = plan.out_dir / out.file
            chunk = read_dropforge_chunk(path)
            if chunk and chunk.get("job_key") == plan.job_key and chunk.get("index") == out.index:
                kept[out.index] = OutputFile(out.file, sha256_file(path), path.stat().st_size)
        return kept

    def _finish(
        self,
        prepared: Prepared,
        plan: Plan,
        done: dict[int, OutputFile],
        notes: list[str],
        started: float,
        thumbs: Mapping[int, Image.Image],
    ) -> None:
        files: list[dict[str, Any]] = []
        for out in plan.outputs:
            written = done[out.index]
            entry: dict[str, Any] = {
                "file": written.file,
                "sha256": written.sha256,
                "bytes": written.bytes,
                "seed": out.seed,
                "t": out.t,
                "prompt": out.prompt,
            }
            if out.scene is not None:
                entry["scene"] = out.scene
            if out.varied:
                entry["params"] = dict(out.varied)
            files.append(entry)
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
            log.info("output.written", input=plan.rel, file=CONTACT_NAME, role="contact")
            files.append(
                {
                    "file": contact.file,
                    "sha256": contact.sha256,
                    "bytes": contact.bytes,
                    "seed": None,
                    "t": None,
                    "prompt": None,
                    "role": "contact",
                }
            )
        old = read_manifest(plan.out_dir)
        manifest = self.manifest_base(prepared, started, self.clock())
        manifest["outputs"] = files
        manifest["warnings"] = notes
        write_manifest(plan.out_dir, manifest)
        remove_obsolete_outputs(plan.out_dir, old, manifest)

    def _parameters_text(self, plan: Plan, out: PlannedOutput) -> str:
        extra: dict[str, Any] = {}
        if plan.task != "text2image":
            extra["Denoising strength"] = out.strength
        if plan.lora is not None:
            extra["Lora"] = f"{plan.lora.alias}:{_lora_scale(plan, out)}"
        extra["Task"] = plan.task
        return a1111_parameters(
            prompt=out.prompt,
            negative_prompt=out.negative_prompt,
            steps=out.steps,
            sampler=sampler_name(plan.model),
            guidance=out.guidance,
            seed=out.seed,
            width=int(plan.params["width"]),
            height=int(plan.params["height"]),
            model=plan.model.alias,
            extra=extra,
        )

    def unload(self) -> None:
        """Release the generator's pipelines (idle unload, shutdown)."""
        if self._generator is not None:
            self._generator.unload()


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


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
