"""The output side: atomic writes, PNG metadata, contact sheets and names safe on every OS."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
import struct
import unicodedata
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from daemon.errors import DiskFull

TEMP_MARKER = ".dropforge-tmp-"
# `.{name}.dropforge-tmp-{hex}`: anchored so a user's file that merely mentions the marker
# is never taken for one of ours.
_TEMP_RE = re.compile(r"^\..+" + re.escape(TEMP_MARKER) + r"[0-9a-f]{8,}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class OutputFile:
    """A file written to the output tree, as recorded in the manifest's ``outputs``."""

    file: str  # the name inside its folder
    sha256: str
    bytes: int


# -- atomic writes ----------------------------------------------------------------------------


def atomic_write(
    path: Path, write: Callable[[IO[bytes]], None], *, sync_folder: bool = True
) -> None:
    """Stream a file into place atomically: ``write`` fills a hidden temporary beside ``path``.

    Readers (and sync tools) see either the old file or the whole new one, never a part.
    On any error the temporary is removed and the error re-raised; running out of space
    raises DiskFull. The file's data is always synced; ``sync_folder=False`` leaves the
    folder's fsync (what makes the rename survive a power loss) to a later write in the same
    folder, as the worker does for a job's images: its manifest's write syncs them all.
    """
    try:
        _write_and_replace(path, write, sync_folder)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFull(f"no space left writing {path}") from err
        if err.errno == getattr(errno, "EDQUOT", None):
            raise DiskFull(f"disk quota exceeded writing {path}") from err
        raise


def atomic_write_bytes(path: Path, data: bytes, *, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temporary, fsync, os.replace, folder fsync)."""

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    atomic_write(path, write, sync_folder=sync_folder)


def _write_and_replace(
    path: Path, write: Callable[[IO[bytes]], None], sync_folder: bool = True
) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{path.name}{TEMP_MARKER}{secrets.token_hex(4)}"
    # 0o666 (less the umask) like any other new file: outputs are for people and sync tools.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    descriptor = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if sync_folder:
        _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable. Windows cannot open folders, and some filesystems
    # refuse fsync on them; the file's own data is already synced, so skipping is safe.
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the temporaries a crashed write left anywhere under ``root``; return them."""
    removed: list[Path] = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if _TEMP_RE.match(name):
                path = Path(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return sorted(removed)


# -- hashes -----------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(_CHUNK):
            digest.update(piece)
    return digest.hexdigest()


def file_matches(path: Path, bytes: int, sha256: str | None = None) -> bool:
    """Tell whether ``path`` is a file of ``bytes`` bytes (and, when given, that sha256)."""
    try:
        if not path.is_file() or path.stat().st_size != bytes:
            return False
        return sha256 is None or sha256_file(path) == sha256
    except OSError:
        return False


# -- PNG metadata -----------------------------------------------------------------------------

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


# -- contact sheets ---------------------------------------------------------------------------

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
    batch smaller than ``thumb`` gets cells of its own size. Cells widen to fit short labels;
    longer labels are shortened with an ellipsis.
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
    # One line each: a newline would run into the next row.
    labels = [" ".join(label.split()) for _, label in items]
    widest = max(_text_width(font, label) for label in labels)
    # Room for "seed 4294967295" even under 64-pixel thumbnails, but no wider than that.
    cell_w = max(box, min(widest, max(box, 12 * font_size))) + 2 * pad
    cell_h = box + line + 3 * pad
    cols = columns or math.ceil(math.sqrt(len(items)))
    rows = math.ceil(len(items) / cols)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, ((image, _), label) in enumerate(zip(items, labels, strict=True)):
        left = (index % cols) * cell_w
        top = (index // cols) * cell_h
        small = image.convert("RGBA")
        small.thumbnail((box, box), Image.Resampling.LANCZOS)
        x = left + (cell_w - small.width) // 2
        y = top + pad + (box - small.height) // 2
        sheet.paste(small, (x, y), small)
        text = _fit_label(font, label, cell_w - 2 * pad)
        text_x = left + (cell_w - _text_width(font, text)) // 2
        draw.text((text_x, top + 2 * pad + box), text, fill=_INK, font=font)
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


# -- names ------------------------------------------------------------------------------------

_FORBIDDEN = frozenset('<>:"/\\|?*')
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789¹²³"}
)
_MAX_NAME_BYTES = 200
_MAX_KEPT_SUFFIX = 16


def sanitize_name(name: str, max_len: int = 120) -> str:
    """Make ``name`` a file name safe on Linux, macOS and Windows, keeping unicode letters.

    Forbidden and control characters become ``_``, trailing dots and spaces go, Windows
    device names get a ``_`` (``CON.txt`` -> ``CON_.txt``), and the name is cut to
    ``max_len`` characters and 200 UTF-8 bytes, keeping a short extension.
    """
    if max_len < 32:
        raise ValueError("max_len must be at least 32")
    name = unicodedata.normalize("NFC", name)
    name = "".join(
        "_" if c in _FORBIDDEN or unicodedata.category(c) in ("Cc", "Cs") else c for c in name
    )
    name = name.rstrip(". ")
    stem = name.split(".", 1)[0].rstrip(" ")
    if stem.upper() in _RESERVED:
        name = f"{stem}_{name[len(stem) :]}"
    if len(name) > max_len or len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        name = _shorten(name, max_len).rstrip(". ")
    return name or "_"


def _shorten(name: str, max_len: int) -> str:
    head, dot, suffix = name.rpartition(".")
    kept = f".{suffix}" if dot and head and len(suffix) <= _MAX_KEPT_SUFFIX else ""
    head = name[: len(name) - len(kept)][: max_len - len(kept)]
    budget = _MAX_NAME_BYTES - len(kept.encode("utf-8"))
    while len(head.encode("utf-8")) > budget:
        head = head[:-1]
    return head + kept
