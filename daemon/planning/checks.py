"""The rule of every job parameter: one checker per key, each raising an InputError that names the
file, the key, the rule and the value (``cat.toml: count must be 1..20, got 50``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from daemon.errors import InputError, did_you_mean, show_value
from daemon.generators.samplers import SAMPLER_NAMES, closest_sampler, find_sampler
from daemon.values import TASK_NAMES

if TYPE_CHECKING:
    from daemon.config import Settings


MAX_SEED = 4_294_967_295


MAX_TEXT = 4000


FORMATS = ("glb", "ply", "obj")


PATH_RULE = "a relative path inside the inbox"


NAME_RULE = 'a name made of letters, digits, "_", "-" and "."'


EXPRESSION_RULE = "a non-empty name without slashes"


_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


_DRIVE = re.compile(r"[A-Za-z]:")


Checker = Callable[[str, str, Any, "Settings"], Any]


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
    if not isinstance(value, str) or value not in TASK_NAMES:
        raise _bad(source, key, "one of " + ", ".join(TASK_NAMES), value)
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


TEMPLATE_PLACEHOLDERS = ("{text}", "{subject}", "{setting}", "{time}", "{mood}", "{action}")


def _template(source: str, key: str, value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or not any(p in value for p in TEMPLATE_PLACEHOLDERS):
        rule = "a string containing " + ", ".join(TEMPLATE_PLACEHOLDERS[:-1])
        raise _bad(source, key, f"{rule} or {TEMPLATE_PLACEHOLDERS[-1]}", value)
    return _text(source, key, value, settings)


def _name_style(source: str, key: str, value: Any, settings: Settings) -> str:
    if value not in ("plain", "descriptive"):
        raise _bad(source, key, "plain or descriptive", value)
    return str(value)


def _scene_numbers(source: str, key: str, value: Any, settings: Settings) -> tuple[int, ...]:
    rule = "a list of 1..1000 unique scene numbers (1 is the first scene)"
    if not isinstance(value, list) or not 1 <= len(value) <= 1000:
        raise _bad(source, key, rule, value)
    check = _integer(1, 100_000)
    for i, item in enumerate(value, 1):
        check(source, f"{key}[{i}]", item, settings)
        if item in value[: i - 1]:
            raise _bad(source, f"{key}[{i}]", "unique (it repeats an earlier scene)", item)
    return tuple(value)


def _prompts(source: str, key: str, value: Any, settings: Settings) -> tuple[str, ...]:
    # [] clears prompts inherited from a _defaults.toml (regenerate writes it).
    if not isinstance(value, list) or len(value) > 20:
        raise _bad(source, key, "a list of 0..20 non-empty strings", value)
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


def _seed(source: str, key: str, value: Any, settings: Settings) -> int | str:
    if value == "random":
        return "random"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(source, key, f'an integer in 0..{MAX_SEED} or "random"', value)
    seed: int = _integer(0, MAX_SEED)(source, key, value, settings)
    return seed


def _seed_range(source: str, key: str, value: Any, settings: Settings) -> tuple[int, int]:
    rule = f"[low, high]: two integers in 0..{MAX_SEED}, low ≤ high"
    if not isinstance(value, list) or len(value) != 2:
        raise _bad(source, key, rule, value)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= MAX_SEED:
            raise _bad(source, key, rule, value)
    if value[0] > value[1]:
        raise _bad(source, key, rule, value)
    return value[0], value[1]


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


def _sampler(source: str, key: str, value: Any, settings: Settings) -> str:
    # "" keeps the model's own scheduler; names are matched ignoring case and spacing.
    if isinstance(value, str) and not value:
        return value
    found = find_sampler(value) if isinstance(value, str) else None
    if found is not None:
        return found.name
    close = closest_sampler(value) if isinstance(value, str) else None
    hint = f", did you mean {show_value(close)}?" if close else ""
    rule = "an A1111 sampler name: " + ", ".join(SAMPLER_NAMES)
    raise InputError(
        source,
        f'{key} must be {rule} (or "" for the model\'s own), got {show_value(value)}{hint}',
        key=key,
        rule=rule,
        value=value,
    )


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
            hint = did_you_mean(name, tuple(_RANGES))
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
                hint = did_you_mean(name, ("id", "start", "end"))
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


def _frame_size(source: str, key: str, value: Any, settings: Settings) -> str:
    rule = '"WIDTHxHEIGHT", each a multiple of 8 in 64..2048, e.g. "1024x1536"'
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", value) if isinstance(value, str) else None
    if match is None:
        raise _bad(source, key, rule, value)
    width, height = int(match.group(1)), int(match.group(2))
    if not all(64 <= n <= 2048 and n % 8 == 0 for n in (width, height)):
        raise _bad(source, key, rule, value)
    return f"{width}x{height}"


def _expressions(
    source: str, key: str, value: Any, settings: Settings
) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 100:
        raise _bad(source, key, "a list of 1..100 tables {id, prompt}", value)
    result: list[dict[str, str]] = []
    for i, table in enumerate(value, 1):
        where = f"{key}[{i}]"
        if not isinstance(table, dict):
            raise _bad(source, where, "a table {id, prompt}", table)
        for name in table:
            if name not in ("id", "prompt"):
                hint = did_you_mean(name, ("id", "prompt"))
                raise InputError(source, f"{where}.{name}: unknown key{hint}", key=where)
        for name in ("id", "prompt"):
            if name not in table:
                raise InputError(source, f"{where}.{name} is required", key=f"{where}.{name}")
        expr = _expression(source, f"{where}.id", table["id"], settings)
        if any(e["id"] == expr for e in result):
            raise _bad(source, f"{where}.id", "unique (it repeats an earlier id)", expr)
        prompt = _text(source, f"{where}.prompt", table["prompt"], settings)
        result.append({"id": expr, "prompt": prompt})
    return tuple(result)


CHECKS: Mapping[str, Checker] = {
    "task": _task,
    "preset": _preset,
    "prompt": _text,
    "negative_prompt": _text,
    "prompts": _prompts,
    "count": _integer(1, 20),
    "seed": _seed,
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
    "seed_range": _seed_range,
    "sampler": _sampler,
    "name_style": _name_style,
    "scenes": _scene_numbers,
    "fps": _number(1, 60),
    "size": _frame_size,
    "base": _relative_path,
    "expressions": _expressions,
    "priority": _integer(-1000, 1000),
}
