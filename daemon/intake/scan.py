"""Scanning an inbox: walk its folders and return the inputs, the refusals and the parts.

With a ``Shortcut`` (folder marks, see ``daemon.survey.marks``), folders unchanged since all
their inputs were found done are listed and stat'ed, but not classified.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from daemon.config import InboxConfig
from daemon.intake.candidates import Candidate, FolderView, make_candidate
from daemon.intake.names import (
    DEFAULTS_NAME,
    INPUT_KINDS,
    FileKind,
    classify,
    is_ignored_dir,
    is_ignored_name,
)
from daemon.intake.parts import (
    NO_PARTS,
    EndpointRule,
    FolderParts,
    Parts,
    named_parts,
    near_signatures,
)
from daemon.intake.paths import (
    REFUSED_SYMLINK,
    TableReader,
    apply_defaults,
    excluded_roots_of,
    inside,
    read_small_table,
    resolve_inside,
)
from daemon.values import Task


@dataclass(frozen=True)
class ScanResult:
    """What a scan found: the inputs, the refusals a user should hear about, and the parts."""

    candidates: list[Candidate]
    rejected: list[tuple[Path, str]]
    parts: Parts = NO_PARTS
    unchanged: int = 0  # inputs in folders a ``Shortcut`` vouched for (all done)
    folders: tuple[ListedFolder, ...] = ()  # with a ``Shortcut``: the folders classified


class Shortcut(Protocol):
    """Lets a scan skip folders that are unchanged since all their inputs were found done
    (``survey.FolderMarks``): their files are listed and stat'ed, but not classified."""

    def recorded(self, prefix: str, listing: str) -> FolderParts | None:
        """The parts the folder named when it was marked, if it was marked with ``listing``."""

    def unchanged(self, prefix: str, near: str) -> int | None:
        """The number of inputs in the folder if its mark still holds; else None."""


@dataclass(frozen=True)
class ListedFolder:
    """A folder a scan classified, with what a mark of it would record (``Shortcut``)."""

    prefix: str
    listing: str | None  # None: never marked (it holds a symlink, or a file vanished)
    near: str
    parts: FolderParts
    inputs: tuple[str, ...]  # the rel of every candidate in it


@dataclass
class _Walked:
    """One folder met by ``scan_inbox``'s walk."""

    view: FolderView
    listing_sig: str | None
    parts: FolderParts
    listing: _Listing | None  # None until classified (a marked folder may never be)


