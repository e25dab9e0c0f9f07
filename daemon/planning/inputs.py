"""An input's dependencies: the files its job depends on, hashed through the stat cache."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Protocol

from daemon.config import Settings
from daemon.errors import DependencyMissing
from daemon.intake.candidates import Candidate
from daemon.planning.keys import fingerprint, settings_fingerprint
from daemon.planning.model import Dependency


class Hasher(Protocol):
    """What hashes a dependency: the scan cache, or a survey pass in front of it."""

    def hash_file(self, path: Path) -> str:
        """The sha256 of ``path`` (raises FileNotFoundError when it is gone)."""
        ...


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


# The hash of a file in the output tree that a job depends on but that is not there (yet).
ABSENT = "absent"


def is_output_dependency(candidate: Candidate, path: Path) -> bool:
    """Whether ``path`` lies in the candidate's output tree: a file the job itself writes and a
    user may edit (``STEM.prompts.toml``), recorded by its absolute path."""
    out = str(candidate.inbox.output)
    text = str(path)
    return text.startswith(out) and text[len(out) : len(out) + 1] == os.sep


def hash_dependencies(
    hasher: Hasher, candidate: Candidate, paths: Iterable[Path]
) -> tuple[Dependency, ...]:
    """Hash each file through the stat cache (no read when unchanged).

    A missing file of the output tree hashes as ``ABSENT`` (the job writes it again); any
    other missing file raises DependencyMissing.
    """
    deps: list[Dependency] = []
    seen: set[Path] = set()
    for path in paths:
        if path in seen:
            continue
        seen.add(path)
        output = is_output_dependency(candidate, path)
        try:
            digest = hasher.hash_file(path)
        except FileNotFoundError:
            if not output:
                raise DependencyMissing(f"{relative(candidate, path)}: vanished") from None
            digest = ABSENT
        deps.append(Dependency(str(path) if output else relative(candidate, path), digest))
    return tuple(deps)


def quick_fingerprint(
    settings: Settings,
    hasher: Hasher,
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
    deps = hash_dependencies(hasher, candidate, paths)
    if settings_fp is None:
        settings_fp = settings_fingerprint(settings, candidate.inbox.default_task)
    output_root = str(candidate.inbox.output) if settings.cluster else None
    return fingerprint(settings_fp, deps, output_root=output_root)
