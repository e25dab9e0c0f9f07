"""Deleting an output of a finished job is a discard, not a request to remake it.

Once a job's manifest is written ``done``, a listed file that disappears (deleted in a file
manager, or on a synced laptop) is recorded as discarded: an XMP sidecar with ``xmp:Rating``
-1 is left where the image was (``ratings``), so the manifest keeps its one writer, the synced
copies see the discard too, and the skip check (``manifest._is_done``) counts the file as
accounted for. Before the manifest is written (a crash), nothing is recorded: the job is not
done and its missing images are made when it resumes. ``restore`` forgets a discard so that
the job makes the file again.
"""

from __future__ import annotations

from pathlib import Path

from daemon.outputs.manifest import listed_path, read_manifest
from daemon.outputs.ratings import Rating, discarded_missing, read_rating, write_rating


def deleted_outputs(out_dir: Path, job_key: str) -> tuple[list[Path], bool] | None:
    """The listed outputs of a done job that are gone without a recorded discard, and whether
    everything else the job made is intact; None when the folder holds no done manifest with
    this key (a crash before it was written: the job resumes and makes what is missing)."""
    manifest = read_manifest(out_dir)
    if manifest is None or not manifest.is_done or manifest.job_key != job_key:
        return None
    intact = manifest.outputs is not None
    gone: list[Path] = []
    for entry in manifest.outputs or ():
        path = listed_path(out_dir, entry.file)
        if path is None or entry.bytes is None:
            intact = False
            continue
        try:
            if path.stat().st_size != entry.bytes or not path.is_file():
                intact = False
        except FileNotFoundError:
            if not discarded_missing(path):
                gone.append(path)
        except OSError:
            intact = False
    for summary in manifest.sequences or ():
        folder = None if summary is None else summary.folder
        parts = (folder or "").split("/")
        if summary is None or summary.job_key is None or len(parts) != 2:
            intact = False
            continue
        if parts[0] != "sequences" or parts[1] in ("", ".", ".."):
            intact = False
            continue
        inner = deleted_outputs(out_dir.parent / "sequences" / parts[1], summary.job_key)
        if inner is None:
            intact = False
            continue
        gone += inner[0]
        intact = intact and inner[1]
    return gone, intact


def record_discards(paths: list[Path]) -> None:
    """Leave a discard beside each deleted output."""
    for path in paths:
        write_rating(path, Rating.discard)


def restore(image: Path) -> bool:
    """Forget the discard recorded beside a deleted output (the job makes it again when it is
    requeued); False when ``image`` exists or was not discarded."""
    if image.exists() or read_rating(image) is not Rating.discard:
        return False
    write_rating(image, Rating.none)
    return True


def forget_discards(out_dir: Path) -> list[Path]:
    """Forget every discard recorded beside a deleted output of ``out_dir`` (``retry
    --force`` makes them all again); return those outputs."""
    manifest = read_manifest(out_dir)
    forgotten: list[Path] = []
    for name in manifest.files() if manifest is not None else ():
        path = listed_path(out_dir, name)
        if path is not None and restore(path):
            forgotten.append(path)
    return forgotten
