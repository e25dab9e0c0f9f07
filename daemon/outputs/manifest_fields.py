"""The records a manifest is made of (input, sidecars, model, outputs, timings, sequences).

Each record writes itself as the JSON the manifest documents (``to_json``) and reads itself
back leniently (``from_json``): a record of the wrong shape reads as None, a field of the wrong
type as None, because manifests come from folders that other people and tools can write to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

_Record = TypeVar("_Record")


def string_or_none(value: object) -> str | None:
    """``value`` when it is a string, else None."""
    return value if isinstance(value, str) else None


def int_or_none(value: object) -> int | None:
    """``value`` when it is an integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def number_or_none(value: object) -> float | int | None:
    """``value`` when it is a number (not a bool), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_list(value: object, parse: Callable[[object], _Record | None]) -> list[_Record | None]:
    """Each item of a JSON list parsed (None for an item of the wrong shape); [] for a non-list."""
    return [parse(item) for item in value] if isinstance(value, list) else []


def present(records: Iterable[_Record | None]) -> tuple[_Record, ...]:
    """The records that parsed."""
    return tuple(r for r in records if r is not None)


@dataclass(frozen=True)
class FileRecord:
    """A file a job read (sidecar, mask, tween endpoint): its path inside the inbox and sha256."""

    path: str
    sha256: str | None

    def to_json(self) -> dict[str, Any]:
        """``{path, sha256}``."""
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_json(cls, value: object) -> FileRecord | None:
        """Read ``{path, sha256}``; None without a path."""
        if not isinstance(value, dict) or not isinstance(value.get("path"), str):
            return None
        return cls(value["path"], string_or_none(value.get("sha256")))


@dataclass(frozen=True)
class InputRecord:
    """The input itself: path inside the inbox, sha256 and size."""

    path: str
    sha256: str | None
    bytes: int | None

    def to_json(self) -> dict[str, Any]:
        """``{path, sha256, bytes}``."""
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_json(cls, value: object) -> InputRecord | None:
        """Read ``{path, sha256, bytes}``; None without a path."""
        if not isinstance(value, dict) or not isinstance(value.get("path"), str):
            return None
        return cls(
            value["path"], string_or_none(value.get("sha256")), int_or_none(value.get("bytes"))
        )


@dataclass(frozen=True)
class ModelRecord:
    """The model alias a job used and the source it resolved to."""

    alias: str
    source: str

    def to_json(self) -> dict[str, Any]:
        """``{alias, source}``."""
        return {"alias": self.alias, "source": self.source}

    @classmethod
    def from_json(cls, value: object) -> ModelRecord | None:
        """Read ``{alias, source}``."""
        if not isinstance(value, dict):
            return None
        alias, source = value.get("alias"), value.get("source")
        if not isinstance(alias, str) or not isinstance(source, str):
            return None
        return cls(alias, source)


@dataclass(frozen=True)
class LoraRecord:
    """The LoRA alias a job used and its weight."""

    alias: str
    scale: float

    def to_json(self) -> dict[str, Any]:
        """``{alias, scale}``."""
        return {"alias": self.alias, "scale": self.scale}

    @classmethod
    def from_json(cls, value: object) -> LoraRecord | None:
        """Read ``{alias, scale}``."""
        if not isinstance(value, dict) or not isinstance(value.get("alias"), str):
            return None
        scale = number_or_none(value.get("scale"))
        return None if scale is None else cls(value["alias"], float(scale))


@dataclass(frozen=True)
class OutputEntry:
    """One file a job made: name in its folder, sha256, size, and what made it.

    ``scene`` (multi-scene prompt files), ``params`` (values spread by ``[vary]``) and ``role``
    (``contact`` sheet, tween ``preview``) are written only when set. Read from disk, a name
    or size of the wrong type is None, which the skip check treats as missing.
    """

    file: str | None
    sha256: str | None
    bytes: int | None
    seed: int | None = None
    t: float | None = None
    prompt: str | None = None
    scene: int | None = None
    params: Mapping[str, float | int] | None = None
    role: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``outputs[]`` entry."""
        entry: dict[str, Any] = {
            "file": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "seed": self.seed,
            "t": self.t,
            "prompt": self.prompt,
        }
        if self.scene is not None:
            entry["scene"] = self.scene
        if self.params:
            entry["params"] = dict(self.params)
        if self.role is not None:
            entry["role"] = self.role
        return entry

    @classmethod
    def from_json(cls, value: object) -> OutputEntry:
        """Read an ``outputs[]`` entry; anything of the wrong shape reads as None fields."""
        if not isinstance(value, dict):
            return cls(None, None, None)
        params = value.get("params")
        return cls(
            file=string_or_none(value.get("file")),
            sha256=string_or_none(value.get("sha256")),
            bytes=int_or_none(value.get("bytes")),
            seed=int_or_none(value.get("seed")),
            t=number_or_none(value.get("t")),
            prompt=string_or_none(value.get("prompt")),
            scene=int_or_none(value.get("scene")),
            params=(
                {k: v for k, v in params.items() if number_or_none(v) is not None}
                if isinstance(params, dict)
                else None
            ),
            role=string_or_none(value.get("role")),
        )


