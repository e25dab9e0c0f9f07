"""Output names safe on Linux, macOS and Windows."""

from __future__ import annotations

import unicodedata

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
