"""The gallery's index of the output trees: every output a manifest lists, kept in memory and
brought up to date on each request by stat alone.

A request stats every folder the index knows (about 2,500 for 10,000 outputs); only a folder
whose modification time changed is listed again (its new subfolders, its XMP sidecars) and its
manifest read again (manifests, like outputs and sidecars, are written by a rename, which
changes the folder). Ratings are read from the sidecars and kept with the sidecar's stat, which
is checked on every request too, so a rating written in place by another tool shows at the
next page load. ``generation`` changes whenever anything the pages show changed, so pages can
keep their sorted lists between requests. No request walks the tree or reads 10,000
manifests; the first one after a start does (once).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from daemon.outputs.manifest import MANIFEST_NAME, Manifest, read_manifest
from daemon.outputs.ratings import Rating, parse_rating, sidecar_paths

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
MESH_SUFFIXES = frozenset({".glb"})
HIDDEN_ROLES = frozenset({"contact", "prompts", "preview"})
MAX_XMP_BYTES = 1 << 20


class Filter(str, Enum):
    """Which outputs a gallery page lists."""

    all = "all"
    favorites = "favorites"
    unselected = "unselected"
    discarded = "discarded"


class Order(str, Enum):
    """How a gallery page is sorted."""

    newest = "newest"
    name = "name"


@dataclass(frozen=True)
class Item:
    """One output as the gallery shows it."""

    root: int  # which output root (the inbox's index)
    rel: str  # below the root, with "/"
    folder: str  # the output folder below the root
    seed: int | None
    mtime: float
    mesh: bool
    gone: bool  # deleted (a discard recorded where it was)
    sequence: bool  # a frame of a tween sequence


@dataclass
class _Folder:
    mtime_ns: int = -1
    subdirs: tuple[str, ...] = ()
    manifest_key: tuple[int, int, int] | None = None
    manifest: Manifest | None = None
    items: tuple[Item, ...] = ()
    sidecars: frozenset[str] = frozenset()


@dataclass
class _Sidecar:
    key: tuple[int, int, int]
    rating: Rating


@dataclass
class Catalog:
    """The outputs below ``roots`` (one per inbox), their seeds and their ratings."""

    roots: tuple[Path, ...]
    _folders: dict[tuple[int, str], _Folder] = field(default_factory=dict)
    _ratings: dict[tuple[int, str], _Sidecar] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _items: list[Item] = field(default_factory=list)
    _rated: list[Item] = field(default_factory=list)  # items with a sidecar
    generation: int = 0  # changes whenever an item or a rating changed
    _listed: int = -1  # the generation of _items

    def refresh(self) -> list[Item]:
        """Bring the index up to date (stats only, unless something changed); every item."""
        with self._lock:
            for index, _root in enumerate(self.roots):
                self._visit(index, "")
            if self._listed != self.generation:
                self._items = [i for f in self._folders.values() for i in f.items]
                self._rated = [i for i in self._items if self._has_sidecar(i)]
                keep = {(i.root, i.rel) for i in self._rated}
                self._ratings = {k: v for k, v in self._ratings.items() if k in keep}
                self._listed = self.generation
            for item in self._rated:
                self._read_rating(item)
            return self._items

    def _has_sidecar(self, item: Item) -> bool:
        folder = self._folders[(item.root, item.folder)]
        name = item.rel.rsplit("/", 1)[-1]
        stem = name.rsplit(".", 1)[0]
        return name + ".xmp" in folder.sidecars or stem + ".xmp" in folder.sidecars

    def rating(self, item: Item) -> Rating:
        """The rating of an item as of the last refresh."""
        found = self._ratings.get((item.root, item.rel))
        return Rating.none if found is None else found.rating

    def path(self, item: Item) -> Path:
        """The item's file."""
        return self.roots[item.root] / item.rel

    def folder(self, root: int, folder: str) -> Manifest | None:
        """The manifest of an output folder the index knows."""
        found = self._folders.get((root, folder))
        return None if found is None else found.manifest

    def _visit(self, root: int, rel: str) -> None:
        base = os.fspath(self.roots[root])
        key = (root, rel)
        try:
            mtime_ns = os.stat(f"{base}/{rel}" if rel else base).st_mtime_ns
        except OSError:
            self._forget(root, rel)
            return
        known = self._folders.get(key)
        if known is None:
            known = self._folders[key] = _Folder()
        if known.mtime_ns != mtime_ns:
            path = self.roots[root] / rel if rel else self.roots[root]
            self._list(root, rel, path, known, mtime_ns)
            self.generation += 1
        for name in known.subdirs:
            self._visit(root, f"{rel}/{name}" if rel else name)

    def _list(self, root: int, rel: str, path: Path, known: _Folder, mtime_ns: int) -> None:
        subdirs, sidecars = [], set()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.name.startswith((".", "_")):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    elif entry.name.lower().endswith(".xmp"):
                        sidecars.add(entry.name)
        except OSError:
            return
        gone = set(known.subdirs) - set(subdirs)
        for name in gone:
            self._forget(root, f"{rel}/{name}" if rel else name)
            self.generation += 1
        known.mtime_ns = mtime_ns
        known.subdirs = tuple(sorted(subdirs))
        known.sidecars = frozenset(sidecars)
        self._reread_manifest(root, rel, path, known, force=True)

    def _reread_manifest(
        self, root: int, rel: str, path: Path, known: _Folder, *, force: bool = False
    ) -> None:
        try:
            st = os.stat(path / MANIFEST_NAME)
            key: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if key == known.manifest_key and not force:
            return
        known.manifest_key = key
        known.manifest = read_manifest(path) if key is not None else None
        known.items = tuple(self._folder_items(root, rel, path, known)) if known.manifest else ()

    def _folder_items(self, root: int, rel: str, path: Path, known: _Folder) -> list[Item]:
        manifest = known.manifest
        assert manifest is not None
        found = []
        sequence = manifest.sequence is not None
        for entry in manifest.outputs or ():
            name = entry.file
            if name is None or "/" in name or "\\" in name or name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if entry.role in HIDDEN_ROLES or suffix not in IMAGE_SUFFIXES | MESH_SUFFIXES:
                continue
            try:
                mtime = os.stat(path / name).st_mtime
                gone = False
            except OSError:
                if name + ".xmp" not in known.sidecars:
                    continue  # not made yet, or deleted and not recorded yet
                mtime, gone = 0.0, True
            item_rel = f"{rel}/{name}" if rel else name
            mesh = suffix in MESH_SUFFIXES
            found.append(Item(root, item_rel, rel, entry.seed, mtime, mesh, gone, sequence))
        return found

    def _read_rating(self, item: Item) -> None:
        image = self.roots[item.root] / item.rel
        for sidecar in sidecar_paths(image):
            try:
                st = os.stat(sidecar)
            except OSError:
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._ratings.get((item.root, item.rel))
            if cached is not None and cached.key == key:
                return
            try:
                with open(sidecar, "rb") as handle:
                    data = handle.read(MAX_XMP_BYTES)
            except OSError:
                continue
            self._ratings[(item.root, item.rel)] = _Sidecar(key, parse_rating(data))
            self.generation += 1
            return
        if self._ratings.pop((item.root, item.rel), None) is not None:
            self.generation += 1

    def _forget(self, root: int, rel: str) -> None:
        known = self._folders.pop((root, rel), None)
        if known is None:
            return
        for name in known.subdirs:
            self._forget(root, f"{rel}/{name}" if rel else name)
