"""A mesh's vertex colours baked into a texture: UV-unwrapped with xatlas, each triangle's colours
interpolated into its texels, the gaps between charts filled from their edges so that filtering
never bleeds the background into a surface.

numpy, xatlas, Pillow and trimesh are imported on first use (the CLI starts without them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# Texels per side by face count: more faces, finer charts, a larger texture.
_SIZES = ((20_000, 512), (200_000, 1024))
_LARGEST = 2048
_PADDING = 2  # texels xatlas leaves between charts
_DILATE = 8  # rounds of filling empty texels from their filled neighbours


@dataclass(frozen=True)
class Baked:
    """An unwrapped mesh: vertices split along UV seams, faces, UVs and the colour texture."""

    vertices: np.ndarray  # (V', 3) float
    faces: np.ndarray  # (F, 3) int
    uv: np.ndarray  # (V', 2) float in 0..1, v up (glTF and OBJ convention as trimesh writes)
    texture: Image.Image  # RGB


def texture_size(faces: int) -> int:
    """The texture's side for a mesh of ``faces`` triangles."""
    for limit, size in _SIZES:
        if faces <= limit:
            return size
    return _LARGEST


def bake(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> Baked:
    """Unwrap ``vertices``/``faces`` and bake the per-vertex ``colors`` (uint8 RGB) into a
    texture, interpolating across each triangle as a renderer would."""
    import numpy as np
    import xatlas
    from PIL import Image

    size = texture_size(len(faces))
    atlas = xatlas.Atlas()
    atlas.add_mesh(
        np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32)
    )
    charts = xatlas.ChartOptions()
    charts.max_iterations = 0  # one growing pass: half the time, a few more charts
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = _PADDING
    pack.bilinear = True
    atlas.generate(chart_options=charts, pack_options=pack)
    vmapping, indices, uv = atlas[0]
    rgb = _rasterize(uv, indices, colors[vmapping].astype(np.float32), size)
    return Baked(vertices[vmapping], indices.astype(np.int64), uv, Image.fromarray(rgb, "RGB"))


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
