"""Presets + sidecar layering → validated job parameters.

Every layer (``config.toml [defaults]``, a preset, each ``_defaults.toml``, the file's own
sidecar) is checked on its own, so an error names the file that holds the bad value.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from daemon.errors import ConfigError, InputError, show_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from daemon.config import Settings

MAX_SEED = 4_294_967_295
MAX_TEXT = 4000
FORMATS = ("glb", "ply", "obj")
PATH_RULE = "a relative path inside the inbox"
NAME_RULE = 'a name made of letters, digits, "_", "-" and "."'
EXPRESSION_RULE = "a non-empty name without slashes"
# The same tasks as daemon.config.TASKS; not imported so that config.py can import this module.
TASKS = ("text2image", "variations", "inpaint", "mesh", "tween")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_DRIVE = re.compile(r"[A-Za-z]:")

# Built-in values for keys that no layer sets; every result carries every key.
FALLBACKS: Mapping[str, Any] = MappingProxyType({
    "task": "auto", "preset": "standard", "prompt": "", "negative_prompt": "", "prompts": None,
    "count": 1, "seed": None, "seeds": None, "steps": 30, "guidance": 7.5, "strength": 0.6,
    "width": 512, "height": 512, "vary": {}, "mask": None, "model": None, "lora": "",
    "lora_scale": 1.0, "mesh_resolution": 256, "formats": ("glb",), "texture": False,
    "depth": 2, "paths": None, "pose": None, "start": None, "end": None, "endpoints": None,
    "exclude_sections": (), "prompt_template": "{text}", "force": False,
})  # fmt: skip

PARAM_KEYS: tuple[str, ...] = tuple(FALLBACKS)

Checker = Callable[[str, str, Any, "Settings"], Any]


def _suggest(name: str, choices: Sequence[str]) -> str:
    """``, did you mean X?`` for a close match (daemon.config.suggest, imported late)."""
    # A top-level import would be a cycle once load_config calls check_settings.
    from daemon import config

    return config.suggest(name, tuple(choices))


def _bad(source: str, key: str, rule: str, value: Any) -> InputError:
    return InputError.bad_value(source, key, rule, value)


def _integer(lo: int, hi: int) -> Checker:
    def check(source: str, key: str, value: Any, settings: Settings) -> int:
        # bool is an int subclass; TOML true must never pass as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(source, key, f"an integer in {lo}..{hi}", value)
        if not lo <= value <= hi:
            raise _bad(source, key, f"{lo}..{hi}", value)
        return value

    return check


def _number(lo: float, hi: float) -> Checker:
    def check(source: str, key: str, value: Any, settings: Settings) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(source, key, f"a number in {lo:g}..{hi:g}", value)
        # nan fails every comparison, so test the inside of the range rather than the outside.
        if not (lo <= value <= hi):
            raise _bad(source, key, f"{lo:g}..{hi:g}", value)
        return float(value)

    return check


def _size(source: str, key: str, value: Any, settings: Settings) -> int:
    rule = "a multiple of 8 in 64..2048"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(source, key, rule, value)
    if not 64 <= value <= 2048 or value % 8:
        raise _bad(source, key, rule, value)
    return value


def _text(source: str, key: str, value: Any, settings: Settings) -> str:
    if not isinstance(value, str):
        raise _bad(source, key, "a string", value)
    if len(value) > MAX_TEXT:
        # Echoing thousands of characters back would bury the message.
        raise InputError(
            source,
            f"{key} must be at most {MAX_TEXT} characters, got {len(value)} characters",
            key=key,
            rule=f"at most {MAX_TEXT} characters",
            value=value,
        )
    return value


def _flag(source: str, key: str, value: Any, settings: Settings) -> bool:
    if not isinstance(value, bool):
        raise _bad(source, key, "true or false", value)
    return value


def _task(source: str, key: str, value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or value not in TASKS:
        raise _bad(source, key, "one of " + ", ".join(TASKS), value)
    return value


def _preset(source: str, key: str, value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or value not in settings.presets:
        raise _bad(source, key, "one of the presets: " + ", ".join(sorted(settings.presets)), value)
    return value


def _model(source: str, key: str, value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or value not in settings.models:
        choices = ", ".join(sorted(settings.models)) or "(none defined)"
        raise _bad(source, key, f"one of the [models] aliases: {choices}", value)
    return value


def _lora(source: str, key: str, value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or (value and value not in settings.loras):
        if settings.loras:
            rule = (
                f'one of the [loras] aliases: {", ".join(sorted(settings.loras))}, or "" for none'
            )
        else:
            rule = '"" (config.toml defines no [loras] aliases)'
        raise _bad(source, key, rule, value)
    return value


def _relative_path(source: str, key: str, value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or not is_relative_path(value):
        raise _bad(source, key, PATH_RULE, value)
    return value.replace("\\", "/")


def is_relative_path(text: str) -> bool:
    """True for a non-empty relative path with no ``..`` component, drive, UNC prefix or NUL.

    Both slash kinds count as separators, since sidecars are written on every OS.
    """
    if not text or "\0" in text or text.startswith(("/", "\\")) or _DRIVE.match(text):
        return False
    return ".." not in re.split(r"[/\\]", text)


def _expression(source: str, key: str, value: Any, settings: Settings) -> str:
    # These names end up inside file names ({expr}__{pose}.png), never as paths.
    if not isinstance(value, str) or not value or re.search(r"[/\\\0]", value):
        raise _bad(source, key, EXPRESSION_RULE, value)
    return value


def _template(source: str, key: str, value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or "{text}" not in value:
        raise _bad(source, key, 'a string containing "{text}"', value)
    return _text(source, key, value, settings)


def _prompts(source: str, key: str, value: Any, settings: Settings) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 20:
        raise _bad(source, key, "a list of 1..20 non-empty strings", value)
    for i, item in enumerate(value, 1):
        if not isinstance(item, str) or not item:
            raise _bad(source, f"{key}[{i}]", "a non-empty string", item)
        _text(source, f"{key}[{i}]", item, settings)
    return tuple(value)


def _seeds(source: str, key: str, value: Any, settings: Settings) -> tuple[int, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 20:
        raise _bad(source, key, f"a list of 1..20 unique integers in 0..{MAX_SEED}", value)
    check = _integer(0, MAX_SEED)
    seen: set[int] = set()
    for i, item in enumerate(value, 1):
        check(source, f"{key}[{i}]", item, settings)
        if item in seen:
            raise _bad(source, f"{key}[{i}]", "unique (it repeats an earlier seed)", item)
        seen.add(item)
    return tuple(value)


def _formats(source: str, key: str, value: Any, settings: Settings) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _bad(source, key, "a non-empty list of unique values from glb, ply, obj", value)
    for i, item in enumerate(value, 1):
        if not isinstance(item, str) or item not in FORMATS:
            raise _bad(source, f"{key}[{i}]", "one of glb, ply, obj", item)
        if item in value[: i - 1]:
            raise _bad(source, f"{key}[{i}]", "unique (it repeats an earlier format)", item)
    return tuple(value)


def _strings(source: str, key: str, value: Any, settings: Settings) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _bad(source, key, "a list of strings", value)
    for i, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise _bad(source, f"{key}[{i}]", "a string", item)
    return tuple(value)


_RANGES: Mapping[str, Checker] = {
    "guidance": _number(0, 30),
    "strength": _number(0, 1),
    "steps": _number(1, 150),
    "lora_scale": _number(0, 2),
}
_RANGE_TEXT = {"guidance": "0..30", "strength": "0..1", "steps": "1..150", "lora_scale": "0..2"}


def _vary(source: str, key: str, value: Any, settings: Settings) -> dict[str, tuple[float, float]]:
    if not isinstance(value, dict):
        raise _bad(source, key, "a table of [low, high] ranges", value)
    result: dict[str, tuple[float, float]] = {}
    for name, pair in value.items():
        where = f"{key}.{name}"
        if name not in _RANGES:
            hint = _suggest(name, tuple(_RANGES))
            raise InputError(source, f"{where}: unknown key{hint}", key=where, value=pair)
        rule = f"a list [low, high] of two numbers in {_RANGE_TEXT[name]}"
        if not isinstance(pair, list) or len(pair) != 2:
            raise _bad(source, where, rule, pair)
        try:
            low, high = (_RANGES[name](source, where, item, settings) for item in pair)
        except InputError:
            raise _bad(source, where, rule, pair) from None
        # A descending [high, low] is a deliberate reverse sweep, so order is not checked.
        result[name] = (low, high)
    return result


def _paths(source: str, key: str, value: Any, settings: Settings) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 100:
        raise _bad(source, key, "a list of 1..100 tables {id, start, end}", value)
    result: list[dict[str, str]] = []
    ids: set[str] = set()
    for i, table in enumerate(value, 1):
        where = f"{key}[{i}]"
        if not isinstance(table, dict):
            raise _bad(source, where, "a table {id, start, end}", table)
        for name in table:
            if name not in ("id", "start", "end"):
                hint = _suggest(name, ("id", "start", "end"))
                raise InputError(source, f"{where}.{name}: unknown key{hint}", key=where)
        for name in ("id", "start", "end"):
            if name not in table:
                raise InputError(source, f"{where}.{name} is required", key=f"{where}.{name}")
        path_id = table["id"]
        if not isinstance(path_id, str) or not _NAME.fullmatch(path_id):
            raise _bad(source, f"{where}.id", NAME_RULE, path_id)
        if path_id in ids:
            raise _bad(source, f"{where}.id", "unique (it repeats an earlier id)", path_id)
        ids.add(path_id)
        start = _expression(source, f"{where}.start", table["start"], settings)
        end = _expression(source, f"{where}.end", table["end"], settings)
        result.append({"id": path_id, "start": start, "end": end})
    return tuple(result)


_CHECKS: Mapping[str, Checker] = {
    "task": _task,
    "preset": _preset,
    "prompt": _text,
    "negative_prompt": _text,
    "prompts": _prompts,
    "count": _integer(1, 20),
    "seed": _integer(0, MAX_SEED),
    "seeds": _seeds,
    "steps": _integer(1, 150),
    "guidance": _number(0, 30),
    "strength": _number(0, 1),
    "width": _size,
    "height": _size,
    "vary": _vary,
    "mask": _relative_path,
    "model": _model,
    "lora": _lora,
    "lora_scale": _number(0, 2),
    "mesh_resolution": _integer(64, 512),
    "formats": _formats,
    "texture": _flag,
    "depth": _integer(1, 6),
    "paths": _paths,
    "pose": _expression,
    "start": _relative_path,
    "end": _relative_path,
    "endpoints": _relative_path,
    "exclude_sections": _strings,
    "prompt_template": _template,
    "force": _flag,
}


def validate_layer(data: Mapping[str, Any], source: str, settings: Settings) -> dict[str, Any]:
    """Check one layer and return its normalised values (floats, tuples); raise InputError."""
    result: dict[str, Any] = {}
    for key, value in data.items():
        check = _CHECKS.get(key)
        if check is None:
            raise InputError(source, f"{key}: unknown key{_suggest(key, PARAM_KEYS)}", key=key)
        result[key] = check(source, key, value, settings)
    if "seeds" in result:
        seeds = result["seeds"]
        if "seed" in result:
            raise InputError(
                source,
                f"seed and seeds cannot both be set, got seed = {result['seed']}",
                key="seed",
                rule="not together with seeds",
                value=result["seed"],
            )
        if "count" in result and result["count"] != len(seeds):
            rule = f"the number of seeds ({len(seeds)})"
            raise InputError(
                source,
                f"count must equal {rule}, got {show_value(result['count'])}",
                key="count",
                rule=rule,
                value=result["count"],
            )
    return result


def read_sidecar(path: Path, display: str, max_bytes: int) -> dict[str, Any]:
    """Read a sidecar TOML file, bounded to ``max_bytes``; raise InputError naming ``display``."""
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(display, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        # The file may still be growing; report the larger of the two sizes seen.
        size = max(size, len(raw))
        raise InputError(display, f"file is {size} bytes, the limit is {max_bytes}")
    try:
        # utf-8-sig: Windows editors like to prepend a BOM, which tomllib rejects.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            display, f"not valid TOML: not UTF-8 text (bad byte at position {exc.start})"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(display, f"not valid TOML: {exc}") from None


def _apply(result: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Merge one validated layer into ``result``, later wins."""
    for key, value in layer.items():
        if key == "vary":
            result["vary"] = {**result["vary"], **value}
        else:
            result[key] = value
    if "seeds" in layer:
        result["count"] = len(layer["seeds"])
        result["seed"] = None
    elif "seed" in layer or "count" in layer:
        # A later seed or count describes the batch anew; inherited explicit seeds would
        # silently override it.
        result["seeds"] = None


