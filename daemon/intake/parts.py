"""Parts: images other files name (sidecar masks, tween endpoints), never inputs themselves."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config import InboxConfig
from daemon.intake.names import FileKind, classify
from daemon.intake.paths import TableReader, read_small_table, resolve_inside, usable


@dataclass(frozen=True)
class EndpointRule:
    """Tween endpoints ``{expr}__{pose}.<ext>`` that a job file expects in one folder."""

    folder: str  # real path
    exprs: frozenset[str]
    poses: frozenset[str] | None  # None: any pose

    def matches(self, folder: str, name: str) -> bool:
        """True when an image called ``name`` in ``folder`` is one of these endpoints."""
        if folder != self.folder:
            return False
        stem = name.rpartition(".")[0]
        for expr in self.exprs:
            if stem.startswith(expr + "__"):
                pose = stem[len(expr) + 2 :]
                if pose and (self.poses is None or pose in self.poses):
                    return True
        return False


@dataclass(frozen=True)
class Parts:
    """Images other inputs name (sidecar masks, job endpoints): never inputs themselves."""

    files: frozenset[str] = frozenset()  # real paths
    endpoints: tuple[EndpointRule, ...] = ()

    def names(self, located: str, target: str) -> bool:
        """True for a file at real folder path ``located`` whose content lies at ``target``."""
        if target in self.files:
            return True
        if not self.endpoints:
            return False
        folder, _, name = located.rpartition(os.sep)
        return any(rule.matches(folder, name) for rule in self.endpoints)


NO_PARTS = Parts()


def parts_of(inbox: InboxConfig, path: Path, *, read_table: TableReader | None = None) -> Parts:
    """The images one sidecar or job file names as its parts (for a watcher's event)."""
    read_table = read_table or read_small_table
    kind = classify(path.name)
    real_root = os.path.realpath(inbox.path)
    readable = kind in (FileKind.sidecar, FileKind.job) and usable(real_root, os.fspath(path))
    table = read_table(os.fspath(path)) if readable else None
    if table is None:
        return NO_PARTS
    files, rules = named_parts(table, kind, real_root, os.path.realpath(path.parent))
    return Parts(frozenset(files), tuple(rules))


@dataclass(frozen=True)
class FolderParts:
    """What one folder's sidecars, job files and _defaults.toml mask name as parts."""

    files: tuple[str, ...] = ()
    rules: tuple[EndpointRule, ...] = ()

    def to_json(self) -> str:
        """A compact text form (for the journal)."""
        rules = [
            [r.folder, sorted(r.exprs), None if r.poses is None else sorted(r.poses)]
            for r in self.rules
        ]
        return json.dumps([list(self.files), rules], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FolderParts:
        """The inverse of ``to_json``."""
        files, rules = json.loads(text)
        return cls(
            tuple(files),
            tuple(
                EndpointRule(f, frozenset(e), None if p is None else frozenset(p))
                for f, e, p in rules
            ),
        )


def near_signatures(files: Iterable[str], rules: Iterable[EndpointRule]) -> dict[str, str]:
    """For each real folder some part lies in: a digest of the parts named in it."""
    named: dict[str, list[str]] = {}
    for f in files:
        named.setdefault(os.path.dirname(f), []).append("f" + f)
    for r in rules:
        poses = "*" if r.poses is None else "\0".join(sorted(r.poses))
        named.setdefault(r.folder, []).append(f"r{chr(0).join(sorted(r.exprs))}\1{poses}")
    return {
        folder: hashlib.blake2b("\2".join(sorted(items)).encode(), digest_size=16).hexdigest()
        for folder, items in named.items()
    }


def named_parts(
    table: Mapping[str, Any], kind: FileKind, real_root: str, real_dir: str
) -> tuple[list[str], list[EndpointRule]]:
    """The files a sidecar (``mask``) or job file (``start``, ``end``, ``paths``) names."""
    # ``base``: the image a tween's endpoints are generated from (job file or sidecar).
    keys = ("mask", "base") if kind is FileKind.sidecar else ("start", "end", "base")
    files = [f for k in keys if (f := resolve_inside(real_root, table.get(k), real_dir))]
    rules: list[EndpointRule] = []
    paths = table.get("paths")
    if kind is FileKind.job and isinstance(paths, list):
        exprs = frozenset(
            e
            for entry in paths
            if isinstance(entry, dict)
            for e in (entry.get("start"), entry.get("end"))
            if isinstance(e, str) and e
        )
        pose = table.get("pose")
        poses = None
        if isinstance(pose, str):
            poses = frozenset({pose})
        elif isinstance(pose, list) and all(isinstance(p, str) for p in pose):
            poses = frozenset(pose)
        folder: str | None = real_dir
        if "endpoints" in table:
            folder = resolve_inside(real_root, table["endpoints"], real_dir)
        if exprs and folder is not None:
            rules.append(EndpointRule(folder, exprs, poses))
    return files, rules
