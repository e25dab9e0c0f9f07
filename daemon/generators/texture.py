"""A mesh's vertex colours baked into a texture: UV-unwrapped with xatlas, each triangle's colours
interpolated into its texels, the gaps between charts filled from their edges so that filtering
never bleeds the background into a surface.

numpy, xatlas, Pillow and trimesh are imported on first use (the CLI starts without them).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from daemon.errors import Interrupted

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# Texels per side by face count: more faces, finer charts, a larger texture.
_SIZES = ((20_000, 512), (200_000, 1024))
_LARGEST = 2048
_PADDING = 2  # texels xatlas leaves between charts
_DILATE = 8  # rounds of filling empty texels from their filled neighbours
XATLAS_TIMEOUT_S = 300.0  # longer, and the mesh's triangles are packed one by one instead


@dataclass(frozen=True)
class Baked:
    """An unwrapped mesh: vertices split along UV seams, faces, UVs and the colour texture."""

    vertices: np.ndarray  # (V', 3) float
    faces: np.ndarray  # (F, 3) int
    uv: np.ndarray  # (V', 2) float in 0..1, v up (glTF and OBJ convention as trimesh writes)
    texture: Image.Image  # RGB
    unwrapped_by: str  # "xatlas", or "triangles" when xatlas could not unwrap it


def texture_size(faces: int) -> int:
    """The texture's side for a mesh of ``faces`` triangles."""
    for limit, size in _SIZES:
        if faces <= limit:
            return size
    return _LARGEST


def _never() -> bool:
    return False


def _ignore(message: str) -> None:
    return None


def bake(
    vertices: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray,
    *,
    should_stop: Callable[[], bool] = _never,
    on_warning: Callable[[str], None] = _ignore,
    timeout: float = XATLAS_TIMEOUT_S,
) -> Baked:
    """Unwrap ``vertices``/``faces`` and bake the per-vertex ``colors`` (uint8 RGB) into a
    texture, interpolating across each triangle as a renderer would.

    xatlas runs in a child process: it crashes on some closed surfaces (jpcy/xatlas#146) and
    can take very long on large meshes, and neither may take the daemon down or hold a stop.
    When it fails, or takes longer than ``timeout``, each triangle is given its own patch of
    the texture instead (``grid_unwrap``), and ``on_warning`` says so.
    """
    import numpy as np
    from PIL import Image

    size = texture_size(len(faces))
    found = _unwrap_isolated(vertices, faces, size, should_stop, timeout)
    by = "xatlas"
    if isinstance(found, str):
        on_warning(f"texture: xatlas {found}; each triangle was given its own patch instead")
        size = grid_size(len(faces), size)
        found, by = grid_unwrap(faces, size), "triangles"
    vmapping, indices, uv = found
    rgb = _rasterize(uv, indices, colors[vmapping].astype(np.float32), size)
    return Baked(vertices[vmapping], indices.astype(np.int64), uv, Image.fromarray(rgb, "RGB"), by)


Unwrapped = tuple["np.ndarray", "np.ndarray", "np.ndarray"]  # vmapping, faces, uv


def xatlas_unwrap(vertices: np.ndarray, faces: np.ndarray, size: int) -> Unwrapped:
    """xatlas's charts, packed for a ``size``² texture (in this process: see ``bake``)."""
    import numpy as np
    import xatlas

    atlas = xatlas.Atlas()
    positions = np.ascontiguousarray(vertices, np.float32)
    atlas.add_mesh(positions, np.ascontiguousarray(faces, np.uint32))
    charts = xatlas.ChartOptions()
    charts.max_iterations = 0  # one growing pass: half the time, a few more charts
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = _PADDING
    pack.bilinear = True
    atlas.generate(chart_options=charts, pack_options=pack)
    vmapping, indices, uv = atlas[0]
    return vmapping, indices, uv


def _unwrap_child(conn: Connection, vertices: np.ndarray, faces: np.ndarray, size: int) -> None:
    conn.send(xatlas_unwrap(vertices, faces, size))
    conn.close()


