"""The gallery: pages of the outputs (``/gallery``), their thumbnails (``/thumbs/``) and the
rating actions (``/api/rate``, ``/api/restore``). Ratings live in XMP sidecars beside the
images (``outputs.ratings``), read again on every page load through the ``Catalog``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from daemon.errors import DropforgeError
from daemon.outputs.ratings import Rating, write_rating
from daemon.outputs.thumbs import THUMB_DIR, thumbnail_for
from daemon.ui.catalog import IMAGE_SUFFIXES, MESH_SUFFIXES, Catalog, Filter, Item, Order

PER_PAGE = 200
MAX_PER_PAGE = 400


class BadRequest(DropforgeError):
    """A request the gallery does not understand."""


@dataclass(frozen=True)
class Query:
    """What a gallery page shows: a folder of one output root, filtered, sorted, paged."""

    root: int = 0
    folder: str = ""
    filter: Filter = Filter.all
    order: Order = Order.newest
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def parse(cls, params: Any, roots: int) -> Query:
        """Read a query string; what is out of range falls back to the default."""

        def number(key: str, default: int, low: int, high: int) -> int:
            try:
                value = int(params.get(key, default))
            except ValueError:
                return default
            return value if low <= value <= high else default

        folder = str(params.get("folder", "")).strip("/")
        if ".." in folder.split("/") or "\\" in folder or "\0" in folder:
            folder = ""
        kind = params.get("filter", "all")
        order = params.get("order", "newest")
        return cls(
            root=number("root", 0, 0, max(0, roots - 1)),
            folder=folder,
            filter=Filter(kind) if kind in Filter.__members__ else Filter.all,
            order=Order(order) if order in Order.__members__ else Order.newest,
            page=number("page", 1, 1, 1_000_000),
            per_page=number("per_page", PER_PAGE, 1, MAX_PER_PAGE),
        )

    def link(self, **changes: Any) -> str:
        """The address of this page with some of its settings changed."""
        values = {
            "root": self.root,
            "folder": self.folder,
            "filter": self.filter.value,
            "order": self.order.value,
            "page": self.page,
        }
        values.update({k: (v.value if hasattr(v, "value") else v) for k, v in changes.items()})
        if self.per_page != PER_PAGE:
            values["per_page"] = self.per_page
        return "/gallery?" + urlencode(values)


def file_url(item: Item) -> str:
    """The ``/files/`` address of an output."""
    return f"/files/{item.root}/{quote(item.rel)}"


def tile(catalog: Catalog, item: Item) -> dict[str, Any]:
    """One tile's data: names, seed, rating and addresses."""
    rating = catalog.rating(item)
    key = f"{item.root}:{item.rel}"
    return {
        "key": key,
        "root": item.root,
        "path": item.rel,
        "name": item.rel.rsplit("/", 1)[-1],
        "folder": item.folder,
        "seed": item.seed,
        "rating": rating.value,
        "gone": item.gone,
        "mesh": item.mesh,
        "file": None if item.gone else file_url(item),
        "thumb": None if item.gone or item.mesh else f"/thumbs/{item.root}/{quote(item.rel)}",
        "detail": "/detail?" + urlencode({"root": item.root, "path": item.rel}),
    }


