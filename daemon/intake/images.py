"""Reading input images and masks safely: bounded size, clear messages, first frame only."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from daemon.errors import InputError


@dataclass(frozen=True)
class LoadedImage:
    """A decoded RGB (or L for masks) image and notes for the manifest."""

    image: Image.Image
    warnings: tuple[str, ...] = ()


def _open(path: Path, display: str, max_pixels: int) -> tuple[Image.Image, list[str]]:
    notes: list[str] = []
    image: Image.Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
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
            image.load()
            image = ImageOps.exif_transpose(image)
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
    return image, notes


def load_input_image(path: Path, display: str, max_pixels: int) -> LoadedImage:
    """Decode an input image to RGB, refusing corrupt, truncated and oversized files."""
    image, notes = _open(path, display, max_pixels)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return LoadedImage(image.convert("RGB"), tuple(notes))


def load_mask(path: Path, display: str, max_pixels: int, size: tuple[int, int]) -> LoadedImage:
    """Decode an inpainting mask (white = repaint) that must match the image's size."""
    image, notes = _open(path, display, max_pixels)
    if image.size != size:
        raise InputError(
            display,
            f"mask is {image.size[0]}x{image.size[1]} but the image is {size[0]}x{size[1]}",
            key="mask",
            rule="same size as the image",
            value=f"{image.size[0]}x{image.size[1]}",
        )
    if image.mode in ("RGBA", "LA"):
        image = image.getchannel("A") if _alpha_is_mask(image) else image.convert("L")
    return LoadedImage(image.convert("L"), tuple(notes))


def _alpha_is_mask(image: Image.Image) -> bool:
    """An RGBA mask whose colour is uniform carries the mask in its alpha channel."""
    bands = image.convert("RGB").split()
    return all(low == high for low, high in (band.getextrema() for band in bands))
