"""Prompt files: reading their text and splitting it into scenes (seed 003)."""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Sequence
from pathlib import Path

from daemon.errors import InputError

SEPARATORS = frozenset({"* * *", "***", "---"})
# An ATX heading: up to three spaces, 1-6 '#', then a space or the end of the line.
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+|$)")
_CLOSING_HASHES = re.compile(r"[ \t]+#+[ \t]*$")
_WHITESPACE = re.compile(r"\s+")
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def read_prompt_text(path: Path, display: str, max_bytes: int = 1_000_000) -> str:
    """Read a prompt file: UTF-8 (BOM allowed) or UTF-16 with a BOM; newlines become ``\\n``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                size = os.fstat(handle.fileno()).st_size
                raise InputError(
                    display,
                    f"prompt file too large ({size} bytes, the limit is {max_bytes} bytes)",
                    rule=f"at most {max_bytes} bytes",
                    value=size,
                )
    except OSError as exc:
        raise InputError(display, f"cannot read: {exc.strerror or exc}") from None
    encoding, skip = "utf-8", 0
    for bom, name in _BOMS:
        if data.startswith(bom):
            encoding, skip = name, len(bom)
            break
    # NUL is valid UTF-8, so UTF-16 without a BOM would otherwise pass as text full of NULs.
    nul = data.find(b"\0", skip) if encoding == "utf-8" else -1
    if nul >= 0:
        raise InputError(
            display,
            f"not UTF-8 text (byte 0x00 at offset {nul}; UTF-16 needs a byte-order mark)",
            rule="UTF-8 text, or UTF-16 with a byte-order mark",
            value=nul,
        )
    try:
        text = data[skip:].decode(encoding)
    except UnicodeDecodeError as exc:
        label = "UTF-8" if encoding == "utf-8" else "UTF-16"
        offset = skip + exc.start
        raise InputError(
            display, f"not {label} text (byte 0x{data[offset]:02x} at offset {offset})"
        ) from None
    if not text.strip():
        raise InputError(display, "empty prompt file")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_scenes(text: str, exclude_sections: Sequence[str]) -> list[str]:
    """Split prompt text into scenes on ``* * *``, ``***`` or ``---`` lines.

    A line naming an excluded section (a heading, or a line that is just the name)
    drops the rest of its scene, so a section headed that way disappears whole.
    """
    excluded = {_section_name(name) for name in exclude_sections} - {""}
    scenes: list[str] = []
    current: list[str] = []
    cut = False
    for line in [*text.splitlines(), "***"]:  # the sentinel ends the last scene
        if line.strip() in SEPARATORS:
            scene = _WHITESPACE.sub(" ", " ".join(current)).strip()
            if scene:
                scenes.append(scene)
            current, cut = [], False
        elif not cut:
            if excluded and _section_name(line) in excluded:
                cut = True
            else:
                current.append(_strip_heading(line))
    return scenes


def apply_template(template: str, text: str) -> str:
    """Put a scene into a prompt template at ``{text}`` (prompts may hold other braces)."""
    return template.replace("{text}", text)


def _strip_heading(line: str) -> str:
    """A heading's text without its ``#`` markers; other lines unchanged."""
    match = _HEADING.match(line)
    if match is None:
        return line
    return _CLOSING_HASHES.sub("", line[match.end() :])


def _section_name(line: str) -> str:
    """How a line reads as a section name: no ``#``, emphasis or trailing ``:``, any case."""
    name = _strip_heading(line).strip().strip("*_").strip().rstrip(":").strip()
    return _WHITESPACE.sub(" ", name).casefold()
