"""Favorites and discards, kept in XMP sidecars beside the images (``NAME.png.xmp``).

The files are the record, so that a synced laptop, darktable, digiKam, Lightroom and Immich see
the same ratings as the GPU box: ``xmp:Rating`` 5 is a favorite, -1 a discard (the XMP value
for "rejected"), anything else (0 or no sidecar) unselected. darktable, digiKam (by default)
and Immich name the sidecar ``NAME.ext.xmp``; Lightroom and digiKam's compatibility mode use
``NAME.xmp``: both are read, ``NAME.ext.xmp`` first; dropforge writes ``NAME.ext.xmp``.

A sidecar another tool wrote keeps everything else it holds: only the rating is replaced (or
added). A discard left beside an image that is gone is how a deleted output is remembered as
discarded (see ``manifest``). Writing a rating never touches the image itself.
"""

from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path

from daemon.outputs.files import atomic_write_bytes

XMP_SUFFIX = ".xmp"
MAX_XMP_BYTES = 1 << 20  # a sidecar larger than this is not read (and never rewritten)
CREATOR = "dropforge"

# Tools write the rating as an attribute of rdf:Description (darktable, exiv2 for digiKam) or
# as an element (Lightroom, exiftool): both are read and replaced in place.
_ATTRIBUTE = re.compile(rb"""(xmp:Rating\s*=\s*)(["'])\s*(-?\d+(?:\.\d+)?)\s*\2""")
_ELEMENT = re.compile(rb"(<xmp:Rating>)\s*(-?\d+(?:\.\d+)?)\s*(</xmp:Rating>)")
_DESCRIPTION = re.compile(rb"<rdf:Description\b")
_XMP_NS = b'xmlns:xmp="http://ns.adobe.com/xap/1.0/"'

_PACKET = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="{creator}">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmp:CreatorTool="{creator}"
    xmp:Rating="{rating}"/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


class Rating(str, Enum):
    """How a person judged an output."""

    favorite = "favorite"
    discard = "discard"
    none = "none"

    def __str__(self) -> str:
        return self.value

    @property
    def xmp_value(self) -> int:
        """The ``xmp:Rating`` written for it."""
        return {Rating.favorite: 5, Rating.discard: -1, Rating.none: 0}[self]


def rating_of_value(value: float) -> Rating:
    """Read an ``xmp:Rating``: -1 (rejected) is a discard, 5 a favorite, the rest unselected."""
    if value < 0:
        return Rating.discard
    return Rating.favorite if value >= 5 else Rating.none


def sidecar_paths(image: Path) -> tuple[Path, Path]:
    """``NAME.ext.xmp`` (written, read first) and ``NAME.xmp`` (read too)."""
    return image.with_name(image.name + XMP_SUFFIX), image.with_suffix(XMP_SUFFIX)


def sidecar_of(image: Path) -> Path | None:
    """The sidecar that holds ``image``'s rating, or None."""
    for path in sidecar_paths(image):
        if path.is_file():
            return path
    return None


def parse_rating(data: bytes) -> Rating:
    """The rating an XMP packet holds (unselected when it has none)."""
    found = _ATTRIBUTE.search(data)
    if found is not None:
        return rating_of_value(float(found.group(3)))
    element = _ELEMENT.search(data)
    return rating_of_value(float(element.group(2))) if element is not None else Rating.none


def read_rating(image: Path) -> Rating:
    """``image``'s rating, read from its sidecar now (the image itself may be gone)."""
    path = sidecar_of(image)
    if path is None:
        return Rating.none
    data = _read_small(path)
    return Rating.none if data is None else parse_rating(data)


def _read_small(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_XMP_BYTES + 1)
    except OSError:
        return None
    return None if len(data) > MAX_XMP_BYTES else data


def write_rating(image: Path, rating: Rating) -> Path | None:
    """Record ``rating`` for ``image`` atomically; return the sidecar written (None when a
    cleared rating left nothing to keep).

    A sidecar dropforge wrote is replaced whole, or removed when the rating is cleared; one
    another tool wrote keeps all it holds but the rating.
    """
    existing = sidecar_of(image)
    data = None if existing is None else _read_small(existing)
    ours = data is None or b'xmp:CreatorTool="' + CREATOR.encode() + b'"' in data
    if ours:
        target = existing or sidecar_paths(image)[0]
        if rating is Rating.none:
            if existing is not None:
                existing.unlink(missing_ok=True)
            return None
        packet = _PACKET.format(creator=CREATOR, rating=rating.xmp_value)
        atomic_write_bytes(target, packet.encode("utf-8"))
        return target
    assert existing is not None and data is not None
    atomic_write_bytes(existing, _with_rating(data, rating.xmp_value))
    return existing


def _with_rating(data: bytes, value: int) -> bytes:
    """An XMP packet with its rating replaced, or added to its first ``rdf:Description``."""
    new = str(value).encode()
    if _ATTRIBUTE.search(data):
        return _ATTRIBUTE.sub(lambda m: m.group(1) + m.group(2) + new + m.group(2), data, 1)
    if _ELEMENT.search(data):
        return _ELEMENT.sub(lambda m: m.group(1) + new + m.group(3), data, 1)
    found = _DESCRIPTION.search(data)
    if found is None:  # not an XMP packet we understand: start a fresh one
        return _PACKET.format(creator=CREATOR, rating=value).encode("utf-8")
    namespace = b"" if _XMP_NS in data else b" " + _XMP_NS
    added = found.group(0) + namespace + b' xmp:Rating="' + new + b'"'
    return data[: found.start()] + added + data[found.end() :]


def is_sidecar_name(name: str) -> bool:
    """True for an XMP sidecar's name (never an input, never an unexpected output)."""
    return name.lower().endswith(XMP_SUFFIX)


def discarded_missing(image: Path) -> bool:
    """True when ``image`` is gone and a discard is recorded beside it."""
    return not os.path.lexists(image) and read_rating(image) is Rating.discard
