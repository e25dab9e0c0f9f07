"""Tween jobs planned (seed 004): endpoints found and paired, sequences laid out with their frame
times, names, seeds and keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from daemon.config import InboxConfig
from daemon.errors import InputError
from daemon.generators import GENERATOR_VERSION
from daemon.generators.subdivision import frame_seed, tween_times
from daemon.intake.names import FileKind, classify, job_name
from daemon.intake.paths import confine
from daemon.outputs.names import sanitize_name
from daemon.planning.inputs import hash_dependencies
from daemon.planning.keys import canonical_json, resolve_seeds, sha256_text
from daemon.planning.model import (
    SEQUENCES_DIR,
    Dependency,
    Endpoint,
    Frame,
    GeneratedEndpoint,
    Plan,
    SequencePlan,
    output_dir,
)
from daemon.tasks.context import Draft
from daemon.values import LoraSource, ModelSource, Task

# Keys that mean nothing for a tween: left out of its manifest and key.
_NOT_RECORDED = frozenset(
    {"prompts", "count", "seeds", "vary", "mask", "formats", "texture", "name_style", "scenes"}
)


def plan(draft: Draft) -> Plan:
    """The plan of a tween job file: its sequences, and a key covering all of them."""
    pi = draft.input
    seed = resolve_seeds(pi.params, pi.input_sha256, count=1)[0]
    resolved = pi.params.replace(task=Task.tween.value, seed=seed)
    record = resolved.as_record(_NOT_RECORDED)
    base, generated = generated_endpoints(draft, seed, record)
    pairs = find_pairs(draft, {(g.expr, g.pose): g.dep for g in generated})
    sequences = plan_sequences(
        inbox=pi.inbox,
        rel=pi.rel,
        pairs=pairs,
        params=record,
        depth=resolved.depth,
        seed=seed,
        model=pi.model,
        lora=pi.lora,
    )
    key = sha256_text(
        canonical_json(
            {
                "tween": [s.job_key for s in sequences],
                "endpoints": [g.dep.sha256 for g in generated],
            }
        )
    )
    return Plan(
        job_key=key,
        task=Task.tween,
        inbox=pi.inbox,
        rel=pi.rel,
        input_sha256=pi.input_sha256,
        input_bytes=pi.input_bytes,
        out_dir=output_dir(pi.inbox, pi.rel),
        params=resolved,
        record=record,
        model=pi.model,
        lora=pi.lora,
        mask=None,
        sidecars=pi.sidecars,
        outputs=(),
        force=resolved.force,
        sequences=sequences,
        notes=pi.notes,
        base=base,
        generated=generated,
    )


def generated_endpoints(
    draft: Draft, seed: int, record: Mapping[str, Any]
) -> tuple[Dependency | None, tuple[GeneratedEndpoint, ...]]:
    """The endpoints to make from ``base``: each expression of ``paths`` that has a prompt in
    ``expressions`` and no ``{expr}__{pose}`` image yet (pose: ``pose``, else ``center``)."""
    params = draft.input.params
    if not params.base:
        if params.expressions:
            raise InputError(
                draft.sidecar_display,
                "expressions need base, the image their endpoints are made from",
                key="base",
                rule="required with expressions",
            )
        return None, ()
    candidate = draft.candidate
    path = confine(
        candidate.inbox.path,
        params.base,
        base=candidate.path.parent,
        display=draft.sidecar_display,
        key="base",
    )
    if not path.is_file() or classify(path.name) is not FileKind.image:
        raise InputError.bad_value(draft.sidecar_display, "base", "an existing image", params.base)
    base = hash_dependencies(draft.hasher, candidate, [path])[0]
    draft.deps.append(base)
    prompts = {e["id"]: e["prompt"] for e in params.expressions or ()}
    pose = params.pose or "center"
    existing = _endpoint_images(draft)
    needed = sorted({e for p in params.paths or () for e in (p["start"], p["end"])})
    out_dir = output_dir(candidate.inbox, candidate.rel)
    made: list[GeneratedEndpoint] = []
    for expr in needed:
        if (expr, pose) in existing or expr not in prompts:
            continue
        own_seed = int(sha256_text(f"{seed}:{expr}")[:8], 16)
        key = sha256_text(
            canonical_json(
                {
                    "generator": GENERATOR_VERSION,
                    "base": base.sha256,
                    "prompt": prompts[expr],
                    "seed": own_seed,
                    "params": {k: record.get(k) for k in _ENDPOINT_KEYS},
                    "model": {
                        "alias": draft.input.model.alias,
                        "source": draft.input.model.key_source(),
                    },
                }
            )
        )
        dep = Dependency(str(out_dir / "endpoints" / f"{expr}__{pose}.png"), key)
        made.append(GeneratedEndpoint(dep, expr, pose, prompts[expr], own_seed))
    return base, tuple(made)


# The parameters an endpoint made from ``base`` depends on.
_ENDPOINT_KEYS = (
    "negative_prompt", "steps", "guidance", "strength", "size", "sampler", "lora", "lora_scale"
)  # fmt: skip


def _endpoint_images(draft: Draft) -> dict[tuple[str, str], Path]:
    """The ``{expr}__{pose}`` images in the job's endpoints folder, by (expr, pose)."""
    params, candidate = draft.input.params, draft.candidate
    where = candidate.path.parent
    if params.endpoints:
        root = candidate.inbox.path
        where = confine(
            root, params.endpoints, base=where, display=draft.sidecar_display, key="endpoints"
        )
    found: dict[tuple[str, str], Path] = {}
    if where.is_dir():
        for entry in sorted(where.iterdir()):
            parsed = split_endpoint_name(entry.name)
            if parsed and entry.is_file() and classify(entry.name) is FileKind.image:
                found[parsed] = entry
    return found


