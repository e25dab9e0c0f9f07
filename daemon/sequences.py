"""Tween sequences (seed 004): endpoints → sequences, frame times, names and keys. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from daemon.config import InboxConfig
from daemon.errors import InputError
from daemon.generators import GENERATOR_VERSION, LoraSource, ModelSource
from daemon.generators.subdivision import frame_seed, tween_times
from daemon.outputs import sanitize_name
from daemon.plan import (
    Dependency,
    Plan,
    PlanInput,
    canonical_json,
    output_dir,
    resolve_seeds,
    resolve_task,
    sha256_text,
)

SEQUENCES_DIR = "sequences"


@dataclass(frozen=True)
class Endpoint:
    """An endpoint image of a tween: its file and the expression it shows."""

    dep: Dependency
    expr: str
    pose: str | None


@dataclass(frozen=True)
class Frame:
    """One frame of a sequence: its time, file name and (for tweens) seed."""

    t: float
    file: str
    seed: int | None  # None for the copied endpoints


@dataclass(frozen=True)
class SequencePlan:
    """One sequence folder ``sequences/<path_id>`` and the frames it must hold."""

    path_id: str
    expr_start: str
    expr_end: str
    pose: str | None
    start: Dependency
    end: Dependency
    out_dir: Path
    frames: tuple[Frame, ...]
    job_key: str


def frame_name(t: float, suffix: str = ".png") -> str:
    """``000.png`` … ``100.png``: t×100 rounded, three digits (unique for depth ≤ 6)."""
    return f"{round(t * 100):03d}{suffix}"


def split_endpoint_name(name: str) -> tuple[str, str] | None:
    """``neutral__center.png`` → (``neutral``, ``center``); None when not of that form."""
    stem = PurePosixPath(name).stem
    expr, sep, pose = stem.rpartition("__")
    if not sep or not expr or not pose:
        return None
    return expr, pose


def pair_endpoints(
    display: str,
    paths: Sequence[Mapping[str, str]],
    found: Mapping[tuple[str, str], Dependency],
    pose: str | None,
) -> list[tuple[str, Endpoint, Endpoint]]:
    """Seed-004 pairing: every (path, pose) for which both endpoints exist."""
    poses = sorted({p for (_, p) in found} if pose is None else {pose})
    pairs: list[tuple[str, Endpoint, Endpoint]] = []
    for entry in paths:
        for p in poses:
            start = found.get((entry["start"], p))
            end = found.get((entry["end"], p))
            if start is not None and end is not None:
                pairs.append(
                    (
                        f"{entry['id']}__{p}",
                        Endpoint(start, entry["start"], p),
                        Endpoint(end, entry["end"], p),
                    )
                )
    if not pairs:
        wanted = ", ".join(f"{e['start']}__POSE / {e['end']}__POSE" for e in paths)
        raise InputError(
            display,
            f"no endpoint pairs found: paths need images named {wanted}"
            + (f" with pose {pose}" if pose else ""),
            key="paths",
            rule="both endpoints exist",
            value=[dict(e) for e in paths],
        )
    return pairs


def plan_sequences(
    *,
    inbox: InboxConfig,
    rel: str,
    pairs: Sequence[tuple[str, Endpoint, Endpoint]],
    params: Mapping[str, Any],
    seed: int,
    model: ModelSource,
    lora: LoraSource | None,
) -> tuple[SequencePlan, ...]:
    """Lay out every sequence of a tween job with its frames and key."""
    folder = PurePosixPath(rel).parent
    base = inbox.output.joinpath(*[sanitize_name(p) for p in folder.parts], SEQUENCES_DIR)
    depth = int(params["depth"])
    plans: list[SequencePlan] = []
    for path_id, start, end in pairs:
        frames = []
        for t in tween_times(depth):
            if t in (0.0, 1.0):
                endpoint = start if t == 0.0 else end
                suffix = PurePosixPath(endpoint.dep.path).suffix.lower()
                frames.append(Frame(t, frame_name(t, suffix), None))
            else:
                frames.append(Frame(t, frame_name(t), frame_seed(seed, t)))
        key = sha256_text(
            canonical_json(
                {
                    "generator": GENERATOR_VERSION,
                    "task": "tween",
                    "path_id": path_id,
                    "start": start.dep.sha256,
                    "end": end.dep.sha256,
                    "params": {k: v for k, v in params.items() if k != "force"},
                    "model": {"alias": model.alias, "source": model.describe()},
                    "lora": None if lora is None else {"alias": lora.alias, "path": lora.path},
                    "frames": [[f.t, f.file, f.seed] for f in frames],
                }
            )
        )
        plans.append(
            SequencePlan(
                path_id=path_id,
                expr_start=start.expr,
                expr_end=end.expr,
                pose=start.pose,
                start=start.dep,
                end=end.dep,
                out_dir=base / sanitize_name(path_id),
                frames=tuple(frames),
                job_key=key,
            )
        )
    return tuple(plans)


def build_tween_plan(pi: PlanInput, pairs: Sequence[tuple[str, Endpoint, Endpoint]]) -> Plan:
    """The plan of a tween job file: its sequences, and a key covering all of them."""
    params = dict(pi.params)
    task = resolve_task(params, pi.inbox, pi.kind, pi.rel)
    if task != "tween":
        raise InputError.bad_value(pi.rel, "task", "tween for a job file", task)
    seed = resolve_seeds({**params, "count": 1}, pi.input_sha256)[0]
    for key in ("prompts", "count", "seeds", "vary", "mask", "formats", "texture"):
        params.pop(key, None)
    params.update(task="tween", seed=seed)
    sequences = plan_sequences(
        inbox=pi.inbox,
        rel=pi.rel,
        pairs=pairs,
        params=params,
        seed=seed,
        model=pi.model,
        lora=pi.lora,
    )
    key = sha256_text(canonical_json({"tween": [s.job_key for s in sequences]}))
    return Plan(
        job_key=key,
        task="tween",
        inbox=pi.inbox,
        rel=pi.rel,
        input_sha256=pi.input_sha256,
        input_bytes=pi.input_bytes,
        out_dir=output_dir(pi.inbox, pi.rel),
        params=params,
        model=pi.model,
        lora=pi.lora,
        mask=None,
        sidecars=pi.sidecars,
        outputs=(),
        force=bool(params.get("force", False)),
        sequences=sequences,
    )
