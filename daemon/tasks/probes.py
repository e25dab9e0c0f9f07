"""Every image a job will decode, probed while the job is planned: the input, its mask, a tween's
endpoints. A job and ``dropforge check`` both plan through ``prepare``, so an image the job would
refuse (corrupt, over ``max_pixels``, a mask of the wrong size) is refused by ``check`` too, with
the same message, before anything is queued or generated.

A probe decodes the file, so its result is remembered by content hash: a job file re-planned at
every rescan does not decode its endpoints again. Endpoints a tween job makes itself (from its
``base``) do not exist yet and are not probed.
"""

from __future__ import annotations

import functools
from pathlib import Path

from daemon.config import Settings
from daemon.errors import InputError
from daemon.intake.images import ImageInfo, mask_mismatch, probe_image
from daemon.planning.model import Dependency, Plan, SequencePlan


@functools.lru_cache(maxsize=4096)
def _probe(path: str, display: str, sha256: str, max_pixels: int) -> ImageInfo:
    # sha256 is part of the key only: a changed file is a new entry. Errors are not cached.
    return probe_image(Path(path), display, max_pixels)


def probe_dependency(settings: Settings, inbox: Path, dep: Dependency) -> ImageInfo:
    """Probe an image the job depends on (``dep.path`` is relative to ``inbox``)."""
    return _probe(str(inbox / dep.path), dep.path, dep.sha256, settings.max_pixels)


def check_mask(
    settings: Settings, inbox: Path, mask: Dependency, image: tuple[int, int]
) -> ImageInfo:
    """Probe an inpainting mask, which must have its image's size."""
    info = probe_dependency(settings, inbox, mask)
    if info.size != image:
        raise mask_mismatch(mask.path, info.size, image)
    return info


def endpoint_mismatch(
    seq: SequencePlan, start: tuple[int, int], end: tuple[int, int]
) -> InputError:
    """The error of a tween whose endpoints differ in size."""
    return InputError(
        seq.end.path,
        f"endpoint is {end[0]}x{end[1]} but {seq.start.path} is "
        f"{start[0]}x{start[1]}: tween endpoints must have the same size",
        key="end",
        rule="same size as start",
        value=f"{end[0]}x{end[1]}",
    )


def check_endpoints(settings: Settings, plan: Plan) -> None:
    """Probe a tween's base image and every endpoint file of ``plan`` (not the endpoints the
    job makes itself); without ``size`` both ends of a sequence must match in size."""
    inbox = plan.inbox.path
    if plan.base is not None:
        probe_dependency(settings, inbox, plan.base)
    made = {g.dep for g in plan.generated}
    for seq in plan.sequences:
        start, end = (
            None if dep in made else probe_dependency(settings, inbox, dep).size
            for dep in (seq.start, seq.end)
        )
        if seq.size is None and start is not None and end is not None and start != end:
            raise endpoint_mismatch(seq, start, end)