def page_data(catalog: Catalog, query: Query, names: list[str]) -> dict[str, Any]:
    """Everything a gallery page shows, JSON-ready."""
    listing = _listing(catalog, query)
    shown = listing.shown
    prefix = query.folder + "/" if query.folder else ""
    pages = max(1, -(-len(shown) // query.per_page))
    page = min(query.page, pages)
    start = (page - 1) * query.per_page
    return {
        "roots": [{"index": n, "name": name} for n, name in enumerate(names)],
        "root": query.root,
        "folder": query.folder,
        "crumbs": _crumbs(query),
        "subfolders": [
            {"name": name, "link": query.link(folder=prefix + name, page=1)}
            for name in listing.subfolders
        ],
        "filter": query.filter.value,
        "order": query.order.value,
        "filters": [
            {"name": k.value, "count": listing.counts[k], "link": query.link(filter=k, page=1)}
            for k in Filter
        ],
        "orders": [{"name": o.value, "link": query.link(order=o, page=1)} for o in Order],
        "page": page,
        "pages": pages,
        "total": len(shown),
        "prev": query.link(page=page - 1) if page > 1 else None,
        "next": query.link(page=page + 1) if page < pages else None,
        "tiles": [tile(catalog, i) for i in shown[start : start + query.per_page]],
    }


@dataclass(frozen=True)
class _Listing:
    shown: list[Item]
    counts: dict[Filter, int]
    subfolders: list[str]


_MEMO: dict[tuple[int, int, int, str, Filter, Order], _Listing] = {}
_MEMO_SIZE = 32


def _listing(catalog: Catalog, query: Query) -> _Listing:
    """The folder's items, filtered and sorted; kept while the catalog's generation holds."""
    everything = catalog.refresh()
    key = (id(catalog), catalog.generation, query.root, query.folder, query.filter, query.order)
    found = _MEMO.get(key)
    if found is not None:
        return found
    prefix = query.folder + "/" if query.folder else ""
    below = [
        i
        for i in everything
        if i.root == query.root and (not prefix or (i.folder + "/").startswith(prefix))
    ]
    rated = [(i, catalog.rating(i)) for i in below]
    wanted = _WANTED[query.filter]
    shown = [i for i, rating in rated if rating in wanted]
    if query.order is Order.name:
        shown.sort(key=lambda i: i.rel)
    else:
        shown.sort(key=lambda i: (-i.mtime, i.rel))
    by_rating = {r: 0 for r in Rating}
    for _, rating in rated:
        by_rating[rating] += 1
    counts = {k: sum(by_rating[r] for r in _WANTED[k]) for k in Filter}
    subfolders = sorted(
        {
            i.folder[len(prefix) :].split("/", 1)[0]
            for i in below
            if i.folder != query.folder and i.folder.startswith(prefix)
        }
    )
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.clear()
    found = _MEMO[key] = _Listing(shown, counts, subfolders)
    return found


_WANTED = {
    Filter.all: frozenset({Rating.favorite, Rating.none}),  # discards have their own filter
    Filter.favorites: frozenset({Rating.favorite}),
    Filter.unselected: frozenset({Rating.none}),
    Filter.discarded: frozenset({Rating.discard}),
}


def _crumbs(query: Query) -> list[dict[str, str]]:
    crumbs = [{"name": "all folders", "link": query.link(folder="", page=1)}]
    parts = query.folder.split("/") if query.folder else []
    for n in range(len(parts)):
        crumbs.append({"name": parts[n], "link": query.link(folder="/".join(parts[: n + 1]))})
    return crumbs


def output_path(roots: tuple[Path, ...], root: object, rel: object) -> Path | None:
    """An output below one of the roots, after resolving links; None for anything else
    (another type, ``..``, a link leading out)."""
    if type(root) is not int or not isinstance(rel, str) or not 0 <= root < len(roots):
        return None
    if "\0" in rel or "\\" in rel or ".." in rel.split("/") or rel.startswith("/"):
        return None
    base = roots[root]
    real_root = os.path.realpath(base)
    real = os.path.realpath(base / rel)
    if not real.startswith(real_root + os.sep):
        return None
    return Path(real)


def thumbnail(state_dir: Path, roots: tuple[Path, ...], root: int, rel: str) -> Path | None:
    """The cached thumbnail of an image output (made now if missing), or None."""
    found = output_path(roots, root, rel)
    if found is None or found.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return thumbnail_for(state_dir / THUMB_DIR, found)


RATINGS = {"favorite": Rating.favorite, "discard": Rating.discard, "clear": Rating.none}


def rate(roots: tuple[Path, ...], body: dict[str, Any]) -> dict[str, Any]:
    """``POST /api/rate {"items": [{"root", "path"}], "rating": "favorite"|"discard"|"clear"}``."""
    value = body.get("rating")
    rating = RATINGS.get(value) if isinstance(value, str) else None
    if rating is None:
        raise BadRequest('"rating" must be "favorite", "discard" or "clear"')
    items = body.get("items")
    if not isinstance(items, list) or not items or len(items) > 1000:
        raise BadRequest('"items" must be a list of 1..1000 {"root", "path"} objects')
    rated = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest('"items" must be a list of 1..1000 {"root", "path"} objects')
        path = output_path(roots, item.get("root"), item.get("path"))
        if path is None or path.suffix.lower() not in IMAGE_SUFFIXES | MESH_SUFFIXES:
            raise LookupError(f"{item.get('path')}: not an output")
        if not path.exists() and rating is not Rating.discard:
            raise LookupError(f"{item.get('path')}: deleted: restore it first")
        write_rating(path, rating)
        rated.append({"root": item["root"], "path": item["path"], "rating": rating.value})
    return {"rated": rated}