@dataclass(frozen=True)
class Timings:
    """When a job ran: ISO 8601 UTC start and end, and its seconds."""

    started_at: str
    finished_at: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """``{started_at, finished_at, seconds}``."""
        return {
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, value: object) -> Timings | None:
        """Read the timings; None when a field is missing."""
        if not isinstance(value, dict):
            return None
        start, end = value.get("started_at"), value.get("finished_at")
        seconds = number_or_none(value.get("seconds"))
        if not isinstance(start, str) or not isinstance(end, str) or seconds is None:
            return None
        return cls(start, end, float(seconds))


@dataclass(frozen=True)
class AttemptRecord:
    """An earlier claim of the job that did not finish it: how it ended and how far it got
    (``outputs`` of ``total``, ``steps`` into the next), and ``summary``, the same in words."""

    attempt: int
    started_at: str
    ended: str  # died, stopped or waiting
    stage: str
    outputs: int
    total: int
    steps: int
    counted: bool  # toward quarantine (a death that got no further than the claim before)
    summary: str

    def to_json(self) -> dict[str, Any]:
        """``{attempt, started_at, ended, stage, outputs, total, steps, counted, summary}``."""
        return {
            "attempt": self.attempt,
            "started_at": self.started_at,
            "ended": self.ended,
            "stage": self.stage,
            "outputs": self.outputs,
            "total": self.total,
            "steps": self.steps,
            "counted": self.counted,
            "summary": self.summary,
        }

    @classmethod
    def from_json(cls, value: object) -> AttemptRecord | None:
        """Read an ``attempts[]`` entry; None when a field is missing or of the wrong type."""
        if not isinstance(value, dict) or not isinstance(value.get("counted"), bool):
            return None
        numbers = [int_or_none(value.get(k)) for k in ("attempt", "outputs", "total", "steps")]
        texts = [string_or_none(value.get(k)) for k in ("started_at", "ended", "stage", "summary")]
        if any(n is None for n in numbers) or any(t is None for t in texts):
            return None
        attempt, outputs, total, steps = (int(n or 0) for n in numbers)
        started_at, ended, stage, summary = (str(t) for t in texts)
        return cls(
            attempt, started_at, ended, stage, outputs, total, steps, value["counted"], summary
        )


@dataclass(frozen=True)
class SequenceSummary:
    """A tween job's own manifest lists each of its sequence folders."""

    path_id: str | None
    folder: str | None  # "sequences/<name>", relative to the job's output folder's parent
    job_key: str | None
    frames: int | None

    def to_json(self) -> dict[str, Any]:
        """``{path_id, folder, job_key, frames}``."""
        return {
            "path_id": self.path_id,
            "folder": self.folder,
            "job_key": self.job_key,
            "frames": self.frames,
        }

    @classmethod
    def from_json(cls, value: object) -> SequenceSummary | None:
        """Read a ``sequences[]`` entry; None when it is not an object."""
        if not isinstance(value, dict):
            return None
        return cls(
            string_or_none(value.get("path_id")),
            string_or_none(value.get("folder")),
            string_or_none(value.get("job_key")),
            int_or_none(value.get("frames")),
        )


@dataclass(frozen=True)
class SequenceRecord:
    """Seed 004's top-level fields of a sequence folder's manifest, so its players load it."""

    path_id: str
    expr_start: str | None
    expr_end: str | None
    pose: str | None
    frames: tuple[tuple[float, str], ...]  # (t, file)
    endpoints: tuple[FileRecord, ...]
    fps: float | None = None  # the playback rate of preview.gif, for players

    def to_json(self) -> dict[str, Any]:
        """``path_id, expr_start, expr_end, pose, frames [{t, file}], endpoints`` (and ``fps``)."""
        doc: dict[str, Any] = {
            "path_id": self.path_id,
            "expr_start": self.expr_start,
            "expr_end": self.expr_end,
            "pose": self.pose,
            "frames": [{"t": t, "file": file} for t, file in self.frames],
            "endpoints": [e.to_json() for e in self.endpoints],
        }
        if self.fps is not None:
            doc["fps"] = self.fps
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SequenceRecord | None:
        """Read the fields from a whole manifest; None unless it has a ``path_id``."""
        path_id = doc.get("path_id")
        if not isinstance(path_id, str):
            return None
        frames: list[tuple[float, str]] = []
        for item in doc.get("frames") or ():
            if isinstance(item, dict):
                t, file = number_or_none(item.get("t")), item.get("file")
                if t is not None and isinstance(file, str):
                    frames.append((float(t), file))
        return cls(
            path_id,
            string_or_none(doc.get("expr_start")),
            string_or_none(doc.get("expr_end")),
            string_or_none(doc.get("pose")),
            tuple(frames),
            present(parse_list(doc.get("endpoints"), FileRecord.from_json)),
            number_or_none(doc.get("fps")),
        )
