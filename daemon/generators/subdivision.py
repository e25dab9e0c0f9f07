"""Tween frame times: recursive midpoint subdivision, as plain arithmetic (no torch).

At depth ``d`` the frames sit at ``t = k / 2**d``. A frame first appears at the level of the
smallest power of two that expresses it (0.5 at level 1, 0.25 and 0.75 at level 2, ...), and
is made from its two neighbours one step of that level away, which belong to lower levels.
All frames of one level can therefore be made together, once the levels below exist.
"""

from __future__ import annotations

from collections.abc import Iterable


def frame_seed(seed: int, t: float) -> int:
    """Return the seed of the tween frame at ``t``, so that each frame is reproducible alone."""
    return seed + round(t * 1000)


def tween_times(depth: int) -> tuple[float, ...]:
    """Return every frame time of a tween of ``depth`` levels, endpoints included."""
    count = 1 << depth
    return tuple(k / count for k in range(count + 1))


def snap(t: float, depth: int) -> float:
    """Return ``t`` exactly as ``k / 2**depth``; raise ValueError if it is no frame of ``depth``."""
    count = 1 << depth
    k = round(t * count)
    if not 0 <= k <= count or abs(t * count - k) > 1e-6:
        raise ValueError(f"{t!r} is not a frame time of a depth-{depth} tween")
    return k / count


def _on_grid(t: float, depth: int) -> bool:
    try:
        snap(t, depth)
    except ValueError:
        return False
    return True


def level(t: float, depth: int) -> int:
    """Return the subdivision level at which frame ``t`` first appears (0 for the endpoints)."""
    k = round(snap(t, depth) * (1 << depth))
    if k in (0, 1 << depth):
        return 0
    trailing_zeros = (k & -k).bit_length() - 1
    return depth - trailing_zeros


def neighbours(t: float, depth: int) -> tuple[float, float]:
    """Return the two frames that frame ``t`` (not an endpoint) is made from."""
    step = 0.5 ** level(t, depth)
    if step == 1:
        raise ValueError(f"{t!r} is an endpoint; it has no neighbours")
    return t - step, t + step


def plan_levels(
    depth: int, needed: Iterable[float], existing: Iterable[float] = ()
) -> list[tuple[float, ...]]:
    """Return the frames to make, grouped by level in making order, each group ascending.

    ``needed`` frames are made, and with them every neighbour they need that is neither in
    ``existing`` nor an endpoint, recursively. Levels with nothing to make are left out.
    Existing frames off this depth's grid (left from another depth) are of no use and ignored;
    a needed time that is no frame of ``depth`` raises ValueError.
    """
    available = {snap(t, depth) for t in existing if _on_grid(t, depth)}
    to_make: set[float] = set()
    pending = [snap(t, depth) for t in needed]
    while pending:
        t = pending.pop()
        if t in to_make or level(t, depth) == 0:
            continue
        to_make.add(t)
        pending.extend(n for n in neighbours(t, depth) if n not in available)
    by_level: dict[int, list[float]] = {}
    for t in to_make:
        by_level.setdefault(level(t, depth), []).append(t)
    return [tuple(sorted(by_level[lvl])) for lvl in sorted(by_level)]