def _unwrap_isolated(
    vertices: np.ndarray,
    faces: np.ndarray,
    size: int,
    should_stop: Callable[[], bool],
    timeout: float,
) -> Unwrapped | str:
    """``xatlas_unwrap`` in a child process; what went wrong, as words, when it failed."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_unwrap_child, args=(sender, vertices, faces, size), daemon=True)
    child.start()
    sender.close()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if receiver.poll(0.2):
                try:
                    found: Unwrapped = receiver.recv()
                    return found
                except EOFError:  # it ended without an answer
                    child.join()
                    return f"crashed on this mesh (exit code {child.exitcode})"
            if should_stop():
                raise Interrupted("stop requested")
            if time.monotonic() > deadline:
                return f"took longer than {timeout:g} s on this mesh"
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()


def grid_size(faces: int, size: int) -> int:
    """A texture side giving each cell of ``grid_unwrap`` about 8 texels (at most 2048)."""
    side = math.ceil(math.sqrt((faces + 1) // 2))
    while size < _LARGEST and size < side * 8:
        size *= 2
    return size


def grid_unwrap(faces: np.ndarray, size: int) -> Unwrapped:
    """Each triangle its own patch: two triangles per square cell of a grid over the texture,
    a texel of margin around each. Always works; seams everywhere (colours are per vertex, so
    nothing is lost)."""
    import numpy as np

    count = len(faces)
    side = int(np.ceil(np.sqrt((count + 1) // 2)))
    cell = 1.0 / side
    margin = min(1.5 / size, cell / 6)
    index = np.arange(count)
    slot = index // 2
    u0 = (slot % side) * cell
    v0 = (slot // side) * cell
    near, far = margin, cell - margin
    # The cell's lower-left half and its upper-right half, a margin apart along the diagonal.
    lower = np.stack([[near, near], [far - margin, near], [near, far - margin]])
    upper = np.stack([[far, far], [near + margin, far], [far, near + margin]])
    corners = np.where((index % 2 == 0)[:, None, None], lower[None], upper[None])
    uv = (corners + np.stack([u0, v0], axis=1)[:, None, :]).reshape(-1, 2)
    corners_of = np.arange(count * 3).reshape(count, 3)  # every triangle its own vertices
    return np.asarray(faces).reshape(-1), corners_of, uv


def _rasterize(uv: np.ndarray, faces: np.ndarray, colors: np.ndarray, size: int) -> np.ndarray:
    """An RGB (size, size, 3) uint8 image of every triangle, colours barycentric-interpolated
    at texel centres; image row 0 is v = 1 (textures are stored top row first)."""
    import numpy as np

    px = uv[:, 0] * size - 0.5
    py = (1.0 - uv[:, 1]) * size - 0.5
    tri_x, tri_y = px[faces], py[faces]  # (F, 3)
    x0 = np.clip(np.floor(tri_x.min(1)), 0, size - 1).astype(np.int64)
    x1 = np.clip(np.ceil(tri_x.max(1)), 0, size - 1).astype(np.int64)
    y0 = np.clip(np.floor(tri_y.min(1)), 0, size - 1).astype(np.int64)
    y1 = np.clip(np.ceil(tri_y.max(1)), 0, size - 1).astype(np.int64)
    widths, heights = x1 - x0 + 1, y1 - y0 + 1
    counts = widths * heights
    face = np.repeat(np.arange(len(faces)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    tx = x0[face] + offset % widths[face]
    ty = y0[face] + offset // widths[face]
    weights = _barycentric(tri_x[face], tri_y[face], tx.astype(np.float64), ty.astype(np.float64))
    inside = (weights >= -1e-4).all(axis=1)
    face, tx, ty, weights = face[inside], tx[inside], ty[inside], weights[inside]
    color = np.einsum("nk,nkc->nc", weights.clip(0, 1), colors[faces[face]])
    image = np.zeros((size, size, 3), np.float32)
    filled = np.zeros((size, size), bool)
    image[ty, tx] = color
    filled[ty, tx] = True
    _dilate(image, filled)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _barycentric(xs: np.ndarray, ys: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Barycentric weights (N, 3) of points (px, py) in triangles (xs, ys: (N, 3))."""
    import numpy as np

    (ax, bx, cx), (ay, by, cy) = xs.T, ys.T
    det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    safe = np.where(np.abs(det) < 1e-12, 1.0, det)  # a degenerate triangle covers nothing
    w0 = ((by - cy) * (px - cx) + (cx - bx) * (py - cy)) / safe
    w1 = ((cy - ay) * (px - cx) + (ax - cx) * (py - cy)) / safe
    weights = np.stack([w0, w1, 1.0 - w0 - w1], axis=1)
    weights[np.abs(det) < 1e-12] = -1.0
    return weights


def _dilate(image: np.ndarray, filled: np.ndarray) -> None:
    """Fill empty texels next to filled ones with their filled neighbours' mean, a few rounds:
    bilinear filtering and mipmaps at a chart's edge then read the chart's own colours."""
    import numpy as np

    for _ in range(_DILATE):
        total = np.zeros_like(image)
        count = np.zeros(filled.shape, np.float32)
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            shifted = np.roll(np.roll(filled, dy, 0), dx, 1)
            total += np.roll(np.roll(image, dy, 0), dx, 1) * shifted[..., None]
            count += shifted
        grow = ~filled & (count > 0)
        if not grow.any():
            return
        image[grow] = total[grow] / count[grow][:, None]
        filled |= grow


def textured_mesh(baked: Baked, name: str) -> Any:
    """A trimesh.Trimesh carrying ``baked``'s UVs and a PBR material whose base colour is the
    texture (what glTF calls baseColorTexture; OBJ gets it as map_Kd)."""
    import importlib

    trimesh: Any = importlib.import_module("trimesh")  # partly typed; these calls are not
    material = trimesh.visual.material.PBRMaterial(
        name=name,
        baseColorTexture=baked.texture,
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    visual = trimesh.visual.TextureVisuals(uv=baked.uv, material=material)
    return trimesh.Trimesh(baked.vertices, baked.faces, visual=visual, process=False)
