"""Presets + sidecar layering → validated, typed job parameters.

Every layer (``config.toml [defaults]``, a preset, each ``_defaults.toml``, the file's own
sidecar) is checked on its own, so an error names the file that holds the bad value.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from daemon.errors import ConfigError, InputError, did_you_mean, show_value
from daemon.planning.checks import CHECKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from daemon.config import Settings


# Built-in values for keys that no layer sets; every result carries every key.
FALLBACKS: Mapping[str, Any] = MappingProxyType({
    "task": "auto", "preset": "standard", "prompt": "", "negative_prompt": "", "prompts": None,
    "count": 1, "seed": None, "seeds": None, "steps": 30, "guidance": 7.5, "strength": 0.6,
    "width": 512, "height": 512, "vary": {}, "mask": None, "model": None, "lora": "",
    "lora_scale": 1.0, "mesh_resolution": 256, "formats": ("glb",), "texture": False,
    "depth": 2, "paths": None, "pose": None, "start": None, "end": None, "endpoints": None,
    "exclude_sections": (), "prompt_template": "{text}", "force": False,
    "sampler": "", "name_style": "plain", "scenes": None,
    "fps": 8.0, "size": None, "base": None, "expressions": None,
    "seed_range": None, "priority": 0,
})  # fmt: skip


# Keys added after the first release: recorded (and so part of job keys) only when set to
# something other than their fallback, so that adding them left existing job keys unchanged.
RECORDED_WHEN_SET: frozenset[str] = frozenset(
    {"sampler", "name_style", "scenes", "fps", "size", "base", "expressions", "seed_range"}
)


PARAM_KEYS: tuple[str, ...] = tuple(FALLBACKS)

# Keys that steer the queue, not what a job makes: never recorded in manifests or job keys.
QUEUE_KEYS = frozenset({"priority"})


@dataclass(frozen=True)
class Params:
    """A job's effective parameters: every layer merged and validated, every key set.

    The fields are the sidecar keys (see the README's parameter table), in that order.
    ``task`` may still be ``auto`` and ``seeds`` unresolved until a task's planner resolves them.
    """

    task: str
    preset: str
    prompt: str
    negative_prompt: str
    prompts: tuple[str, ...] | None
    count: int
    seed: int | str | None  # an integer, "random", or None (derived from the content)
    seeds: tuple[int, ...] | None
    steps: int
    guidance: float
    strength: float
    width: int
    height: int
    vary: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    mask: str | None = None
    model: str | None = None
    lora: str = ""
    lora_scale: float = 1.0
    mesh_resolution: int = 256
    formats: tuple[str, ...] = ("glb",)
    texture: bool = False
    depth: int = 2
    paths: tuple[Mapping[str, str], ...] | None = None
    pose: str | None = None
    start: str | None = None
    end: str | None = None
    endpoints: str | None = None
    exclude_sections: tuple[str, ...] = ()
    prompt_template: str = "{text}"
    force: bool = False
    sampler: str = ""  # an A1111 sampler name; "" keeps the model's own scheduler
    name_style: str = "plain"  # prompt files: "plain" (story-s02-7.png) or "descriptive"
    scenes: tuple[int, ...] | None = None  # prompt files: the scene numbers to make
    fps: float = 8.0  # tweens: frames per second of preview.gif (and players)
    size: str | None = None  # tweens: "WxH" of the frames; None keeps the endpoints' size
    base: str | None = None  # tweens: the image endpoints are generated from
    expressions: tuple[Mapping[str, str], ...] | None = None  # tweens: [{id, prompt}]
    seed_range: tuple[int, int] | None = None
    priority: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Params:
        """Build from ``effective_params``' table (which has every key)."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

    def replace(self, **changes: Any) -> Params:
        """A copy with some fields changed (seeds resolved, task chosen)."""
        return dataclasses.replace(self, **changes)

    def as_record(self, omit: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The table recorded in manifests and hashed into job keys, in key order (the queue's
        keys, like ``priority``, left out: they change when a job runs, not what it makes)."""
        record: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name not in omit and f.name not in QUEUE_KEYS:
                value = getattr(self, f.name)
                if f.name in RECORDED_WHEN_SET and value == FALLBACKS[f.name]:
                    continue
                if isinstance(value, tuple):
                    value = [dict(v) if isinstance(v, Mapping) else v for v in value]
                record[f.name] = dict(value) if f.name == "vary" else value
        return record


def validate_layer(data: Mapping[str, Any], source: str, settings: Settings) -> dict[str, Any]:
    """Check one layer and return its normalised values (floats, tuples); raise InputError."""
    result: dict[str, Any] = {}
    for key, value in data.items():
        check = CHECKS.get(key)
        if check is None:
            raise InputError(source, f"{key}: unknown key{did_you_mean(key, PARAM_KEYS)}", key=key)
        result[key] = check(source, key, value, settings)
    if "seed_range" in result:
        for other in ("seed", "seeds"):
            if other in result:
                raise InputError(
                    source,
                    f"seed_range and {other} cannot both be set, "
                    f"got {other} = {show_value(result[other])}",
                    key=other,
                    rule="not together with seed_range",
                    value=result[other],
                )
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
            # An empty table clears what outer layers varied; a table adds to it.
            result["vary"] = {**result["vary"], **value} if value else {}
        elif key == "prompts" and not value:
            result["prompts"] = None  # [] clears inherited prompts
        else:
            result[key] = value
    if "seeds" in layer:
        result["count"] = len(layer["seeds"])
        result["seed"] = None
        result["seed_range"] = None
    elif "seed_range" in layer:
        result["seed"] = result["seeds"] = None
    elif "seed" in layer or "count" in layer:
        # A later seed or count describes the batch anew; inherited explicit seeds would
        # silently override it.
        result["seeds"] = None
        if "seed" in layer:
            result["seed_range"] = None


def _config_layer(data: Mapping[str, Any], source: str, settings: Settings) -> dict[str, Any]:
    try:
        return validate_layer(data, source, settings)
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def effective_params(
    settings: Settings, layers: Sequence[tuple[str, Mapping[str, Any]]]
) -> dict[str, Any]:
    """Validate and merge: [defaults] → preset → each layer (outermost first); every key set.

    Returns the merged table; ``resolve_params`` gives the same as a typed ``Params``.
    """
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


def resolve_params(settings: Settings, layers: Sequence[tuple[str, Mapping[str, Any]]]) -> Params:
    """``effective_params`` as a typed, frozen ``Params``."""
    return Params.from_mapping(effective_params(settings, layers))


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