def find_pairs(
    draft: Draft, generated: Mapping[tuple[str, str], Dependency] | None = None
) -> list[tuple[str, Endpoint, Endpoint]]:
    """Find a tween job's endpoint images: ``start``/``end``, or seed-004 ``paths`` (with the
    endpoints the job generates); each found image is hashed and added to the dependencies."""
    candidate, params, deps = draft.candidate, draft.input.params, draft.deps
    display = draft.sidecar_display
    root = candidate.inbox.path
    folder = candidate.path.parent
    name = job_name(candidate.path.name)

    def endpoint(key: str, value: str | None, path: Path) -> Dependency:
        if not path.is_file() or classify(path.name) is not FileKind.image:
            raise InputError.bad_value(display, key, "an existing image", value)
        dep = hash_dependencies(draft.hasher, candidate, [path])[0]
        deps.append(dep)
        return dep

    if params.start or params.end:
        for key, value in (("start", params.start), ("end", params.end)):
            if not value:
                raise InputError(display, f"{key} is required when start or end is set", key=key)
        found = []
        for key, value in (("start", params.start), ("end", params.end)):
            path = confine(root, str(value), base=folder, display=display, key=key)
            dep = endpoint(key, value, path)
            expr = (split_endpoint_name(path.name) or (path.stem, ""))[0]
            found.append(Endpoint(dep, expr, params.pose))
        path_id = sanitize_name(name) + (f"__{params.pose}" if params.pose else "")
        return [(path_id, found[0], found[1])]
    if params.paths:
        images: dict[tuple[str, str], Dependency] = {
            parsed: hash_dependencies(draft.hasher, candidate, [entry])[0]
            for parsed, entry in _endpoint_images(draft).items()
        }
        images.update(generated or {})
        pairs = pair_endpoints(display, params.paths, images, params.pose)
        made = set((generated or {}).values())
        for _, start, end in pairs:
            deps.extend(d for d in (start.dep, end.dep) if d not in deps and d not in made)
        return pairs
    raise InputError(
        display,
        "a tween needs start and end images, or paths = [{id, start, end}] over "
        "{expr}__{pose}.png endpoints",
        key="start",
        rule="required for tween",
    )


_NOT_IN_FRAMES = frozenset({"force", "fps", "base", "expressions"})


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"1024x1536"`` → (1024, 1536); None for None (the value is validated already)."""
    if not text:
        return None
    width, _, height = text.partition("x")
    return int(width), int(height)


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
    depth: int,
    seed: int,
    model: ModelSource,
    lora: LoraSource | None,
) -> tuple[SequencePlan, ...]:
    """Lay out every sequence of a tween job with its frames and key."""
    folder = PurePosixPath(rel).parent
    base = inbox.output.joinpath(*[sanitize_name(p) for p in folder.parts], SEQUENCES_DIR)
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
        frames_key = sha256_text(
            canonical_json(
                {
                    "generator": GENERATOR_VERSION,
                    "task": Task.tween.value,
                    "path_id": path_id,
                    "start": start.dep.sha256,
                    "end": end.dep.sha256,
                    "params": {k: v for k, v in params.items() if k not in _NOT_IN_FRAMES},
                    "model": {"alias": model.alias, "source": model.key_source()},
                    "lora": None
                    if lora is None
                    else {"alias": lora.alias, "path": lora.key_path()},
                    "frames": [[f.t, f.file, f.seed] for f in frames],
                }
            )
        )
        # Only the preview depends on fps: a new fps writes it anew and keeps the frames.
        fps = params.get("fps")
        key = frames_key if fps is None else sha256_text(f"{frames_key}:fps={fps}")
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
                frames_key=frames_key,
                size=parse_size(params.get("size")),
            )
        )
    return tuple(plans)