def scan_inbox(
    inbox: InboxConfig,
    *,
    excluded_roots: Iterable[Path] = (),
    read_table: TableReader | None = None,
    shortcut: Shortcut | None = None,
) -> ScanResult:
    """Walk an inbox and return its inputs sorted by ``rel``, the refusals and the parts.

    Reads nothing but directory listings and the small TOML files that name masks,
    endpoints and folder tasks (through ``read_table``, which may answer from a cache);
    directory symlinks are never followed. With a ``shortcut``, each folder's files are
    stat'ed too, and a folder it vouches for is counted in ``unchanged`` instead of
    being classified; the others are described in ``folders``.
    """
    read_table = read_table or read_small_table
    root = os.fspath(inbox.path)
    real_root = os.path.realpath(root)
    skip = excluded_roots_of(inbox, excluded_roots, root, real_root)
    rejected: list[tuple[Path, str]] = []
    walked: list[_Walked] = []
    stack: list[tuple[str, str, str, tuple[Path, ...], str, str | None, str | None]] = [
        (root, real_root, "", (), inbox.default_task, None, "")
    ]
    while stack:
        dir_path, real_dir, prefix, chain, task, defaults_mask, context = stack.pop()
        try:
            entries = _read_folder(dir_path)
        except OSError as exc:
            rejected.append(_unreadable(Path(dir_path), prefix, exc))
            continue
        listing_sig, recorded, stated = None, None, None
        if shortcut is not None and context is not None:
            stated = _stat_folder(entries, f"{real_dir}\0{context}")
            if stated is not None:
                listing_sig = stated.signature
                recorded = shortcut.recorded(prefix, listing_sig)
        listing = None
        if recorded is None:
            listing = _list_folder(inbox, entries, real_dir, prefix, real_root, skip, rejected)
            subdirs, has_defaults = (
                listing.subdirs,
                listing.kinds.get(DEFAULTS_NAME) is FileKind.defaults,
            )
        else:  # a marked folder holds no symlink: names tell everything the walk needs
            assert stated is not None
            subdirs = [
                name
                for name in stated.dirs
                if inbox.recursive
                and not is_ignored_dir(name)
                and os.path.join(real_dir, name) not in skip
            ]
            has_defaults = stated.has_defaults
        if has_defaults:
            defaults = os.path.join(dir_path, DEFAULTS_NAME)
            chain = (*chain, Path(defaults))
            task, defaults_mask = apply_defaults(read_table(defaults), task, defaults_mask)
            if context is not None:
                context = _chain_context(context, defaults)
        for sub in subdirs:
            sub_paths = (os.path.join(dir_path, sub), os.path.join(real_dir, sub))
            stack.append((*sub_paths, prefix + sub + "/", chain, task, defaults_mask, context))
        view = FolderView(
            folder=Path(dir_path),
            real_dir=real_dir,
            prefix=prefix,
            chain=chain,
            tween=task == Task.tween,
            defaults_mask=resolve_inside(real_root, defaults_mask, real_dir),
            has=lambda name: False,
            has_masks=False,
        )
        if listing is not None:
            view = _classifying(view, listing)
            recorded = _folder_parts(view, listing, read_table, real_root)
        assert recorded is not None
        walked.append(_Walked(view, listing_sig, recorded, listing))

    part_files = {f for w in walked for f in w.parts.files}
    rules = [r for w in walked for r in w.parts.rules]
    parts = Parts(frozenset(part_files), tuple(rules))
    near = near_signatures(part_files, rules)
    candidates: list[Candidate] = []
    listed: list[ListedFolder] = []
    unchanged = 0
    for w in walked:
        here = near.get(w.view.real_dir, "")
        if w.listing is None:
            assert shortcut is not None
            count = shortcut.unchanged(w.view.prefix, here)
            if count is not None:
                unchanged += count
                continue
            # Its mark no longer holds (an output folder or outside file changed, or parts
            # named in it did): classify it, listed again (the walk kept no entries).
            try:
                entries = _read_folder(os.fspath(w.view.folder))
            except OSError as exc:
                rejected.append(_unreadable(w.view.folder, w.view.prefix, exc))
                continue
            w.listing = _list_folder(
                inbox, entries, w.view.real_dir, w.view.prefix, real_root, skip, rejected
            )
            w.view = _classifying(w.view, w.listing)
        found = [
            c
            for name, kind in w.listing.kinds.items()
            if kind in INPUT_KINDS
            and (c := make_candidate(inbox, w.view, name, kind, w.listing.targets.get(name), parts))
        ]
        candidates += found
        if shortcut is not None:
            rels = tuple(c.rel for c in found)
            listed.append(ListedFolder(w.view.prefix, w.listing_sig, here, w.parts, rels))
    candidates.sort(key=lambda c: c.rel)
    rejected.sort(key=lambda r: r[1])
    return ScanResult(candidates, rejected, parts, unchanged, tuple(listed))


def _unreadable(folder: Path, prefix: str, exc: OSError) -> tuple[Path, str]:
    where = prefix.rstrip("/") or "."
    return folder, f"{where}: cannot read this folder ({exc.strerror})"


def _read_folder(dir_path: str) -> list[os.DirEntry[str]]:
    with os.scandir(dir_path) as entries:
        return list(entries)


class _Stated(NamedTuple):
    """A folder's files digested with the context (``_stat_folder``), and its folders."""

    signature: str
    dirs: list[str]
    has_defaults: bool  # a regular file _defaults.toml is here


