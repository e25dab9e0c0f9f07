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
# A chapter heading without '#': "Chapter 1", "CHAPTER TWELVE: The Storm", "Part II".
_CHAPTER_LINE = re.compile(
    r"^\s*(?:\*\*|__)?(?:chapter|part|book)\s+([0-9]+|[ivxlc]+|[a-z]+(?:-[a-z]+)?)\b[^.!?]*$",
    re.IGNORECASE,
)
_SETEXT_RULE = re.compile(r"^\s*=+\s*$")  # "Title" underlined with "===" is a heading
_CHAPTER_IN_NAME = re.compile(r"(?:chapter|chap|ch)[ _.\-]*0*([0-9]+)|^0*([0-9]+)(?![0-9])", re.I)
_NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve thirteen \
fourteen fifteen sixteen seventeen eighteen nineteen twenty"
_NUMBER_WORDS = {w: i for i, w in enumerate(_NUMBERS.split())}
_ROMAN = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100}
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

    Headings (``# …`` lines, ``Title`` over ``===``, ``Chapter 1`` lines) are not scene text.
    A line naming an excluded section (a heading, or a line that is just the name) drops the
    rest of its scene, so a section headed that way disappears whole.
    """
    excluded = {_section_name(name) for name in exclude_sections} - {""}
    scenes: list[str] = []
    current: list[str] = []
    cut = False
    lines = [*text.splitlines(), "***"]  # the sentinel ends the last scene
    for i, line in enumerate(lines):
        if line.strip() in SEPARATORS:
            scene = _WHITESPACE.sub(" ", " ".join(current)).strip()
            if scene:
                scenes.append(scene)
            current, cut = [], False
        elif not cut:
            if excluded and _section_name(line) in excluded:
                cut = True
            elif not _is_heading(line, lines[i + 1] if i + 1 < len(lines) else ""):
                current.append(line)
    return scenes


def chapter_number(text: str, file_name: str) -> int | None:
    """The chapter a prompt file holds: from a ``Chapter N`` heading, else its file name
    (``chapter_01.md``, ``ch3.txt``, ``02-storm.md``); None when neither says."""
    for line in text.splitlines():
        match = _CHAPTER_LINE.match(_strip_heading(line).strip())
        if match and match.group(0).strip().lower().startswith("chapter"):
            number = _number(match.group(1))
            if number is not None:
                return number
    match = _CHAPTER_IN_NAME.search(file_name.rpartition(".")[0] or file_name)
    if match:
        return int(match.group(1) or match.group(2))
    return None


def _is_heading(line: str, following: str) -> bool:
    if _HEADING.match(line) or _SETEXT_RULE.match(line):
        return True
    if line.strip() and _SETEXT_RULE.match(following):
        return True
    return bool(_CHAPTER_LINE.match(line)) and len(line.strip()) <= 80


def _number(word: str) -> int | None:
    word = word.lower()
    if word.isdigit():
        return int(word)
    if word in _NUMBER_WORDS:
        return _NUMBER_WORDS[word]
    if word and all(c in _ROMAN for c in word):
        values = [_ROMAN[c] for c in word]
        return sum(-v if v < n else v for v, n in zip(values, [*values[1:], 0], strict=True))
    return None


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
