"""Regenerate one output with another seed: a new input and its sidecar in the inbox, with every
effective parameter of that output pinned.

The sidecar pins what the output was made with (its seed, its ``[vary]`` values, the prompt as
it was templated) and clears what a ``_defaults.toml`` could add on top: ``vary = {}``,
``prompts = []``, ``prompt_template = "{text}"``, ``count = 1``. Before anything is written to
the inbox, the new input is checked with ``dropforge check``'s code in a private copy of its
folder's ``_defaults.toml`` chain, so an input that would fail is never dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import tomllib

from daemon.config import InboxConfig, Settings
from daemon.errors import NotAnOutput
from daemon.intake.names import DEFAULTS_NAME, IMAGE_EXTENSIONS
from daemon.outputs.files import atomic_write_bytes
from daemon.outputs.manifest import read_manifest
from daemon.runtime.inspect import check_path

PINNED = ("negative_prompt", "steps", "guidance", "strength", "width", "height", "lora",
          "lora_scale")  # fmt: skip
TASKS = ("text2image", "variations", "inpaint")


@dataclass(frozen=True)
class Regenerated:
    """What ``regenerate`` wrote: the new input and its sidecar."""

    input: Path
    sidecar: Path
    seed: int
    check: str  # what `dropforge check` says about it


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each value read as TOML (a bare word is a string)."""
    found: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise NotAnOutput(item, "--set needs KEY=VALUE")
        try:
            found[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            found[key] = raw.strip()
    return found


def regenerate(
    settings: Settings, output: Path, *, seed: int | None = None, sets: Mapping[str, Any] = {}
) -> Regenerated:
    """Write a new input and sidecar that make ``output`` again (with ``seed``, ``sets``)."""
    output = output.expanduser().absolute()
    inbox = next((i for i in settings.inboxes if output.is_relative_to(i.output)), None)
    if inbox is None:
        raise NotAnOutput(output, "not inside an output folder of this config")
    manifest = read_manifest(output.parent)
    entry = None
    if manifest is not None:
        entry = next((e for e in manifest.outputs or () if e.file == output.name), None)
    if manifest is None or entry is None or manifest.input is None:
        raise NotAnOutput(output, "no manifest beside it lists this file")
    if manifest.task not in TASKS:
        raise NotAnOutput(output, f"regenerate makes images; this is a {manifest.task} output")
    source = inbox.path / manifest.input.path
    params = dict(manifest.params)
    table: dict[str, Any] = {k: params[k] for k in PINNED if k in params}
    table.update(entry.params or {})
    table |= {"task": manifest.task, "count": 1, "seed": entry.seed if seed is None else seed}
    table |= {"vary": {}, "prompts": [], "prompt_template": "{text}"}
    if manifest.model is not None:
        table["model"] = manifest.model.alias
    if not table.get("lora"):
        table.pop("lora", None)
        table.pop("lora_scale", None)
    prompt = entry.prompt if entry.prompt is not None else str(params.get("prompt", ""))
    image_input = source.suffix.lower() in IMAGE_EXTENSIONS
    if image_input:
        if not source.is_file():
            raise NotAnOutput(output, f"its input {manifest.input.path} is no longer in the inbox")
        table["prompt"] = prompt
        if manifest.mask is not None:
            mask = PurePosixPath(manifest.mask.path)
            table["mask"] = os.path.relpath(mask, PurePosixPath(manifest.input.path).parent)
    table |= dict(sets)
    if type(table["seed"]) is not int:
        raise NotAnOutput(output, f"seed must be an integer, got {table['seed']!r}")
    folder = source.parent
    stem = f"{source.stem}-seed{table['seed']}"
    suffix = source.suffix if image_input else ".txt"
    name = _free_name(folder, stem, suffix)
    content = source.read_bytes() if image_input else prompt.encode("utf-8")
    sidecar_text = _sidecar(output, inbox, table)
    extra = [manifest.mask.path] if manifest.mask is not None else []
    checked = _check_first(settings, inbox, folder, name, content, sidecar_text, extra)
    sidecar = folder / f"{Path(name).stem}.toml"
    atomic_write_bytes(sidecar, sidecar_text.encode("utf-8"))  # first: the input settles with it
    atomic_write_bytes(folder / name, content)
    return Regenerated(folder / name, sidecar, table["seed"], checked)


def _free_name(folder: Path, stem: str, suffix: str) -> str:
    name, n = f"{stem}{suffix}", 2
    while (folder / name).exists() or (folder / f"{Path(name).stem}.toml").exists():
        name, n = f"{stem}-{n}{suffix}", n + 1
    return name


def _sidecar(output: Path, inbox: InboxConfig, table: Mapping[str, Any]) -> str:
    where = output.relative_to(inbox.output).as_posix()
    lines = [f"# made by dropforge regenerate from {where}: every parameter pinned"]
    for key, value in table.items():
        if isinstance(value, dict):
            continue
        lines.append(f"{key} = {_toml(value)}")
    lines.append("vary = {}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string is JSON's


def _check_first(
    settings: Settings,
    inbox: InboxConfig,
    folder: Path,
    name: str,
    content: bytes,
    sidecar: str,
    extra: list[str],
) -> str:
    """Run `check` on the new input in a private copy of its folder chain; raise if invalid."""
    rel = folder.relative_to(inbox.path)
    with tempfile.TemporaryDirectory(prefix="dropforge-regenerate-") as tmp:
        root = Path(tmp) / "inbox"
        here = root
        for part in ("", *rel.parts):
            here = here / part if part else here
            here.mkdir(parents=True, exist_ok=True)
            defaults = inbox.path.joinpath(*rel.parts[: len(here.relative_to(root).parts)])
            if (defaults / DEFAULTS_NAME).is_file():
                shutil.copyfile(defaults / DEFAULTS_NAME, here / DEFAULTS_NAME)
        for rel_file in extra:  # a mask the sidecar names
            if (inbox.path / rel_file).is_file():
                (root / rel_file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(inbox.path / rel_file, root / rel_file)
        (here / name).write_bytes(content)
        (here / f"{Path(name).stem}.toml").write_text(sidecar, encoding="utf-8")
        private = dataclasses.replace(
            settings,
            inboxes=(dataclasses.replace(inbox, path=root, output=Path(tmp) / "outbox"),),
            state_dir=Path(tmp) / "state",
        )
        result = check_path(private, here / name)
    if not result.ok:
        raise NotAnOutput(name, "the new input would fail, nothing written:\n" + result.text)
    return result.text.replace(str(root), str(inbox.path))