def _config_layer(data: Mapping[str, Any], source: str, settings: Settings) -> dict[str, Any]:
    try:
        return validate_layer(data, source, settings)
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def effective_params(
    settings: Settings, layers: Sequence[tuple[str, Mapping[str, Any]]]
) -> dict[str, Any]:
    """Validate and merge: [defaults] → preset → each layer (outermost first); every key set."""
    name = settings.config_path.name
    defaults = _config_layer(settings.defaults, f"{name} [defaults]", settings)
    checked = [validate_layer(raw, display, settings) for display, raw in layers]
    preset = "standard"
    for layer in [defaults, *checked]:
        preset = layer.get("preset", preset)
    preset_raw = settings.presets.get(preset, {})
    preset_layer = _config_layer(preset_raw, f"{name} [presets.{preset}]", settings)

    result: dict[str, Any] = dict(FALLBACKS)
    result["vary"] = {}
    for layer in [defaults, preset_layer, *checked]:
        _apply(result, layer)
    result["preset"] = preset
    return result


def check_settings(settings: Settings) -> None:
    """Validate config.toml's [defaults] and every preset; raise ConfigError."""
    name = settings.config_path.name
    _config_layer(settings.defaults, f"{name} [defaults]", settings)
    for preset, table in settings.presets.items():
        source = f"{name} [presets.{preset}]"
        if "preset" in table:
            raise ConfigError(
                f"{source}: preset cannot be set inside a preset, got {show_value(table['preset'])}"
            )
        _config_layer(table, source, settings)
