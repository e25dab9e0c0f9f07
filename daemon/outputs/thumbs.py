"""Gallery thumbnails (256 px JPEG), cached under ``state_dir/thumbs``.

The worker saves one as it writes each image, from the copy it already shrank for the contact
sheet; older outputs (and images another tool wrote) get theirs the first time the gallery asks.
A thumbnail is named by a digest of the image's real path, size and modification time, so a
replaced image gets a fresh one and no index of thumbnails is needed.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from daemon.outputs.contact import CONTACT_THUMB, contact_thumbnail
from daemon.outputs.files import atomic_write_bytes

THUMB_DIR = "thumbs"
THUMB_SUFFIX = ".jpg"
MAX_SOURCE_PIXELS = 64_000_000  # a larger image gets no thumbnail (decompression bombs)


def thumb_path(cache: Path, image: Path, st: os.stat_result) -> Path:
    """Where ``image``'s thumbnail (at this size and mtime) is cached."""
    key = f"{os.path.realpath(image)}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return cache / digest[:2] / f"{digest}{THUMB_SUFFIX}"


def save_thumbnail(cache: Path, image: Path, small: Image.Image) -> Path:
    """Cache ``small`` (already at most 256 px) as ``image``'s thumbnail."""
    target = thumb_path(cache, image, os.stat(image))
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=85)
    atomic_write_bytes(target, buffer.getvalue(), sync_folder=False)
    return target


def thumbnail_for(cache: Path, image: Path) -> Path | None:
    """``image``'s cached thumbnail, made now if it has none; None when it cannot be read."""
    try:
        st = os.stat(image)
    except OSError:
        return None
    target = thumb_path(cache, image, st)
    if target.is_file():
        return target
    try:
        with Image.open(image) as opened:
            if opened.width * opened.height > MAX_SOURCE_PIXELS:
                return None
            opened.seek(0)
            small = contact_thumbnail(opened, CONTACT_THUMB)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return save_thumbnail(cache, image, small)
