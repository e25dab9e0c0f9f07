"""PNG files with metadata: the A1111 ``parameters`` text and the ``dropforge`` JSON chunk, written
and read back without decoding pixels."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from daemon.outputs.files import OutputFile, atomic_write_bytes

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


_MAX_TEXT = 8 << 20  # a text chunk larger than this is not ours: refuse rather than inflate it


_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def encode_png(image: Image.Image, parameters: str, dropforge: Mapping[str, Any]) -> bytes:
    """Encode ``image`` as PNG carrying the A1111 ``parameters`` and a ``dropforge`` JSON chunk."""
    info = PngInfo()
    # add_text picks tEXt for Latin-1 text and iTXt (UTF-8) otherwise, as A1111 does.
    info.add_text("parameters", parameters)
    info.add_text("dropforge", json.dumps(dict(dropforge), separators=(",", ":")))
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(
    path: Path,
    image: Image.Image,
    parameters: str,
    dropforge: Mapping[str, Any],
    *,
    sync_folder: bool = True,
) -> OutputFile:
    """Encode and atomically write a PNG with its metadata; return what the manifest records."""
    data = encode_png(image, parameters, dropforge)
    atomic_write_bytes(path, data, sync_folder=sync_folder)
    return OutputFile(file=path.name, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def read_png_chunks(path: Path) -> dict[str, str]:
    """Return the text chunks of a PNG by keyword without decoding any pixels.

    Raises OSError when the file cannot be read and ValueError when it is not a whole PNG.
    """
    texts: dict[str, str] = {}
    with open(path, "rb") as handle:
        if handle.read(8) != _PNG_SIGNATURE:
            raise ValueError(f"{path}: not a PNG file")
        while True:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: truncated PNG file")
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                return texts
            if kind not in _TEXT_CHUNKS:
                handle.seek(length + 4, os.SEEK_CUR)
                continue
            if length > _MAX_TEXT:
                raise ValueError(f"{path}: text chunk too large")
            data = handle.read(length)
            crc = handle.read(4)
            if len(data) < length or len(crc) < 4:
                raise ValueError(f"{path}: truncated PNG file")
            if zlib.crc32(kind + data) != int.from_bytes(crc, "big"):
                raise ValueError(f"{path}: corrupt {kind.decode()} chunk")
            keyword, text = _decode_text_chunk(path, kind, data)
            texts.setdefault(keyword, text)


def _decode_text_chunk(path: Path, kind: bytes, data: bytes) -> tuple[str, str]:
    keyword, separator, rest = data.partition(b"\0")
    if not separator:
        raise ValueError(f"{path}: corrupt {kind.decode()} chunk")
    if kind == b"tEXt":
        return keyword.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return keyword.decode("latin-1"), _inflate(path, rest[1:]).decode("latin-1")
    # iTXt: compression flag, method, language tag \0, translated keyword \0, UTF-8 text
    if len(rest) < 2:
        raise ValueError(f"{path}: corrupt iTXt chunk")
    compressed = rest[0] == 1
    _language, _, rest = rest[2:].partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed:
        text = _inflate(path, text)
    try:
        return keyword.decode("latin-1"), text.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: corrupt iTXt chunk") from err


def _inflate(path: Path, data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, _MAX_TEXT)
    except zlib.error as err:
        raise ValueError(f"{path}: corrupt compressed text chunk") from err
    if inflater.unconsumed_tail:
        raise ValueError(f"{path}: text chunk too large")
    return text


def read_dropforge_chunk(path: Path) -> dict[str, Any] | None:
    """Return the ``dropforge`` JSON of a PNG, or None for a missing, corrupt or foreign file."""
    try:
        text = read_png_chunks(path).get("dropforge")
        value = json.loads(text) if text is not None else None
    except (OSError, ValueError):  # JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def _a1111_quote(value: Any) -> str:
    # A1111's own rule (infotext_utils.quote): JSON-quote only what would break the parser.
    text = str(value)
    if "," in text or "\n" in text or ":" in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def a1111_parameters(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    guidance: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Render generation settings in the AUTOMATIC1111 "parameters" text that viewers read."""
    items: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler,
        "CFG scale": guidance,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model": model,
        **(extra or {}),
    }
    settings = ", ".join(f"{k}: {_a1111_quote(v)}" for k, v in items.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{settings}"
