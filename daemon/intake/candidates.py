"""Candidates: an input file with the files that shape its job (sidecar, _defaults.toml chain,
mask).

``make_candidate`` is the one place a scan and a single look-up (``candidate_for``) decide what
an input file is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from daemon.config import InboxConfig
from daemon.intake.names import (
    INPUT_KINDS,
    MASK_SUFFIXES,
    FileKind,
    classify,
    is_ignored_dir,
    is_ignored_name,
    sidecar_name,
)
from daemon.intake.parts import NO_PARTS, Parts
from daemon.intake.paths import (
    InboxRoots,
    TableReader,
    apply_defaults,
    descend,
    inbox_roots,
    inside,
    read_small_table,
    resolve_inside,
    usable,
)
from daemon.values import Task


@dataclass(frozen=True)
class Candidate:
    """An input found in an inbox, with the files that shape its job."""

    inbox: InboxConfig
    path: Path  # absolute, below inbox.path
    rel: str  # POSIX path inside the inbox
    kind: FileKind  # image, prompt or job
    sidecar: Path | None  # STEM.toml beside it; a job file is its own sidecar
    defaults: tuple[Path, ...]  # every _defaults.toml from the inbox root down
    mask: Path | None  # STEM.mask.<image ext> beside an image


@dataclass(frozen=True)
class FolderView:
    """What a folder contributes to the inputs in it; built by a scan or by one look-up."""

    folder: Path  # below inbox.path, as configured; built once, Path parsing is slow
    real_dir: str
    prefix: str  # "" or "a/b/"
    chain: tuple[Path, ...]
    tween: bool
    defaults_mask: str | None  # real path of the mask a _defaults.toml names here
    has: Callable[[str], bool]  # a usable file of that name is in the folder
    has_masks: bool


def make_candidate(
    inbox: InboxConfig,
    view: FolderView,
    name: str,
    kind: FileKind,
    target: str | None,
    parts: Parts,
) -> Candidate | None:
    """The one place scan_inbox and candidate_for decide what an input file is."""
    path = view.folder / name
    mask = None
    if kind is FileKind.image:
        if view.tween:
            return None  # in a tween folder every image is an endpoint
        if view.defaults_mask or parts.files or parts.endpoints:
            located = os.path.join(view.real_dir, name)
            real = target or located
            if real == view.defaults_mask or parts.names(located, real):
                return None
        if view.has_masks:
            stem = name.rpartition(".")[0]
            mask_name = next((stem + s for s in MASK_SUFFIXES if view.has(stem + s)), None)
            mask = view.folder / mask_name if mask_name else None
    if kind is FileKind.job and name.endswith(".job.toml"):
        sidecar: Path | None = path  # a job file is its own sidecar
    else:
        named = sidecar_name(name)
        has_sidecar = named is not None and view.has(named)
        sidecar = view.folder / named if named and has_sidecar else None
    return Candidate(inbox, path, view.prefix + name, kind, sidecar, view.chain, mask)


def candidate_for(
    inbox: InboxConfig,
    path: Path,
    *,
    parts: Parts = NO_PARTS,
    excluded_roots: Iterable[Path] = (),
    read_table: TableReader | None = None,
    roots: InboxRoots | None = None,
) -> Candidate | None:
    """Classify one path as scan_inbox would; None when ignored, refused or a part.

    Masks named by sidecars and tween endpoints named by job files elsewhere are only
    known from a scan: pass the last ``ScanResult.parts`` to agree with it. ``roots``
    (from ``inbox_roots``) replaces ``excluded_roots`` for callers that look up many paths.
    """
    roots = roots or inbox_roots(inbox, excluded_roots)
    root, real_root = roots.root, roots.real_root
    absolute = os.path.abspath(path)
    base = next((b for b in (root, real_root) if inside(b, absolute) and absolute != b), None)
    if base is None:
        return None
    *dirs, name = Path(os.path.relpath(absolute, base)).parts
    if (dirs and not inbox.recursive) or any(map(is_ignored_dir, dirs)) or is_ignored_name(name):
        return None
    kind = classify(name)
    if kind not in INPUT_KINDS:
        return None
    chain = descend(root, real_root, dirs, roots.skip)
    if chain is None:
        return None
    dir_path = os.path.join(root, *dirs)
    # As in a scan: only a symlink has a target of its own. A regular file lies at
    # real_dir/name already (descend refused symlinked folders), so it costs one lstat.
    target: str | None = None
    try:
        info = os.lstat(os.path.join(dir_path, name))
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        target = usable(real_root, os.path.join(dir_path, name))
        if target is None:
            return None
    elif not stat.S_ISREG(info.st_mode):
        return None
    task, defaults_mask = inbox.default_task, None
    read_table = read_table or read_small_table
    for defaults in chain:
        task, defaults_mask = apply_defaults(read_table(defaults), task, defaults_mask)
    real_dir = os.path.join(real_root, *dirs)
    view = FolderView(
        folder=Path(dir_path),
        real_dir=real_dir,
        prefix="".join(d + "/" for d in dirs),
        chain=tuple(Path(p) for p in chain),
        tween=task == Task.tween,
        defaults_mask=resolve_inside(real_root, defaults_mask, real_dir),
        has=lambda n: usable(real_root, os.path.join(dir_path, n)) is not None,
        has_masks=True,
    )
    return make_candidate(inbox, view, name, kind, target, parts)
