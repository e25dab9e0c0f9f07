"""Paths inside an inbox: confinement of sidecar-given paths, symlinks, sidecars, the _defaults.toml
chain, the folders a scan skips, and reading the small TOML files a scan peeks into."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

from daemon.config import InboxConfig
from daemon.errors import InputError
from daemon.intake.names import DEFAULTS_NAME

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


# Scan only peeks into TOML files to find masks and endpoints; a bigger file is
# reported (with the real limit) when its job is planned.
SCAN_TOML_LIMIT = 64 * 1024


REFUSED_SYMLINK = "refused: a symlink that leads outside the inbox"


TableReader = Callable[[str], "dict[str, Any] | None"]


def confine(inbox_root: Path, rel: str, *, base: Path, display: str, key: str) -> Path:
    """Resolve a sidecar-given path against ``base``; refuse one that leads outside the inbox."""
    target = resolve_inside(os.path.realpath(inbox_root), rel, os.fspath(base))
    if target is None:
        raise InputError.bad_value(display, key, "a path inside the inbox", rel)
    return Path(target)


@dataclass(frozen=True)
class InboxRoots:
    """An inbox's folder as configured and as a real path, and the folders scans skip."""

    root: str
    real_root: str
    skip: frozenset[str]


def inbox_roots(inbox: InboxConfig, excluded_roots: Iterable[Path] = ()) -> InboxRoots:
    """Resolve an inbox's roots: a realpath per folder, so look-ups of many paths share one."""
    root = os.fspath(inbox.path)
    real_root = os.path.realpath(root)
    return InboxRoots(root, real_root, excluded_roots_of(inbox, excluded_roots, root, real_root))


def inside(real_root: str, target: str) -> bool:
    return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)


def resolve_inside(real_root: str, rel: object, base: str) -> str | None:
    """The real path ``rel`` names from ``base``, or None when it is not a path inside."""
    if not isinstance(rel, str) or not rel.strip() or "\0" in rel:
        return None
    # Sidecars travel between machines: treat both separators alike everywhere.
    text = rel.replace("\\", "/")
    if text.startswith("/") or PureWindowsPath(rel).drive:
        return None
    target = os.path.realpath(os.path.join(base, text))
    return target if inside(real_root, target) else None


def usable(real_root: str, path: str) -> str | None:
    """The real path of a regular file, or of a symlink's target inside the inbox; else None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISREG(info.st_mode):
        return os.path.realpath(path)
    if not stat.S_ISLNK(info.st_mode):
        return None
    target = os.path.realpath(path)
    return target if inside(real_root, target) and os.path.isfile(target) else None


def excluded_roots_of(
    inbox: InboxConfig, extra: Iterable[Path], root: str, real_root: str
) -> frozenset[str]:
    """Folders to skip that lie strictly inside the inbox, as scan spells them.

    Both where a folder leads and where it sits count, so an output folder that is a
    symlink inside the inbox is skipped rather than refused.
    """
    found: set[str] = set()
    for path in (inbox.output, *extra):
        where = os.path.abspath(path)
        if inside(root, where) and where != root:
            found.add(os.path.join(real_root, os.path.relpath(where, root)))
        found.add(os.path.realpath(path))
    return frozenset(r for r in found if r != real_root and inside(real_root, r))


def descend(
    root: str, real_root: str, dirs: Iterable[str], skip: frozenset[str]
) -> list[str] | None:
    """The _defaults.toml files from root down through ``dirs``; None if scan never goes there."""
    found: list[str] = []
    dir_path, real_dir = root, real_root
    for d in (None, *dirs):
        if d is not None:
            dir_path, real_dir = os.path.join(dir_path, d), os.path.join(real_dir, d)
            if real_dir in skip or os.path.islink(dir_path):
                return None
        defaults = os.path.join(dir_path, DEFAULTS_NAME)
        if usable(real_root, defaults) is not None:
            found.append(defaults)
    return found


def read_small_table(path: str) -> dict[str, Any] | None:
    """A small TOML file's table, or None when it is too big, unreadable or invalid.

    Seed 004's ``expressions.json`` reads as the job table it amounts to (``base_paths`` are
    its ``paths``).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(SCAN_TOML_LIMIT + 1)
    except OSError:
        return None
    if len(data) > SCAN_TOML_LIMIT:
        return None
    if path.endswith(".json"):
        try:
            doc = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            return None
        return {"paths": doc.get("base_paths")} if isinstance(doc, dict) else None
    try:
        return tomllib.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def apply_defaults(
    table: Mapping[str, Any] | None, task: str, mask: str | None
) -> tuple[str, str | None]:
    """Fold one _defaults.toml into the folder's task and mask (later wins)."""
    if table is None:
        return task, mask
    new_task = table.get("task")
    new_mask = table.get("mask")
    return (
        new_task if isinstance(new_task, str) else task,
        new_mask if isinstance(new_mask, str) else mask,
    )


_MOUNTED: dict[str, bool] = {}  # root → it was a mount point when last seen present
_MOUNTED_LOCK = threading.Lock()


def root_present(path: str | Path) -> bool:
    """Whether an inbox or output root is really there: a folder, and still a mount point if
    it was one when first seen (an unmounted share leaves its empty mount point behind,
    which must never look like a folder whose files were all deleted)."""
    key = str(path)
    if not os.path.isdir(key):
        return False
    mounted = os.path.ismount(key)
    with _MOUNTED_LOCK:
        if _MOUNTED.get(key) and not mounted:
            return False
        _MOUNTED[key] = mounted
    return True


def inbox_available(inbox: InboxConfig, *, shared: bool) -> bool:
    """Whether an inbox can be worked on here: its folder is present, and so is its output
    folder (in a cluster it must exist, as a missing one may be an unmounted share; on one
    host a missing output folder is made at the first write)."""
    if not root_present(inbox.path):
        return False
    if root_present(inbox.output):
        return True
    return not shared and not inbox.output.exists()


def read_small_text(path: Path, display: str, max_bytes: int) -> str:
    """Read a small UTF-8 file (a BOM allowed) of at most ``max_bytes``; raise InputError
    naming ``display`` when it cannot be read, is larger or is not UTF-8."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(display, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InputError(display, f"file is larger than the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(display, f"not UTF-8 text (bad byte at position {exc.start})") from None
