"""Image → 3D jobs: Shap-E through the generator, meshes written atomically, manifest last."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.generators import GenerationEvents, MeshRequest
from daemon.images import load_input_image
from daemon.manifest import read_manifest, remove_obsolete_outputs, write_manifest
from daemon.outputs import atomic_write_bytes, sha256_file

if TYPE_CHECKING:
    from daemon.journal import Job
    from daemon.plan import Plan
    from daemon.prepare import Prepared
    from daemon.worker import Worker


def run_mesh(
    worker: Worker, job: Job, prepared: Prepared, plan: Plan, started: float
) -> tuple[int, int, list[str]]:
    """Make the mesh of one image in every requested format; return (made, kept, notes)."""
    worker.check_space(plan.out_dir)
    loaded = load_input_image(plan.inbox.path / plan.rel, plan.rel, worker.settings.max_pixels)
    notes = list(loaded.warnings)
    formats = tuple(plan.params["formats"])
    worker.journal.set_progress(job.id, 0, len(formats), "")

    def on_step(step: int, steps: int) -> None:
        worker.journal.set_progress(job.id, 0, len(formats), f"step {step}/{steps}")
        worker.progress.on_step(job, step, steps)

    request = MeshRequest(
        model=plan.model,
        image=loaded.image,
        display=plan.rel,
        steps=int(plan.params["steps"]),
        guidance=float(plan.params["guidance"]),
        seed=int(plan.params["seed"]),
        resolution=int(plan.params["mesh_resolution"]),
        formats=formats,
        texture=bool(plan.params["texture"]),
    )
    events = GenerationEvents(
        on_image=lambda index, image: None,
        on_step=on_step,
        should_stop=worker.stop.is_set,
        on_warning=notes.append,
    )
    meshes = worker.generator.generate_mesh(request, events)
    files: list[dict[str, Any]] = []
    for out in plan.outputs:
        path = plan.out_dir / out.file
        atomic_write_bytes(path, meshes[path.suffix.lstrip(".")])
        files.append(
            {
                "file": out.file,
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
                "seed": out.seed,
                "t": None,
                "prompt": None,
            }
        )
        worker.progress.on_image(job, len(files), len(plan.outputs))
    old = read_manifest(plan.out_dir)
    manifest = worker.manifest_base(prepared, started, worker.clock())
    manifest["outputs"] = files
    manifest["warnings"] = notes
    write_manifest(plan.out_dir, manifest)
    remove_obsolete_outputs(plan.out_dir, old, manifest)
    return len(files), 0, notes
