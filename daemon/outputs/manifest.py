"""manifest.json: written last into each output folder; the record of what a job made.

``Manifest`` is the one model of the file: tasks build it, ``write_manifest`` is its one writer
and ``read_manifest`` its one reader. A folder whose manifest is ``done`` with the current job
key, and whose listed outputs all exist with their recorded sizes, is finished work: that is
the daemon's skip check. Manifests live in synced folders that others can write to, so the
reader takes whatever it finds and keeps what does not fit as ``None`` instead of failing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from daemon.outputs.files import atomic_write_bytes
from daemon.outputs.manifest_fields import (
    AttemptRecord,
    FileRecord,
    InputRecord,
    LoraRecord,
    ModelRecord,
    OutputEntry,
    SequenceRecord,
    SequenceSummary,
    Timings,
    parse_list,
    present,
    string_or_none,
)
from daemon.outputs.ratings import discarded_missing

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA",
    "AttemptRecord",
    "FileRecord",
    "InputRecord",
    "LoraRecord",
    "Manifest",
    "ManifestStatus",
    "ModelRecord",
    "OutputEntry",
    "SequenceRecord",
    "SequenceSummary",
    "Timings",
    "installed_versions",
    "job_is_done",
    "listed_path",
    "manifest_is_done",
    "read_manifest",
    "remove_obsolete_outputs",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
SCHEMA = "dropforge/manifest@1"


class ManifestStatus(str, Enum):
    """How a job ended, as the manifest's ``status`` records it."""

    done = "done"
    failed = "failed"
    canceled = "canceled"  # stopped on request: ``outputs`` lists what it had finished

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` records (see DESIGN.md "Outputs"), in the documented order.

    ``error`` is set exactly when ``status`` is failed. A tween job's own manifest lists its
    ``sequences``; each sequence folder's manifest carries seed 004's fields in ``sequence``.
    Read from disk, ``status`` may be a string this version does not know and ``outputs`` None
    when the file's list was not a list.
    """

    status: ManifestStatus | str
    job_key: str | None
    task: str | None
    input: InputRecord | None
    sidecars: tuple[FileRecord, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    model: ModelRecord | None = None
    outputs: tuple[OutputEntry, ...] | None = ()
    timings: Timings | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    device: str | None = None
    warnings: tuple[str, ...] = ()
    mask: FileRecord | None = None
    lora: LoraRecord | None = None
    error: str | None = None
    sequences: tuple[SequenceSummary | None, ...] | None = None
    sequence: SequenceRecord | None = None
    attempts: tuple[AttemptRecord, ...] = ()  # earlier claims that did not finish the job
    schema: str | None = SCHEMA

    def __post_init__(self) -> None:
        if isinstance(self.status, ManifestStatus) and (
            (self.status is ManifestStatus.failed) != (self.error is not None)
        ):
            raise ValueError("a manifest has an error exactly when its status is failed")

    @property
    def is_done(self) -> bool:
        """This version's schema with status done (the outputs are not looked at)."""
        return self.schema == SCHEMA and self.status == ManifestStatus.done.value

    def files(self) -> list[str]:
        """The names of the listed outputs (entries without a usable name left out)."""
        return [e.file for e in self.outputs or () if e.file is not None]

    def to_document(self) -> dict[str, Any]:
        """The JSON object written to disk: schema first, optional fields only when set."""
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "status": str(self.status),
            "job_key": self.job_key,
            "task": self.task,
            "input": None if self.input is None else self.input.to_json(),
            "sidecars": [s.to_json() for s in self.sidecars],
            "params": dict(self.params),
            "model": None if self.model is None else self.model.to_json(),
            "outputs": [o.to_json() for o in self.outputs or ()],
            "timings": None if self.timings is None else self.timings.to_json(),
            "versions": dict(self.versions),
            "device": self.device,
            "warnings": list(self.warnings),
        }
        if self.mask is not None:
            doc["mask"] = self.mask.to_json()
        if self.lora is not None:
            doc["lora"] = self.lora.to_json()
        if self.error is not None:
            doc["error"] = self.error
        if self.attempts:
            doc["attempts"] = [a.to_json() for a in self.attempts]
        if self.sequences is not None:
            doc["sequences"] = [s.to_json() for s in self.sequences if s is not None]
        if self.sequence is not None:
            doc.update(self.sequence.to_json())
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Manifest:
        """Read a manifest object leniently: a field of the wrong shape becomes None or empty."""
        status = doc.get("status")
        error = string_or_none(doc.get("error"))
        known = status in {s.value for s in ManifestStatus}
        if known and (status == ManifestStatus.failed.value) == (error is not None):
            status = ManifestStatus(status)
        outputs = doc.get("outputs")
        params = doc.get("params")
        versions = doc.get("versions")
        sequences = doc.get("sequences")
        return cls(
            status=status if isinstance(status, (ManifestStatus, str)) else "",
            job_key=string_or_none(doc.get("job_key")),
            task=string_or_none(doc.get("task")),
            input=InputRecord.from_json(doc.get("input")),
            sidecars=present(parse_list(doc.get("sidecars"), FileRecord.from_json)),
            params=dict(params) if isinstance(params, dict) else {},
            model=ModelRecord.from_json(doc.get("model")),
            outputs=(
                tuple(OutputEntry.from_json(e) for e in outputs)
                if isinstance(outputs, list)
                else None
            ),
            timings=Timings.from_json(doc.get("timings")),
            versions=(
                {k: v for k, v in versions.items() if isinstance(v, str)}
                if isinstance(versions, dict)
                else {}
            ),
            device=string_or_none(doc.get("device")),
            warnings=tuple(w for w in doc.get("warnings") or () if isinstance(w, str)),
            mask=FileRecord.from_json(doc.get("mask")),
            lora=LoraRecord.from_json(doc.get("lora")),
            error=error,
            sequences=_summaries(sequences),
            sequence=SequenceRecord.from_json(doc),
            attempts=present(parse_list(doc.get("attempts"), AttemptRecord.from_json)),
            schema=string_or_none(doc.get("schema")),
        )


def _summaries(value: object) -> tuple[SequenceSummary | None, ...] | None:
    """A tween manifest's ``sequences``: None when absent; an entry that is not an object (or a
    value that is not a list at all) reads as None, which makes the job not done."""
    if not value:
        return None
    if not isinstance(value, list):
        return (None,)
    return tuple(parse_list(value, SequenceSummary.from_json))


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


def write_manifest(out_dir: Path, manifest: Manifest) -> None:
    """Atomically write ``out_dir/manifest.json``: pretty UTF-8 JSON in the documented order."""
    # allow_nan=False: NaN and Infinity are not JSON and other readers would reject the file.
    text = json.dumps(manifest.to_document(), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(out_dir / MANIFEST_NAME, (text + "\n").encode("utf-8"))


def read_manifest(out_dir: Path) -> Manifest | None:
    """Return the manifest in ``out_dir``, or None when it is absent or not a JSON object."""
    try:
        value = json.loads((out_dir / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return Manifest.from_document(value) if isinstance(value, dict) else None


def manifest_is_done(out_dir: Path, job_key: str) -> bool:
    """Tell whether ``out_dir`` holds finished work for ``job_key``, by stat alone.

    True when the manifest is ``done`` with this job key and every listed output exists
    with its recorded size, or is gone with a discard recorded beside it (a person deleted
    it: see ``discards``). Contents are not hashed: this runs for every file on a rescan.
    """
    return _is_done(out_dir, read_manifest(out_dir), job_key)


def _is_done(out_dir: Path, manifest: Manifest | None, job_key: str) -> bool:
    if manifest is None or not manifest.is_done or manifest.job_key != job_key:
        return False
    if manifest.outputs is None:
        return False
    for entry in manifest.outputs:
        path = listed_path(out_dir, entry.file)
        if path is None or entry.bytes is None:
            return False
        try:
            if path.stat().st_size != entry.bytes or not path.is_file():
                return False
        except FileNotFoundError:
            if not discarded_missing(path):
                return False
        except OSError:
            return False
    return True


def remove_obsolete_outputs(out_dir: Path, old: Manifest | None, new: Manifest) -> list[str]:
    """Delete the outputs ``old`` listed that ``new`` does not; return the names removed.

    Call it only after the new manifest is written. Nothing else is ever deleted: not the
    manifest, not a name that leads outside ``out_dir``, not a folder.
    """
    keep = set(new.files())
    removed: list[str] = []
    for name in old.files() if old is not None else ():
        if name in keep or name in removed:
            continue
        path = listed_path(out_dir, name)
        if path is None or (path.name == MANIFEST_NAME and path.parent == out_dir):
            continue
        # unlink on a symlink removes the link itself, so only the listed entry can go.
        if path.is_symlink() or path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(name)
    return removed


def listed_path(out_dir: Path, name: str | None) -> Path | None:
    """Resolve an ``outputs[].file`` inside ``out_dir``, or None when it could lead outside.

    Manifests live in synced folders others can write to, so a listed name is untrusted.
    """
    if name is None or not name or "\\" in name or "\0" in name:
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
    return all(_sequence_done(out_dir, entry) for entry in manifest.sequences or ())


def _sequence_done(out_dir: Path, entry: SequenceSummary | None) -> bool:
    if entry is None or entry.folder is None or entry.job_key is None:
        return False
    parts = entry.folder.split("/")
    if len(parts) != 2 or parts[0] != "sequences" or parts[1] in ("", ".", ".."):
        return False
    return manifest_is_done(out_dir.parent / entry.folder, entry.job_key)
