"""A prompt file's scenes → prompts (seed 003): parts filled into ``prompt_template``, descriptive
names, and ``STEM.prompts.toml``, the editable list of prompts written beside the outputs.

``STEM.prompts.toml`` holds one ``[[scene]]`` per scene with its ``prompt`` and ``made``: a
digest of the scene's text and of the prompt dropforge made for it. A prompt that differs from
the one ``made`` describes is the user's edit and is used as long as the scene's text (matched
by its digest, wherever the scene moved) is unchanged. Rendering is deterministic, so a file
dropforge wrote reads back into the same file: its hash is what the job depends on.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.errors import InputError, did_you_mean, show_value
from daemon.outputs.names import sanitize_name
from daemon.planning.extract import PART_NAMES, extract_parts
from daemon.planning.model import Scene

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PROMPTS_SUFFIX = ".prompts.toml"
PLACEHOLDERS = ("text", *PART_NAMES)
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_NAME_CHARS = re.compile(r"[^a-z0-9]+")
_PREVIEW = 160


def digest(text: str) -> str:
    """A short digest identifying a scene's text or a prompt (12 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def fill_template(template: str, text: str, parts: Mapping[str, str]) -> str:
    """Fill ``{text}``, ``{subject}``, ``{setting}``, ``{time}``, ``{mood}``, ``{action}``.

    A comma-separated piece of the template whose placeholders are all empty is left out, so
    ``"panel, {subject}, {time}"`` with no time found reads ``"panel, Emma"``. Other braces stay.
    """
    values = {"text": text, **parts}
    pieces = []
    for piece in template.split(","):
        names = _PLACEHOLDER.findall(piece)
        if names and not any(values.get(n, "").strip() for n in names):
            continue
        filled = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), piece)
        pieces.append(re.sub(r"\s+", " ", filled).strip())
    return ", ".join(p for p in pieces if p)


@dataclass(frozen=True)
class Edit:
    """One ``[[scene]]`` of a prompts file as the user left it."""

    number: int | None
    prompt: str
    text_digest: str
    made_digest: str

    @property
    def edited(self) -> bool:
        """Whether the prompt is not the one dropforge made."""
        return digest(self.prompt) != self.made_digest


def read_prompts(text: str, display: str) -> list[Edit]:
    """Parse a prompts file; raise InputError naming ``display``, the key and the value."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(display, f"not valid TOML: {exc}") from None
    for key in data:
        if key not in ("source", "scene"):
            hint = did_you_mean(key, ("source", "scene"))
            raise InputError(display, f"{key}: unknown key{hint}", key=key)
    tables = data.get("scene", [])
    if not isinstance(tables, list):
        raise InputError.bad_value(display, "scene", "a list of [[scene]] tables", tables)
    edits = []
    for i, table in enumerate(tables, 1):
        where = f"scene[{i}]"
        if not isinstance(table, dict):
            raise InputError.bad_value(display, where, "a [[scene]] table", table)
        for key in table:
            if key not in ("scene", "prompt", "made"):
                hint = did_you_mean(key, ("scene", "prompt", "made"))
                raise InputError(display, f"{where}.{key}: unknown key{hint}", key=key)
        prompt, made = table.get("prompt"), table.get("made")
        if not isinstance(prompt, str):
            raise InputError.bad_value(display, f"{where}.prompt", "a string", prompt)
        if not isinstance(made, str) or not re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{12}", made):
            rule = "the digest dropforge wrote (leave it as it is)"
            raise InputError.bad_value(display, f"{where}.made", rule, made)
        number = table.get("scene")
        edits.append(
            Edit(number if isinstance(number, int) else None, prompt, made[:12], made[13:])
        )
    return edits


def plan_scenes(
    texts: Sequence[str],
    template: str,
    edits: Sequence[Edit],
    display: str,
) -> tuple[list[Scene], list[str]]:
    """Each scene's parts and prompt, edits applied; and notes about edits that no longer apply.

    ``display`` names the prompts file in the notes.
    """
    unused = list(edits)
    scenes: list[Scene] = []
    for number, text in enumerate(texts, 1):
        parts = extract_parts(text)
        made = fill_template(template, text, parts.as_dict()) or text
        prompt, edited = made, False
        text_digest = digest(text)
        match = next((e for e in unused if e.text_digest == text_digest), None)
        if match is not None:
            unused.remove(match)
            if match.edited and match.prompt.strip():
                prompt, edited = match.prompt, True
        scenes.append(
            Scene(number, text, prompt, made, parts.as_dict(), tuple(parts.name_words()), edited)
        )
    notes = [
        f"{display}: the edited prompt of scene {e.number} was dropped because its scene's text "
        f"changed; it was {show_value(e.prompt)}"
        for e in unused
        if e.edited and e.prompt.strip()
    ]
    return scenes, notes


def render_prompts(source: str, scenes: Sequence[Scene]) -> str:
    """The prompts file of a prompt file's scenes (reads back into the same scenes)."""
    lines = [
        f"# The prompts of {source}, one [[scene]] per scene, made by dropforge.",
        "# Edit a prompt and save: only that scene's images are made again. Put the prompt",
        "# back, or delete this file, to return to the prompt made from the text. Leave `made`",
        "# as it is: it is how dropforge tells your edits from its own prompts.",
        f"source = {_string(source)}",
    ]
    for scene in scenes:
        found = " · ".join(f"{k}: {v}" for k, v in scene.parts.items() if v) or "nothing found"
        preview = scene.text if len(scene.text) <= _PREVIEW else scene.text[: _PREVIEW - 3] + "..."
        lines += [
            "",
            "[[scene]]",
            f"scene = {scene.number}",
            f"# text: {preview}",
            f"# {found}",
            *([f"# made from the text: {_string(scene.made)}"] if scene.edited else []),
            f"prompt = {_string(scene.prompt)}",
            f'made = "{digest(scene.text)}-{digest(scene.made)}"',
        ]
    return "\n".join(lines) + "\n"


def descriptive_name(chapter: int | None, scene: Scene, words: Sequence[str]) -> str:
    """``chapter_01_scene_02_emma_office_reading``: sortable, lowercase ASCII, underscores."""
    head = [f"chapter_{chapter:02d}"] if chapter is not None else []
    head.append(f"scene_{scene.number:02d}")
    tail = [_NAME_CHARS.sub("_", w.lower()).strip("_") for w in words]
    name = "_".join([*head, *(w for w in tail if w)])[:96].rstrip("_")
    return sanitize_name(name)


def _string(value: Any) -> str:
    # A JSON string is a valid TOML basic string (same escapes, UTF-8 kept).
    return json.dumps(value, ensure_ascii=False)
