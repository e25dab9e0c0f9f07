"""Reading input images and masks safely: bounded size, clear messages, first frame only.

``probe_image`` is what planning (and so ``dropforge check``) runs on every image a job will
read: it decodes the file once, a JPEG at a reduced scale, so a corrupt, truncated or oversized
file is refused before a job is queued, with the message the job itself would give.
``load_input_image`` and ``load_mask`` decode for generation, shrunk cheaply to the size the plan
decided (``Image.draft`` for JPEGs, ``reduce`` before resampling for the rest).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from daemon.errors import InputError

# EXIF orientations that turn the picture a quarter: its width and height swap when shown.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class LoadedImage:
    """A decoded RGB (or L for masks) image and notes for the manifest."""

    image: Image.Image
    warnings: tuple[str, ...] = ()
    source_size: tuple[int, int] | None = None  # as shown, before any resizing


@dataclass(frozen=True)
class ImageInfo:
    """What probing an image found: its size as shown (EXIF orientation applied)."""

    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width, self.height


@contextmanager
def _opened(path: Path, display: str, max_pixels: int) -> Iterator[tuple[Image.Image, list[str]]]:
    """Open an image, refusing bombs, oversized and unreadable files with one message each.

    Decoding inside the block (``load``) is covered by the same messages.
    """
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # Pillow's decompression-bomb guard stays on, its warning made an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise InputError(
                        display,
                        f"image is {width}x{height} ({width * height} pixels), "
                        f"the limit is max_pixels = {max_pixels}",
                        key="max_pixels",
                        rule=f"at most {max_pixels} pixels",
                        value=width * height,
                    )
                if getattr(image, "n_frames", 1) > 1:
                    notes.append(f"{display}: animated image, only the first frame was used")
                    image.seek(0)
                yield image, notes
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            display,
            f"refused as a decompression bomb ({exc})",
            key="max_pixels",
            rule="decompression-bomb guard",
            value=None,
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            display, "not a readable image (unknown or corrupt format)", rule="readable image"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(display, f"not a readable image ({exc})", rule="readable image") from None


def _shown_size(image: Image.Image) -> tuple[int, int]:
    """The size once EXIF orientation is applied."""
    width, height = image.size
    if image.getexif().get(_ORIENTATION) in _QUARTER_TURNS:
        return height, width
    return width, height


def _draft(image: Image.Image, size: tuple[int, int] | None) -> None:
    """Let a JPEG decode at the smallest scale still at least ``size`` (shown orientation)."""
    if size is None or image.format != "JPEG":
        return
    shown = _shown_size(image)
    raw = size if shown == image.size else (size[1], size[0])
    image.draft("RGB", raw)


def _decode(
    path: Path, display: str, max_pixels: int, size: tuple[int, int] | None
) -> tuple[Image.Image, list[str]]:
    """Decode the first frame, EXIF orientation applied; a JPEG at a scale near ``size``."""
    with _opened(path, display, max_pixels) as (image, notes):
        _draft(image, size)
        image.load()
        shown = ImageOps.exif_transpose(image)
        return (shown if shown is not image else image.copy()), notes


def probe_image(path: Path, display: str, max_pixels: int, *, smallest: bool = True) -> ImageInfo:
    """Decode an image once to prove it usable and return its size as shown.

    A JPEG is decoded at its smallest scale (``smallest``): every byte of it is still read
    and checked, at a fraction of the cost.
    """
    with _opened(path, display, max_pixels) as (image, _notes):
        shown = _shown_size(image)
        if smallest and image.format == "JPEG":
            image.draft("RGB", (1, 1))
        image.load()
    return ImageInfo(*shown)


def _resized(image: Image.Image, size: tuple[int, int] | None, mask: bool) -> Image.Image:
    if size is None or image.size == size:
        return image
    if mask:
        return image.resize(size, Image.Resampling.NEAREST)
    # reducing_gap: a fast integer reduce first, then Lanczos (a 20 MP photo in a blink).
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def load_input_image(
    path: Path, display: str, max_pixels: int, size: tuple[int, int] | None = None
) -> LoadedImage:
    """Decode an input image to RGB (transparent parts white), resized to ``size`` if given.

    Corrupt, truncated and oversized files are refused with the messages ``probe_image`` gives.
    """
    image, notes = _decode(path, display, max_pixels, size)
    source = image.size
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return LoadedImage(_resized(image.convert("RGB"), size, mask=False), tuple(notes), source)


def mask_mismatch(display: str, mask: tuple[int, int], image: tuple[int, int]) -> InputError:
    """The error of a mask whose size differs from its image's."""
    return InputError(
        display,
        f"mask is {mask[0]}x{mask[1]} but the image is {image[0]}x{image[1]}",
        key="mask",
        rule="same size as the image",
        value=f"{mask[0]}x{mask[1]}",
    )


def probe_mask(path: Path, display: str, max_pixels: int, image: tuple[int, int]) -> ImageInfo:
    """``probe_image`` for a mask, which must have its image's size (as shown)."""
    info = probe_image(path, display, max_pixels)
    if info.size != image:
        raise mask_mismatch(display, info.size, image)
    return info


def load_mask(
    path: Path,
    display: str,
    max_pixels: int,
    image_size: tuple[int, int],
    size: tuple[int, int] | None = None,
) -> LoadedImage:
    """Decode an inpainting mask (white = repaint) that must match the image's size (as shown,
    before any resizing); resize it to ``size`` as the image is."""
    image, notes = _decode(path, display, max_pixels, None)
    if image.size != image_size:
        raise mask_mismatch(display, image.size, image_size)
    if image.mode in ("RGBA", "LA"):
        image = image.getchannel("A") if _alpha_is_mask(image) else image.convert("L")
    return LoadedImage(_resized(image.convert("L"), size, mask=True), tuple(notes), image_size)


def _alpha_is_mask(image: Image.Image) -> bool:
    """An RGBA mask whose colour is uniform carries the mask in its alpha channel."""
    bands = image.convert("RGB").split()
    return all(low == high for low, high in (band.getextrema() for band in bands))
