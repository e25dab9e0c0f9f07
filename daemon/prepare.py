"""One candidate → hashed dependencies, effective parameters and a plan (or an input error)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from daemon import params as params_mod
from daemon.config import Settings
from daemon.errors import ConfigError, DropforgeError, InputError, show_value
from daemon.intake import Candidate, FileKind, classify, confine
from daemon.journal import Journal
from daemon.outputs import sanitize_name
from daemon.plan import (
    Dependency,
    Plan,
    PlanInput,
    build_plan,
    config_fingerprint,
    failure_key,
    fingerprint,
    output_dir,
)
from daemon.scenes import apply_template, read_prompt_text, split_scenes
from daemon.sequences import Endpoint, build_tween_plan, pair_endpoints, split_endpoint_name


class Hasher(Protocol):
    """What hashes a dependency: the journal, or a survey pass in front of it."""

    def hash_file(self, path: Path) -> str:
        """The sha256 of ``path`` (raises FileNotFoundError when it is gone)."""
        ...


class DependencyMissing(DropforgeError):
    """A file the job depends on vanished between the scan and the hashing."""


@dataclass(frozen=True)
class Prepared:
    """The outcome of preparing a candidate: a plan, or the error a user must fix."""

    candidate: Candidate
    fingerprint: str
    deps: tuple[Dependency, ...]
    out_dir: Path
    plan: Plan | None = None
    error: InputError | None = None

    @property
    def job_key(self) -> str:
        """The plan's key, or a key derived from the error for unplannable inputs."""
        if self.plan is not None:
            return self.plan.job_key
        return failure_key(self.fingerprint, str(self.error))


def settings_fingerprint(settings: Settings, default_task: str) -> str:
    """Hash of every setting that shapes a job's parameters in one inbox."""
    return config_fingerprint(
        {
            "defaults": dict(settings.defaults),
            "presets": {k: dict(v) for k, v in settings.presets.items()},
            "models": {k: settings.model_source(k).describe() for k in settings.models},
            "loras": dict(settings.loras),
            "default_task": default_task,
            "max_pixels": settings.max_pixels,
        }
    )


def relative(candidate: Candidate, path: Path) -> str:
    """A path inside the candidate's inbox as a POSIX string."""
    root, text = str(candidate.inbox.path), str(path)
    if text.startswith(root) and text[len(root) : len(root) + 1] == os.sep:  # the common case
        return text[len(root) + 1 :].replace(os.sep, "/")
    return PurePosixPath(path.relative_to(candidate.inbox.path)).as_posix()


def base_dependencies(candidate: Candidate) -> list[Path]:
    """The files every job of this candidate depends on, known from names alone."""
    paths = [candidate.path, *candidate.defaults]
    if candidate.sidecar is not None and candidate.sidecar != candidate.path:
        paths.append(candidate.sidecar)
    if candidate.mask is not None:
        paths.append(candidate.mask)
    return paths


def hash_dependencies(
    journal: Hasher, candidate: Candidate, paths: Iterable[Path]
) -> tuple[Dependency, ...]:
    """Hash each file through the journal's stat cache (no read when unchanged)."""
    deps: list[Dependency] = []
    seen: set[Path] = set()
    for path in paths:
        if path in seen:
            continue
        seen.add(path)
        try:
            digest = journal.hash_file(path)
        except FileNotFoundError:
            raise DependencyMissing(f"{relative(candidate, path)}: vanished") from None
        deps.append(Dependency(relative(candidate, path), digest))
    return tuple(deps)


def quick_fingerprint(
    settings: Settings,
    journal: Hasher,
    candidate: Candidate,
    known: Iterable[str],
    *,
    settings_fp: str | None = None,
) -> str:
    """Fingerprint from the stat cache alone, using the dependency list of the last plan.

    ``settings_fp`` is ``settings_fingerprint`` for the candidate's inbox, when the caller
    computed it once for many candidates.
    """
    paths = base_dependencies(candidate)
    paths += [candidate.inbox.path / rel for rel in known]
    deps = hash_dependencies(journal, candidate, paths)
    if settings_fp is None:
        settings_fp = settings_fingerprint(settings, candidate.inbox.default_task)
    return fingerprint(settings_fp, deps)


def prepare(settings: Settings, journal: Journal, candidate: Candidate) -> Prepared:
    """Read sidecars, validate parameters, hash dependencies and build the plan."""
    deps = list(hash_dependencies(journal, candidate, base_dependencies(candidate)))
    config_fp = settings_fingerprint(settings, candidate.inbox.default_task)
    out_dir = output_dir(candidate.inbox, candidate.rel)
    try:
        plan = _plan(settings, journal, candidate, deps)
    except InputError as exc:
        return Prepared(candidate, fingerprint(config_fp, deps), tuple(deps), out_dir, error=exc)
    return Prepared(candidate, fingerprint(config_fp, deps), tuple(deps), plan.out_dir, plan=plan)


