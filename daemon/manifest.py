"""manifest.json: written last into each output folder; the record of what a job made.

A folder whose manifest is ``done`` with the current job key, and whose listed outputs all
exist with their recorded sizes, is finished work: that is the daemon's skip check.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from daemon.outputs import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
SCHEMA = "dropforge/manifest@1"


class ManifestStatus(str, Enum):
    """How a job ended, as the manifest's ``status`` records it."""

    done = "done"
    failed = "failed"


def build_manifest(
    *,
    status: ManifestStatus | str,
    job_key: str,
    task: str,
    input: Mapping[str, Any] | None,
    sidecars: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    model: Mapping[str, Any] | None,
    outputs: Sequence[Mapping[str, Any]],
    timings: Mapping[str, Any],
    versions: Mapping[str, str],
    device: str,
    warnings: Sequence[str] = (),
    error: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a manifest in the documented field order (see DESIGN.md "Outputs").

    ``input`` is None for job files without an input of their own; ``extra`` adds top-level
    fields such as a tween's ``path_id``, ``expr_start``, ``expr_end``, ``pose``, ``frames``.
    """
    status = ManifestStatus(status)
    if (status is ManifestStatus.failed) != (error is not None):
        raise ValueError("a manifest has an error exactly when its status is failed")
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "status": status.value,
        "job_key": job_key,
        "task": task,
        "input": None if input is None else dict(input),
        "sidecars": [dict(sidecar) for sidecar in sidecars],
        "params": dict(params),
        "model": None if model is None else dict(model),
        "outputs": [dict(output) for output in outputs],
        "timings": dict(timings),
        "versions": dict(versions),
        "device": device,
        "warnings": list(warnings),
    }
    if error is not None:
        manifest["error"] = error
    manifest.update(extra or {})
    return manifest


def installed_versions() -> dict[str, str]:
    """Return the dropforge, diffusers and torch versions recorded in manifests.

    Read from package metadata, so torch is never imported for it.
    """
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    # Once per process: the modules in memory keep their version even if pip upgrades them,
    # and reading metadata costs milliseconds per job. Imported here: slow, and not for `check`.
    from importlib import metadata

    versions: dict[str, str] = {}
    for name in ("dropforge", "diffusers", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def write_manifest(out_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Atomically write ``out_dir/manifest.json``: pretty UTF-8 JSON, keys in the given order."""
    document = {"schema": SCHEMA}
    document.update((key, value) for key, value in manifest.items() if key != "schema")
    # allow_nan=False: NaN and Infinity are not JSON and other readers would reject the file.
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(out_dir / MANIFEST_NAME, text.encode("utf-8"))


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """Return the manifest in ``out_dir``, or None when it is absent or not a JSON object."""
    try:
        value = json.loads((out_dir / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


def manifest_is_done(out_dir: Path, job_key: str) -> bool:
    """Tell whether ``out_dir`` holds finished work for ``job_key``, by stat alone.

    True when the manifest is ``done`` with this job key and every listed output exists
    with its recorded size. Contents are not hashed: this runs for every file on a rescan.
    """
    return _is_done(out_dir, read_manifest(out_dir), job_key)


def _is_done(out_dir: Path, manifest: Mapping[str, Any] | None, job_key: str) -> bool:
    if manifest is None or manifest.get("schema") != SCHEMA:
        return False
    if manifest.get("status") != ManifestStatus.done.value or manifest.get("job_key") != job_key:
        return False
    outputs = manifest.get("outputs")
    if not isinstance(outputs, list):
        return False
    for entry in outputs:
        size = entry.get("bytes") if isinstance(entry, dict) else None
        path = _listed_path(out_dir, entry)
        if path is None or not isinstance(size, int) or isinstance(size, bool):
            return False
        try:
            if not path.is_file() or path.stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def remove_obsolete_outputs(
    out_dir: Path, old: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> list[str]:
    """Delete the outputs ``old`` listed that ``new`` does not; return the names removed.

    Call it only after the new manifest is written. Nothing else is ever deleted: not the
    manifest, not a name that leads outside ``out_dir``, not a folder.
    """
    keep = set(_listed_files(new))
    removed: list[str] = []
    for name in _listed_files(old or {}):
        if name in keep or name in removed:
            continue
        path = _listed_path(out_dir, {"file": name})
        if path is None or (path.name == MANIFEST_NAME and path.parent == out_dir):
            continue
        # unlink on a symlink removes the link itself, so only the listed entry can go.
        if path.is_symlink() or path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(name)
    return removed


def _listed_files(manifest: Mapping[str, Any]) -> list[str]:
    outputs = manifest.get("outputs")
    if not isinstance(outputs, list):
        return []
    return [
        entry["file"]
        for entry in outputs
        if isinstance(entry, dict) and isinstance(entry.get("file"), str)
    ]


def _listed_path(out_dir: Path, entry: object) -> Path | None:
    """Resolve an ``outputs[].file`` inside ``out_dir``, or None when it could lead outside.

    Manifests live in synced folders others can write to, so a listed name is untrusted.
    """
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    relative = PurePosixPath(name)
    # ":" would name a drive or an NTFS stream on Windows.
    if not relative.parts or relative.is_absolute() or ".." in relative.parts or ":" in name:
        return None
    path = out_dir.joinpath(*relative.parts)
    if len(relative.parts) == 1:
        return path  # the common case, kept free of extra system calls for the skip check
    # A symlinked subfolder could still lead out: its real parent must lie under out_dir.
    real_parent = Path(os.path.realpath(path.parent))
    real_root = Path(os.path.realpath(out_dir))
    if real_parent != real_root and real_root not in real_parent.parents:
        return None
    return path


def job_is_done(out_dir: Path, job_key: str) -> bool:
    """``manifest_is_done`` for any job; a tween job's sequences must all be done too."""
    manifest = read_manifest(out_dir)  # once: this runs for every input of a rescan
    if manifest is None or not _is_done(out_dir, manifest, job_key):
        return False
    for entry in manifest.get("sequences") or ():
        folder = entry.get("folder") if isinstance(entry, dict) else None
        key = entry.get("job_key") if isinstance(entry, dict) else None
        if not isinstance(folder, str):
            return False
        parts = folder.split("/")
        if len(parts) != 2 or parts[0] != "sequences" or parts[1] in ("", ".", ".."):
            return False
        if not isinstance(key, str) or not manifest_is_done(out_dir.parent / folder, key):
            return False
    return True
