"""Marching-cubes case tables in the layout of diffusers' Shap-E ``MeshDecoder``.

Pretrained Shap-E checkpoints carry the tables as buffers (``mesh_decoder.cases`` and
``mesh_decoder.masks``); a randomly initialised renderer has zeros there and never yields a
triangle. The tiny model fills them from here. They are computed, not copied: every face of the
cube is cut into segments between its sign changes, the segments are chained into closed
polygons on the cube's surface, and each polygon is fanned into triangles facing outward.

Conventions of the renderer: corner ``c = x + 2y + 4z`` is bit ``c`` of a case, set where the
field is positive (inside). Edges 0-3 run along x at (y, z) = (e & 1, e >> 1), edges 4-7 along
y at (x, z), edges 8-11 along z at (x, y). Nothing here imports torch.
"""

from __future__ import annotations

import itertools

CASES = 256
MAX_TRIANGLES = 5  # the renderer's table holds five triangles per case

Corner = tuple[int, int, int]
Triangle = tuple[int, int, int]


def _corner(index: int) -> Corner:
    return (index & 1, (index >> 1) & 1, (index >> 2) & 1)


def _corner_index(corner: Corner) -> int:
    return corner[0] + 2 * corner[1] + 4 * corner[2]


def _edges() -> list[tuple[int, int]]:
    """Return the two corner indices of each of the 12 edges, in the renderer's order."""
    edges: list[tuple[int, int]] = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for k in range(4):
            start = [0, 0, 0]
            start[others[0]], start[others[1]] = k & 1, k >> 1
            end = list(start)
            end[axis] = 1
            edges.append(
                (
                    _corner_index((start[0], start[1], start[2])),
                    _corner_index((end[0], end[1], end[2])),
                )
            )
    return edges


EDGES = _edges()
_EDGE_OF = {frozenset(pair): index for index, pair in enumerate(EDGES)}


def _faces() -> list[list[int]]:
    """Return the six faces of the cube, each as its four corners in cyclic order."""
    faces: list[list[int]] = []
    for axis, side in itertools.product(range(3), (0, 1)):
        u, v = (a for a in range(3) if a != axis)
        ring: list[int] = []
        for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1)):
            corner = [0, 0, 0]
            corner[axis], corner[u], corner[v] = side, du, dv
            ring.append(_corner_index((corner[0], corner[1], corner[2])))
        faces.append(ring)
    return faces


_FACES = _faces()
_FACE_EDGES = [
    frozenset(_EDGE_OF[frozenset((ring[i], ring[(i + 1) % 4]))] for i in range(4))
    for ring in _FACES
]


def _segments(case: int) -> list[tuple[int, int]]:
    """Return the surface's segments on the cube's faces, as pairs of cut edges."""
    segments: list[tuple[int, int]] = []
    for ring in _FACES:
        inside = [bool(case >> corner & 1) for corner in ring]
        sides = [_EDGE_OF[frozenset((ring[i], ring[(i + 1) % 4]))] for i in range(4)]
        cuts = [i for i in range(4) if inside[i] != inside[(i + 1) % 4]]
        if len(cuts) == 2:
            segments.append((sides[cuts[0]], sides[cuts[1]]))
        elif len(cuts) == 4:
            # Two diagonal inside corners: cut each off on its own, so that neighbouring cubes,
            # which see the same face, resolve it the same way and the surface stays closed.
            for i in range(4):
                if inside[i]:
                    segments.append((sides[(i - 1) % 4], sides[i]))
    return segments


def _polygons(case: int) -> list[list[int]]:
    """Chain the segments of ``case`` into closed loops of cut edges."""
    neighbours: dict[int, list[int]] = {}
    for a, b in _segments(case):
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    loops: list[list[int]] = []
    unvisited = set(neighbours)
    while unvisited:
        start = min(unvisited)
        loop, previous, current = [start], -1, start
        while True:
            following = next(n for n in neighbours[current] if n != previous)
            if following == start:
                break
            loop.append(following)
            previous, current = current, following
        unvisited -= set(loop)
        loops.append(loop)
    return loops


def _midpoint(edge: int) -> tuple[float, float, float]:
    a, b = (_corner(c) for c in EDGES[edge])
    return ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2)


def _faces_outward(triangle: Triangle, case: int) -> bool:
    """Tell whether the triangle's right-hand normal points away from the inside corners."""
    p, q, r = (_midpoint(e) for e in triangle)
    u = (q[0] - p[0], q[1] - p[1], q[2] - p[2])
    w = (r[0] - p[0], r[1] - p[1], r[2] - p[2])
    normal = (u[1] * w[2] - u[2] * w[1], u[2] * w[0] - u[0] * w[2], u[0] * w[1] - u[1] * w[0])
    inside = [c for e in triangle for c in EDGES[e] if case >> c & 1]
    centre = [sum(_corner(c)[axis] for c in inside) / len(inside) for axis in range(3)]
    away = [(p[axis] + q[axis] + r[axis]) / 3 - centre[axis] for axis in range(3)]
    return sum(n * a for n, a in zip(normal, away, strict=True)) > 0


def _share_a_face(a: int, b: int) -> bool:
    return any(a in edges and b in edges for edges in _FACE_EDGES)


def _fan_start(loop: list[int]) -> list[int]:
    """Rotate ``loop`` so that no diagonal of its fan lies in a face of the cube.

    Such a diagonal would cross the face's outside corner, and the neighbouring cube may lay a
    triangle on the same spot, so the surface would no longer be a manifold. Every loop of
    this face rule has such a start (checked by the tests).
    """
    n = len(loop)
    for start in range(n):
        if not any(_share_a_face(loop[start], loop[(start + i) % n]) for i in range(2, n - 1)):
            return loop[start:] + loop[:start]
    raise ValueError(f"no clean fan for the loop {loop}")


def triangles(case: int) -> list[Triangle]:
    """Return the triangles (as edge indices) that ``case`` puts into a cube, facing outward."""
    result: list[Triangle] = []
    for polygon in _polygons(case):
        loop = _fan_start(polygon)
        for i in range(1, len(loop) - 1):
            triangle = (loop[0], loop[i], loop[i + 1])
            if not _faces_outward(triangle, case):
                triangle = (triangle[0], triangle[2], triangle[1])
            result.append(triangle)
    return result


def case_tables() -> tuple[list[list[Triangle]], list[list[bool]]]:
    """Return ``cases`` (256 x 5 triangles of edge indices) and ``masks`` (256 x 5 in use).

    Unused slots hold ``(0, 0, 0)`` with mask False, as in pretrained checkpoints.
    """
    cases: list[list[Triangle]] = []
    masks: list[list[bool]] = []
    for case in range(CASES):
        found = triangles(case)
        if len(found) > MAX_TRIANGLES:  # cannot happen with this face rule; guards the layout
            raise ValueError(f"case {case} needs {len(found)} triangles")
        padding = MAX_TRIANGLES - len(found)
        cases.append(found + [(0, 0, 0)] * padding)
        masks.append([True] * len(found) + [False] * padding)
    return cases, masks
