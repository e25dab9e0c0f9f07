"""Intake: which files in an inbox are inputs, and which files belong to each input."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PureWindowsPath
from typing import Any, NamedTuple, Protocol

from daemon.config import InboxConfig
from daemon.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROMPT_EXTENSIONS = (".txt", ".prompt", ".md")
DEFAULTS_NAME = "_defaults.toml"
# Scan only peeks into TOML files to find masks and endpoints; a bigger file is
# reported (with the real limit) when its job is planned.
SCAN_TOML_LIMIT = 64 * 1024
REFUSED_SYMLINK = "refused: a symlink that leads outside the inbox"

_IGNORED_SUFFIXES = (".part", ".crdownload", ".download", ".tmp")
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
# Masks are looked up by name; .png first because that is what the docs show.
_MASK_SUFFIXES = tuple(".mask" + ext for e in IMAGE_EXTENSIONS for ext in (e, e.upper()))


class FileKind(Enum):
    """What a file in an inbox is, judged from its name alone."""

    image = "image"
    prompt = "prompt"
    job = "job"
    sidecar = "sidecar"
    defaults = "defaults"
    mask = "mask"
    other = "other"


INPUT_KINDS = frozenset({FileKind.image, FileKind.prompt, FileKind.job})


def classify(name: str) -> FileKind:
    """Classify a file name; image and prompt extensions are case-insensitive."""
    if name.endswith(".toml"):
        if name == DEFAULTS_NAME:
            return FileKind.defaults
        return FileKind.job if name.endswith(".job.toml") else FileKind.sidecar
    stem, dot, ext = name.lower().rpartition(".")
    if not dot:
        return FileKind.other
    ext = "." + ext
    if ext in IMAGE_EXTENSIONS:
        return FileKind.mask if stem.endswith(".mask") else FileKind.image
    return FileKind.prompt if ext in PROMPT_EXTENSIONS else FileKind.other


def is_ignored_name(name: str) -> bool:
    """True for hidden files, editor locks and the temporaries and conflict copies of sync tools."""
    if name.startswith((".", "~")):  # also .syncthing.*.tmp, ~syncthing~*.tmp, .~lock.*
        return True
    lower = name.lower()
    return (
        lower in _IGNORED_NAMES
        or lower.endswith(_IGNORED_SUFFIXES)
        or ".sync-conflict-" in lower
        or "conflicted copy" in lower
    )


def is_ignored_dir(name: str) -> bool:
    """True for hidden folders, ``~*``, ``_*`` (``_done``, ``_failed``), and folders named
    like a temporary or a conflict copy: Safari downloads into a ``NAME.download`` folder."""
    return name.startswith("_") or is_ignored_name(name)


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


@dataclass(frozen=True)
class ScanResult:
    """What a scan found: the inputs, the refusals a user should hear about, and the parts."""

    candidates: list[Candidate]
    rejected: list[tuple[Path, str]]
    parts: Parts = NO_PARTS
    unchanged: int = 0  # inputs in folders a ``Shortcut`` vouched for (all done)
    folders: tuple[ListedFolder, ...] = ()  # with a ``Shortcut``: the folders classified


def confine(inbox_root: Path, rel: str, *, base: Path, display: str, key: str) -> Path:
    """Resolve a sidecar-given path against ``base``; refuse one that leads outside the inbox."""
    target = _resolve_inside(os.path.realpath(inbox_root), rel, os.fspath(base))
    if target is None:
        raise InputError.bad_value(display, key, "a path inside the inbox", rel)
    return Path(target)


def find_sidecar(inbox_root: Path, path: Path) -> Path | None:
    """``STEM.toml`` beside ``path`` when it is usable; a job file is its own sidecar."""
    if classify(path.name) is FileKind.job:
        return path
    real_root = os.path.realpath(inbox_root)
    name = _sidecar_name(path.name)
    if name is None or _usable(real_root, os.path.join(path.parent, name)) is None:
        return None
    return path.parent / name


def defaults_chain(inbox_root: Path, folder: Path) -> tuple[Path, ...]:
    """Every ``_defaults.toml`` from ``inbox_root`` down to ``folder`` (outermost first)."""
    dirs = folder.relative_to(inbox_root).parts
    found = _descend(os.fspath(inbox_root), os.path.realpath(inbox_root), dirs, frozenset())
    return tuple(Path(p) for p in found or ())


TableReader = Callable[[str], "dict[str, Any] | None"]


def parts_of(inbox: InboxConfig, path: Path, *, read_table: TableReader | None = None) -> Parts:
    """The images one sidecar or job file names as its parts (for a watcher's event)."""
    read_table = read_table or read_small_table
    kind = classify(path.name)
    real_root = os.path.realpath(inbox.path)
    usable = kind in (FileKind.sidecar, FileKind.job) and _usable(real_root, os.fspath(path))
    table = read_table(os.fspath(path)) if usable else None
    if table is None:
        return NO_PARTS
    files, rules = _named_parts(table, kind, real_root, os.path.realpath(path.parent))
    return Parts(frozenset(files), tuple(rules))


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
    return InboxRoots(root, real_root, _excluded(inbox, excluded_roots, root, real_root))


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
    base = next((b for b in (root, real_root) if _inside(b, absolute) and absolute != b), None)
    if base is None:
        return None
    *dirs, name = Path(os.path.relpath(absolute, base)).parts
    if (dirs and not inbox.recursive) or any(map(is_ignored_dir, dirs)) or is_ignored_name(name):
        return None
    kind = classify(name)
    if kind not in INPUT_KINDS:
        return None
    chain = _descend(root, real_root, dirs, roots.skip)
    if chain is None:
        return None
    dir_path = os.path.join(root, *dirs)
    # As in a scan: only a symlink has a target of its own. A regular file lies at
    # real_dir/name already (_descend refused symlinked folders), so it costs one lstat.
    target: str | None = None
    try:
        info = os.lstat(os.path.join(dir_path, name))
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        target = _usable(real_root, os.path.join(dir_path, name))
        if target is None:
            return None
    elif not stat.S_ISREG(info.st_mode):
        return None
    task, defaults_mask = inbox.default_task, None
    read_table = read_table or read_small_table
    for defaults in chain:
        task, defaults_mask = _apply_defaults(read_table(defaults), task, defaults_mask)
    real_dir = os.path.join(real_root, *dirs)
    view = _Folder(
        folder=Path(dir_path),
        real_dir=real_dir,
        prefix="".join(d + "/" for d in dirs),
        chain=tuple(Path(p) for p in chain),
        tween=task == "tween",
        defaults_mask=_resolve_inside(real_root, defaults_mask, real_dir),
        has=lambda n: _usable(real_root, os.path.join(dir_path, n)) is not None,
        has_masks=True,
    )
    return _candidate(inbox, view, name, kind, target, parts)


class Shortcut(Protocol):
    """Lets a scan skip folders that are unchanged since all their inputs were found done
    (``survey.FolderMarks``): their files are listed and stat'ed, but not classified."""

    def recorded(self, prefix: str, listing: str) -> FolderParts | None:
        """The parts the folder named when it was marked, if it was marked with ``listing``."""

    def unchanged(self, prefix: str, near: str) -> int | None:
        """The number of inputs in the folder if its mark still holds; else None."""


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

    view: _Folder
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
    skip = _excluded(inbox, excluded_roots, root, real_root)
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
            task, defaults_mask = _apply_defaults(read_table(defaults), task, defaults_mask)
            if context is not None:
                context = _chain_context(context, defaults)
        for sub in subdirs:
            sub_paths = (os.path.join(dir_path, sub), os.path.join(real_dir, sub))
            stack.append((*sub_paths, prefix + sub + "/", chain, task, defaults_mask, context))
        view = _Folder(
            folder=Path(dir_path),
            real_dir=real_dir,
            prefix=prefix,
            chain=chain,
            tween=task == "tween",
            defaults_mask=_resolve_inside(real_root, defaults_mask, real_dir),
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
    near = _near_signatures(part_files, rules)
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
            and (c := _candidate(inbox, w.view, name, kind, w.listing.targets.get(name), parts))
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


def _classifying(view: _Folder, listing: _Listing) -> _Folder:
    return dataclasses.replace(
        view, has=listing.kinds.__contains__, has_masks=FileKind.mask in listing.kinds.values()
    )


def _folder_parts(
    view: _Folder, listing: _Listing, read_table: TableReader, real_root: str
) -> FolderParts:
    """The parts a folder's sidecars, job files and _defaults.toml mask name."""
    files: list[str] = [] if view.defaults_mask is None else [view.defaults_mask]
    rules: list[EndpointRule] = []
    for name, kind in listing.kinds.items():
        if kind in (FileKind.sidecar, FileKind.job):
            table = read_table(os.path.join(view.folder, name))
            if table is not None:
                found_files, found_rules = _named_parts(table, kind, real_root, view.real_dir)
                files += found_files
                rules += found_rules
    return FolderParts(tuple(files), tuple(rules))


def _near_signatures(files: Iterable[str], rules: Iterable[EndpointRule]) -> dict[str, str]:
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
            if wanted and not _inside(real_root, target):
                rejected.append((Path(entry.path), f"{prefix}{name}: {REFUSED_SYMLINK}"))
            if not wanted or not _inside(real_root, target) or not os.path.isfile(target):
                continue  # folders are never followed; broken links are not files
            listing.targets[name] = target
        elif not entry.is_file(follow_symlinks=False) or is_ignored_name(name):
            continue
        kind = classify(name)
        if kind is not FileKind.other:
            listing.kinds[name] = kind
    return listing


@dataclass(frozen=True)
class _Folder:
    """What a folder contributes to the inputs in it; built by a scan or by one look-up."""

    folder: Path  # below inbox.path, as configured; built once, Path parsing is slow
    real_dir: str
    prefix: str  # "" or "a/b/"
    chain: tuple[Path, ...]
    tween: bool
    defaults_mask: str | None  # real path of the mask a _defaults.toml names here
    has: Callable[[str], bool]  # a usable file of that name is in the folder
    has_masks: bool


def _candidate(
    inbox: InboxConfig,
    view: _Folder,
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
            mask_name = next((stem + s for s in _MASK_SUFFIXES if view.has(stem + s)), None)
            mask = view.folder / mask_name if mask_name else None
    if kind is FileKind.job:
        sidecar: Path | None = path
    else:
        sidecar_name = _sidecar_name(name)
        has_sidecar = sidecar_name is not None and view.has(sidecar_name)
        sidecar = view.folder / sidecar_name if sidecar_name and has_sidecar else None
    return Candidate(inbox, path, view.prefix + name, kind, sidecar, view.chain, mask)


def _sidecar_name(name: str) -> str | None:
    """``STEM.toml`` for ``STEM.ext``, unless that name means something else (a job, defaults)."""
    stem, dot, _ = name.rpartition(".")
    if not dot or not stem or stem == "_defaults" or stem.endswith(".job"):
        return None
    return stem + ".toml"


def _inside(real_root: str, target: str) -> bool:
    return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)


def _resolve_inside(real_root: str, rel: object, base: str) -> str | None:
    """The real path ``rel`` names from ``base``, or None when it is not a path inside."""
    if not isinstance(rel, str) or not rel.strip() or "\0" in rel:
        return None
    # Sidecars travel between machines: treat both separators alike everywhere.
    text = rel.replace("\\", "/")
    if text.startswith("/") or PureWindowsPath(rel).drive:
        return None
    target = os.path.realpath(os.path.join(base, text))
    return target if _inside(real_root, target) else None


def _usable(real_root: str, path: str) -> str | None:
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
    return target if _inside(real_root, target) and os.path.isfile(target) else None


def _excluded(
    inbox: InboxConfig, extra: Iterable[Path], root: str, real_root: str
) -> frozenset[str]:
    """Folders to skip that lie strictly inside the inbox, as scan spells them.

    Both where a folder leads and where it sits count, so an output folder that is a
    symlink inside the inbox is skipped rather than refused.
    """
    found: set[str] = set()
    for path in (inbox.output, *extra):
        where = os.path.abspath(path)
        if _inside(root, where) and where != root:
            found.add(os.path.join(real_root, os.path.relpath(where, root)))
        found.add(os.path.realpath(path))
    return frozenset(r for r in found if r != real_root and _inside(real_root, r))


def _descend(
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
        if _usable(real_root, defaults) is not None:
            found.append(defaults)
    return found


def read_small_table(path: str) -> dict[str, Any] | None:
    """A small TOML file's table, or None when it is too big, unreadable or invalid."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(SCAN_TOML_LIMIT + 1)
    except OSError:
        return None
    if len(data) > SCAN_TOML_LIMIT:
        return None
    try:
        return tomllib.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _apply_defaults(
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


def _named_parts(
    table: Mapping[str, Any], kind: FileKind, real_root: str, real_dir: str
) -> tuple[list[str], list[EndpointRule]]:
    """The files a sidecar (``mask``) or job file (``start``, ``end``, ``paths``) names."""
    keys = ("mask",) if kind is FileKind.sidecar else ("start", "end")
    files = [f for k in keys if (f := _resolve_inside(real_root, table.get(k), real_dir))]
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
            folder = _resolve_inside(real_root, table["endpoints"], real_dir)
        if exprs and folder is not None:
            rules.append(EndpointRule(folder, exprs, poses))
    return files, rules