def _plan(
    settings: Settings, journal: Journal, candidate: Candidate, deps: list[Dependency]
) -> Plan:
    layers: list[tuple[str, dict[str, Any]]] = []
    sidecar_paths = list(candidate.defaults)
    if candidate.sidecar is not None:
        sidecar_paths.append(candidate.sidecar)
    for path in sidecar_paths:
        display = relative(candidate, path)
        raw = params_mod.read_sidecar(path, display, settings.max_sidecar_bytes)
        layers.append((display, raw))
    effective = params_mod.effective_params(settings, layers)
    by_path = {d.path: d for d in deps}
    sidecar_deps = tuple(by_path[relative(candidate, p)] for p in sidecar_paths)
    sidecar_display = relative(candidate, sidecar_paths[-1]) if sidecar_paths else candidate.rel

    alias = effective.get("model") or ("mesh" if effective.get("task") == "mesh" else "default")
    try:
        model = settings.model_source(str(alias))
    except ConfigError:
        choices = ", ".join(sorted(settings.models)) or "none defined"
        raise InputError.bad_value(
            sidecar_display, "model", f"one of the [models] aliases: {choices}", alias
        ) from None
    lora = None
    if effective.get("lora"):
        lora = settings.lora_source(str(effective["lora"]), float(effective["lora_scale"]))

    mask: Dependency | None = None
    if effective.get("mask"):
        mask_path = confine(
            candidate.inbox.path,
            str(effective["mask"]),
            base=candidate.path.parent,
            display=sidecar_display,
            key="mask",
        )
        if not mask_path.is_file():
            raise InputError.bad_value(
                sidecar_display, "mask", "an existing file", effective["mask"]
            )
        mask = hash_dependencies(journal, candidate, [mask_path])[0]
        deps.append(mask)
    elif candidate.mask is not None:
        mask = by_path[relative(candidate, candidate.mask)]

    if candidate.kind.value == "job":
        pairs = _tween_pairs(journal, candidate, effective, deps, sidecar_display)
        return build_tween_plan(
            PlanInput(
                inbox=candidate.inbox,
                rel=candidate.rel,
                kind="job",
                input_sha256=by_path[candidate.rel].sha256,
                input_bytes=candidate.path.stat().st_size,
                params=effective,
                model=model,
                lora=lora,
                sidecars=sidecar_deps,
            ),
            pairs,
        )

    scenes: tuple[str, ...] = ()
    if candidate.kind.value == "prompt":
        text = read_prompt_text(candidate.path, candidate.rel)
        excluded = list(effective.get("exclude_sections") or ())
        found = split_scenes(text, excluded)
        if not found:
            raise InputError(
                candidate.rel,
                "no scenes left after excluding sections "
                + ", ".join(show_value(x) for x in excluded),
                key="exclude_sections",
                rule="leaves at least one scene",
                value=excluded,
            )
        template = str(effective.get("prompt_template") or "{text}")
        scenes = tuple(apply_template(template, s) for s in found)

    return build_plan(
        PlanInput(
            inbox=candidate.inbox,
            rel=candidate.rel,
            kind=candidate.kind.value,
            input_sha256=by_path[candidate.rel].sha256,
            input_bytes=candidate.path.stat().st_size,
            params=effective,
            model=model,
            lora=lora,
            scenes=scenes,
            mask=mask,
            sidecars=sidecar_deps,
        )
    )


def _tween_pairs(
    journal: Journal,
    candidate: Candidate,
    effective: dict[str, Any],
    deps: list[Dependency],
    display: str,
) -> list[tuple[str, Endpoint, Endpoint]]:
    """Find a tween job's endpoint images: ``start``/``end``, or seed-004 ``paths``."""
    root = candidate.inbox.path
    folder = candidate.path.parent
    name = candidate.path.name[: -len(".job.toml")]

    def endpoint(key: str, path: Path) -> Dependency:
        if not path.is_file() or classify(path.name) is not FileKind.image:
            raise InputError.bad_value(display, key, "an existing image", effective[key])
        dep = hash_dependencies(journal, candidate, [path])[0]
        deps.append(dep)
        return dep

    if effective.get("start") or effective.get("end"):
        for key in ("start", "end"):
            if not effective.get(key):
                raise InputError(display, f"{key} is required when start or end is set", key=key)
        found = []
        for key in ("start", "end"):
            path = confine(root, str(effective[key]), base=folder, display=display, key=key)
            dep = endpoint(key, path)
            expr = (split_endpoint_name(path.name) or (path.stem, ""))[0]
            found.append(Endpoint(dep, expr, effective.get("pose")))
        pose = effective.get("pose")
        path_id = sanitize_name(name) + (f"__{pose}" if pose else "")
        return [(path_id, found[0], found[1])]
    if effective.get("paths"):
        where = folder
        if effective.get("endpoints"):
            where = confine(
                root, str(effective["endpoints"]), base=folder, display=display, key="endpoints"
            )
        images: dict[tuple[str, str], Dependency] = {}
        if where.is_dir():
            for entry in sorted(where.iterdir()):
                parsed = split_endpoint_name(entry.name)
                if parsed and entry.is_file() and classify(entry.name) is FileKind.image:
                    images[parsed] = hash_dependencies(journal, candidate, [entry])[0]
        pairs = pair_endpoints(display, effective["paths"], images, effective.get("pose"))
        for _, start, end in pairs:
            deps.extend(d for d in (start.dep, end.dep) if d not in deps)
        return pairs
    raise InputError(
        display,
        "a tween needs start and end images, or paths = [{id, start, end}] over "
        "{expr}__{pose}.png endpoints",
        key="start",
        rule="required for tween",
    )