def _stat_folder(entries: list[os.DirEntry[str]], context: str) -> _Stated | None:
    """Digest a folder's files (names, sizes, mtimes, inodes) and ``context``; None when that
    cannot vouch for the folder (a symlink, whose target may change unseen, or a file that
    vanished while listed)."""
    keys: list[str] = []
    dirs: list[str] = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            dirs.append(entry.name)  # a folder has a digest of its own
            continue
        if entry.is_symlink():
            return None
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return None
        keys.append(f"{entry.name}/{st.st_size}/{st.st_mtime_ns}/{st.st_ino}")
    keys.sort()
    at = bisect.bisect_left(keys, DEFAULTS_NAME + "/")
    has_defaults = at < len(keys) and keys[at].startswith(DEFAULTS_NAME + "/")
    keys.append(context)
    signature = hashlib.blake2b("\0".join(keys).encode(), digest_size=16).hexdigest()
    return _Stated(signature, dirs, has_defaults)


def _chain_context(context: str, defaults: str) -> str | None:
    """The context below a folder with a _defaults.toml: its stats join the chain's."""
    try:
        st = os.stat(defaults)
    except OSError:
        return None
    return f"{context}\0{defaults}/{st.st_size}/{st.st_mtime_ns}/{st.st_ino}"


def _classifying(view: FolderView, listing: _Listing) -> FolderView:
    return dataclasses.replace(
        view, has=listing.kinds.__contains__, has_masks=FileKind.mask in listing.kinds.values()
    )


def _folder_parts(
    view: FolderView, listing: _Listing, read_table: TableReader, real_root: str
) -> FolderParts:
    """The parts a folder's sidecars, job files and _defaults.toml mask name."""
    files: list[str] = [] if view.defaults_mask is None else [view.defaults_mask]
    rules: list[EndpointRule] = []
    for name, kind in listing.kinds.items():
        if kind in (FileKind.sidecar, FileKind.job):
            table = read_table(os.path.join(view.folder, name))
            if table is not None:
                found_files, found_rules = named_parts(table, kind, real_root, view.real_dir)
                files += found_files
                rules += found_rules
    return FolderParts(tuple(files), tuple(rules))


@dataclass(frozen=True)
class _Listing:
    """The usable entries of one folder."""

    kinds: dict[str, FileKind]  # files that are not FileKind.other
    targets: dict[str, str]  # symlinked files among them: where they lead
    subdirs: list[str]  # folders to walk into


def _list_folder(
    inbox: InboxConfig,
    entries: list[os.DirEntry[str]],
    real_dir: str,
    prefix: str,
    real_root: str,
    skip: frozenset[str],
    rejected: list[tuple[Path, str]],
) -> _Listing:
    """Classify one folder's entries; refusals go to ``rejected``. Costs no stat per regular
    file."""
    listing = _Listing({}, {}, [])
    for entry in entries:
        name = entry.name
        if entry.is_dir(follow_symlinks=False):
            real_sub = os.path.join(real_dir, name)
            if inbox.recursive and not is_ignored_dir(name) and real_sub not in skip:
                listing.subdirs.append(name)
            continue
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if target in skip or os.path.join(real_dir, name) in skip:
                continue
            if os.path.isdir(target):
                wanted = inbox.recursive and not is_ignored_dir(name)
            else:
                wanted = not is_ignored_name(name) and classify(name) is not FileKind.other
            if wanted and not inside(real_root, target):
                rejected.append((Path(entry.path), f"{prefix}{name}: {REFUSED_SYMLINK}"))
            if not wanted or not inside(real_root, target) or not os.path.isfile(target):
                continue  # folders are never followed; broken links are not files
            listing.targets[name] = target
        elif not entry.is_file(follow_symlinks=False) or is_ignored_name(name):
            continue
        kind = classify(name)
        if kind is not FileKind.other:
            listing.kinds[name] = kind
    return listing
