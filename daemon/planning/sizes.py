"""The size an image input is generated at: its aspect ratio kept within the configured box, or
the size a sidecar forces. Pure arithmetic; what was decided is said in a note for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

SIZE_STEP = 8  # Stable Diffusion's VAE works in 8-pixel cells
SIZE_MIN, SIZE_MAX = 64, 2048  # the width / height rule of a sidecar


@dataclass(frozen=True)
class SizeChoice:
    """The width and height decided for an image input, and a note saying how (or None)."""

    width: int
    height: int
    note: str | None = None


def round_size(value: float) -> int:
    """The nearest multiple of 8, kept within 64..2048."""
    rounded = int(value / SIZE_STEP + 0.5) * SIZE_STEP
    return min(SIZE_MAX, max(SIZE_MIN, rounded))


def choose_size(
    display: str,
    source: tuple[int, int],
    box: tuple[int, int],
    forced: frozenset[str] = frozenset(),
) -> SizeChoice:
    """The size to generate an image of ``source`` size at.

    Without ``width``/``height`` in ``forced`` (keys a sidecar or ``_defaults.toml`` set), the
    image is scaled, up or down, to fit within ``box`` (the configured width × height) with its
    aspect ratio kept, each side rounded to a multiple of 8. Both forced: exactly ``box``. One
    forced: that side as given, the other following the aspect ratio.
    """
    sw, sh = source
    bw, bh = box
    if {"width", "height"} <= forced:
        width, height = bw, bh
        how = "the width and height its sidecars set"
    elif "width" in forced:
        width, height = bw, round_size(bw * sh / sw)
        how = f"width {bw} from its sidecars, height following the aspect ratio"
    elif "height" in forced:
        width, height = round_size(bh * sw / sh), bh
        how = f"height {bh} from its sidecars, width following the aspect ratio"
    else:
        scale = min(bw / sw, bh / sh)
        width, height = round_size(sw * scale), round_size(sh * scale)
        how = f"fitted within {bw}x{bh}, aspect ratio kept"
    if (width, height) == (sw, sh):
        return SizeChoice(width, height)
    # Off by more than 8-pixel rounding explains: a side hit 64..2048, or the sidecar said so.
    if abs(width / height - sw / sh) > SIZE_STEP / min(width, height) * (sw / sh):
        if {"width", "height"} <= forced:
            how += ", aspect ratio not kept"
        else:
            how = how.replace("aspect ratio kept", "shape changed: sides are 64..2048")
            how = how.replace("following the aspect ratio", "limited to 64..2048")
    if not forced & {"width", "height"}:
        how += "; width and height in a sidecar force a size"
    return SizeChoice(
        width, height, f"{display}: {sw}x{sh} input generated at {width}x{height} ({how})"
    )
