"""What the detail, compare, player and mesh pages show, read from the manifest beside each
output and the image's own ``parameters`` chunk; and the regenerate action."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from daemon.config import Settings
from daemon.errors import DropforgeError
from daemon.outputs.manifest import Manifest, OutputEntry, read_manifest
from daemon.outputs.png import read_png_chunks
from daemon.outputs.ratings import read_rating
from daemon.runtime.regenerate import parse_sets, regenerate
from daemon.ui.catalog import IMAGE_SUFFIXES, MESH_SUFFIXES, Catalog
from daemon.ui.gallery import BadRequest, output_path

A1111_FIELD = re.compile(r"\s*([A-Za-z][A-Za-z0-9 ]*):\s*([^,]*)")
SHOWN = ("prompt", "negative prompt", "seed", "steps", "guidance", "strength", "sampler",
         "model", "lora", "size", "task", "time", "sha256")  # fmt: skip
MAX_COMPARED = 4


def parse_a1111(text: str) -> dict[str, str]:
    """The A1111 ``parameters`` text as a dict: prompt, negative prompt and the last line's
    ``Key: value`` fields (lower-case keys)."""
    lines = text.split("\n")
    fields: dict[str, str] = {}
    if lines and re.match(r"\s*Steps:", lines[-1]):
        for match in A1111_FIELD.finditer(lines.pop()):
            fields[match.group(1).strip().lower()] = match.group(2).strip()
    prompt: list[str] = []
    negative: list[str] = []
    into_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            into_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if into_negative else prompt).append(line)
    return {"prompt": "\n".join(prompt), "negative prompt": "\n".join(negative), **fields}


class PageData:
    """Builds each review page's data from a query string."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.roots = catalog.roots

    def _found(self, root: object, rel: object) -> tuple[Path, str, int] | None:
        try:
            index = int(str(root))
        except ValueError:
            return None
        path = output_path(self.roots, index, rel)
        if path is None or path.suffix.lower() not in IMAGE_SUFFIXES | MESH_SUFFIXES:
            return None
        return path, str(rel), index

    def describe(self, root: int, rel: str, path: Path) -> dict[str, Any]:
        """One output's metadata, in the order the detail view lists it."""
        manifest = read_manifest(path.parent)
        entry = _entry(manifest, path.name)
        chunk = parse_a1111(read_png_chunks(path).get("parameters", "")) if path.is_file() else {}
        params = dict(manifest.params) if manifest is not None else {}
        varied = dict(entry.params or {}) if entry is not None else {}
        lora = manifest.lora if manifest is not None else None
        timings = manifest.timings if manifest is not None else None
        values = {
            "prompt": entry.prompt if entry and entry.prompt is not None else chunk.get("prompt"),
            "negative prompt": chunk.get("negative prompt") or params.get("negative_prompt"),
            "seed": entry.seed if entry and entry.seed is not None else chunk.get("seed"),
            "steps": chunk.get("steps") or params.get("steps"),
            "guidance": varied.get("guidance") or chunk.get("cfg scale") or params.get("guidance"),
            "strength": varied.get("strength")
            or chunk.get("denoising strength")
            or params.get("strength"),
            "sampler": chunk.get("sampler"),
            "model": _model(manifest, chunk),
            "lora": f"{lora.alias} × {lora.scale}" if lora else chunk.get("lora"),
            "size": chunk.get("size") or _size(params),
            "task": manifest.task if manifest is not None else chunk.get("task"),
            "time": f"{timings.finished_at} ({timings.seconds:.1f} s)" if timings else None,
            "sha256": entry.sha256 if entry is not None else None,
        }
        shown = [{"name": k, "value": "" if values[k] is None else str(values[k])} for k in SHOWN]
        file = f"/files/{root}/{quote(rel)}"
        return {
            "root": root,
            "path": rel,
            "name": path.name,
            "file": file if path.exists() else None,
            "rating": read_rating(path).value,
            "gone": not path.exists(),
            "fields": shown,
            "value_of": {k: "" if v is None else str(v) for k, v in values.items()},
            "parameters": read_png_chunks(path).get("parameters", "") if path.is_file() else "",
            "mesh": path.suffix.lower() in MESH_SUFFIXES,
            "sequence": manifest is not None and manifest.sequence is not None,
            "folder_link": "/player?" + urlencode({"root": root, "folder": _folder(rel)}),
            "mesh_link": "/mesh?" + urlencode({"root": root, "path": rel}),
        }

    def detail(self, query: Any) -> dict[str, Any] | None:
        """``/detail?root=&path=``."""
        found = self._found(query.get("root"), query.get("path"))
        if found is None:
            return None
        path, rel, root = found
        return self.describe(root, rel, path)

    def compare(self, query: Any) -> dict[str, Any] | None:
        """``/compare?item=ROOT:PATH&item=…`` (2 to 4 outputs)."""
        items = []
        for value in query.getlist("item")[:MAX_COMPARED]:
            root, _, rel = str(value).partition(":")
            found = self._found(root, rel)
            if found is None:
                return None
            items.append(self.describe(found[2], found[1], found[0]))
        if not items:
            return None
        differ = [
            {"name": name, "cells": [i["value_of"][name] for i in items]}
            for name in SHOWN
            if name != "sha256" and len({i["value_of"][name] for i in items}) > 1
        ]
        return {"items": items, "differ": differ}

    def player(self, query: Any) -> dict[str, Any] | None:
        """``/player?root=&folder=``: a sequence folder's frames in order, at its rate."""
        folder = str(query.get("folder", "")).strip("/")
        base = output_path(self.roots, _int(query.get("root")), folder + "/manifest.json")
        manifest = read_manifest(base.parent) if base is not None else None
        if base is None or manifest is None:
            return None
        if manifest.sequence is not None:
            names = [name for _, name in manifest.sequence.frames]
            fps = manifest.sequence.fps or 8.0
        else:
            names = [n for n in manifest.files() if Path(n).suffix.lower() in IMAGE_SUFFIXES]
            names = [n for n in names if n != "contact.png"]
            fps = 8.0
        root = _int(query.get("root"))
        frames = [
            f"/files/{root}/{quote(folder + '/' + n)}" for n in names if (base.parent / n).is_file()
        ]
        if not frames:
            return None
        return {"folder": folder, "frames": frames, "fps": max(1, min(30, round(fps)))}

    def mesh(self, query: Any) -> dict[str, Any] | None:
        """``/mesh?root=&path=``: the page around the sandboxed viewer."""
        found = self._found(query.get("root"), query.get("path"))
        if found is None or found[0].suffix.lower() not in MESH_SUFFIXES or not found[0].is_file():
            return None
        path, rel, root = found
        viewer = "/viewer?" + urlencode({"root": root, "path": rel})
        return {"name": path.name, "viewer": viewer, "file": f"/files/{root}/{quote(rel)}"}

    def viewer_html(self, query: Any) -> str | None:
        """trimesh's three.js viewer with the mesh loaded as a scene (so it has a camera)."""
        found = self._found(query.get("root"), query.get("path"))
        if found is None or found[0].suffix.lower() not in MESH_SUFFIXES or not found[0].is_file():
            return None
        import trimesh
        from trimesh.viewer.notebook import scene_to_html

        try:
            scene = trimesh.load(found[0], force="scene")
        except (ValueError, OSError) as exc:
            raise DropforgeError(f"{found[1]}: cannot read the mesh: {exc}") from None
        html: str = scene_to_html(scene)
        return html

    def regenerate(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/regenerate {"root", "path", "seed"?, "set"?: ["KEY=VALUE", …]}``."""
        path = output_path(self.roots, body.get("root"), body.get("path"))
        if path is None:
            raise LookupError(f"{body.get('path')}: not an output")
        seed = body.get("seed")
        if seed is not None and (type(seed) is not int or not 0 <= seed <= 2**32 - 1):
            raise BadRequest('"seed" must be an integer in 0..4294967295')
        sets = body.get("set") or []
        if not isinstance(sets, list) or any(not isinstance(s, str) for s in sets):
            raise BadRequest('"set" must be a list of "KEY=VALUE" strings')
        made = regenerate(self.settings, path, seed=seed, sets=parse_sets(sets))
        inbox = next(i for i in self.settings.inboxes if made.input.is_relative_to(i.path))
        return {"input": made.input.relative_to(inbox.path).as_posix(), "seed": made.seed}


def _entry(manifest: Manifest | None, name: str) -> OutputEntry | None:
    if manifest is None:
        return None
    return next((e for e in manifest.outputs or () if e.file == name), None)


def _model(manifest: Manifest | None, chunk: dict[str, str]) -> str | None:
    if manifest is not None and manifest.model is not None:
        return manifest.model.alias
    return chunk.get("model")


def _size(params: dict[str, Any]) -> str | None:
    if "width" in params and "height" in params:
        return f"{params['width']}x{params['height']}"
    return None


def _folder(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return -1
