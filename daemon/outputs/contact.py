"""Contact sheets: a labelled grid of a batch's images."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

_BACKGROUND = (32, 32, 32)


_INK = (230, 230, 230)


_ELLIPSIS = "…"


_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


CONTACT_THUMB = 256  # the largest side of an image on a contact sheet


def contact_thumbnail(image: Image.Image, thumb: int = CONTACT_THUMB) -> Image.Image:
    """A copy of ``image`` shrunk as ``contact_sheet`` would shrink it (never enlarged).

    The worker keeps these of the images it writes, so the sheet need not read them back.
    """
    small = image.convert("RGB")  # a copy, even when the image is RGB already
    small.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
    return small


def contact_sheet(
    items: Sequence[tuple[Image.Image, str]],
    *,
    thumb: int = CONTACT_THUMB,
    columns: int | None = None,
) -> Image.Image:
    """Lay images out in a near-square grid with a label under each (e.g. ``seed 100``).

    Images are shrunk to fit a ``thumb`` square with their aspect kept, never enlarged: a
    batch smaller than ``thumb`` gets cells of its own size. A label may have several lines
    (``scene 2`` and ``seed 7``); every row leaves room for the most lines any label has.
    Cells widen to fit short lines; longer lines are shortened with an ellipsis.
    """
    if not items:
        raise ValueError("a contact sheet needs at least one image")
    if thumb < 1 or (columns is not None and columns < 1):
        raise ValueError("thumb and columns must be positive")
    box = min(thumb, max(max(image.size) for image, _ in items))
    font_size = max(10, box // 16)
    pad = max(4, box // 32)
    line = math.ceil(font_size * 1.25)
    font = _default_font(font_size)
    labels = [[" ".join(part.split()) for part in label.split("\n")] for _, label in items]
    widest = max(_text_width(font, text) for lines in labels for text in lines)
    # Room for "seed 4294967295" even under 64-pixel thumbnails, but no wider than that.
    cell_w = max(box, min(widest, max(box, 12 * font_size))) + 2 * pad
    cell_h = box + line * max(len(lines) for lines in labels) + 3 * pad
    cols = columns or math.ceil(math.sqrt(len(items)))
    rows = math.ceil(len(items) / cols)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, ((image, _), lines) in enumerate(zip(items, labels, strict=True)):
        left = (index % cols) * cell_w
        top = (index // cols) * cell_h
        small = image.convert("RGBA")
        small.thumbnail((box, box), Image.Resampling.LANCZOS)
        x = left + (cell_w - small.width) // 2
        y = top + pad + (box - small.height) // 2
        sheet.paste(small, (x, y), small)
        for n, label in enumerate(lines):
            text = _fit_label(font, label, cell_w - 2 * pad)
            text_x = left + (cell_w - _text_width(font, text)) // 2
            draw.text((text_x, top + 2 * pad + box + n * line), text, fill=_INK, font=font)
    return sheet


def _text_width(font: _Font, text: str) -> int:
    left, _top, right, _bottom = font.getbbox(text)
    return math.ceil(right - left)


def _default_font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def _fit_label(font: _Font, label: str, width: int) -> str:
    if _text_width(font, label) <= width:
        return label
    while label and _text_width(font, label + _ELLIPSIS) > width:
        label = label[:-1]
    return label + _ELLIPSIS
