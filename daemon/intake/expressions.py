"""Seed 004's ``expressions.json``: a tween job file in the user's own format.

``base_paths`` (``[{id, start, end}]``) are the job's ``paths``; ``expressions`` (a list of
``{id, prompt}`` objects, or an object mapping each id to its prompt) name the prompts from which
missing endpoints are generated. Other keys belong to the user's other tools and are ignored
(the manifest says which). Parameters come from the sidecar ``expressions.toml`` as for any input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import InputError, show_value
from daemon.intake.paths import read_small_text

USED_KEYS = ("base_paths", "expressions")


@dataclass(frozen=True)
class ExpressionsFile:
    """What an ``expressions.json`` says, as sidecar-style values, and what it left unused."""

    values: dict[str, Any]  # "base_paths" and "expressions", as written
    ignored: tuple[str, ...]  # top-level keys dropforge does not use


def read_expressions(path: Path, display: str, max_bytes: int) -> ExpressionsFile:
    """Read and shape an ``expressions.json``; raise InputError naming ``display``."""
    text = read_small_text(path, display, max_bytes)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InputError(display, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(display, f"must be a JSON object with base_paths, got {show_value(doc)}")
    if "base_paths" not in doc:
        raise InputError(display, "base_paths is required", key="base_paths")
    values: dict[str, Any] = {"base_paths": doc["base_paths"]}
    found = doc.get("expressions")
    if isinstance(found, dict):  # {"smile": "a wide smile", …}
        found = [{"id": k, "prompt": v} for k, v in found.items()]
    if isinstance(found, list):
        # Entries may carry fields for other tools; only id and prompt matter here.
        values["expressions"] = [
            {k: v for k, v in e.items() if k in ("id", "prompt")} if isinstance(e, dict) else e
            for e in found
            if not isinstance(e, dict) or "prompt" in e
        ] or None
        if values["expressions"] is None:
            del values["expressions"]
    elif found is not None:
        raise InputError.bad_value(
            display, "expressions", "a list of {id, prompt} objects or an object id → prompt", found
        )
    ignored = tuple(sorted(k for k in doc if k not in USED_KEYS))
    return ExpressionsFile(values, ignored)
