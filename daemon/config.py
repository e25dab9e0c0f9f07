"""config.toml → frozen, validated settings."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from daemon.config_cluster import (
    DATABASE_ENV,
    DEVICES_HELP,
    ClusterConfig,
    cluster_settings,
    devices_of,
    inbox_name,
    redact_url,
)
from daemon.config_ui import (
    NotifySettings,
    Table,
    UiSettings,
    notify_settings,
    ui_settings,
)
from daemon.errors import ConfigError, did_you_mean, show_value
from daemon.values import TASK_NAMES, LoraSource, ModelSource

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DATABASE_ENV",
    "ClusterConfig",
    "InboxConfig",
    "Settings",
    "display_path",
    "load_config",
    "redact_url",
    "settings_from_mapping",
]


# Pillow's decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS, not imported here: config loads
# without Pillow). ``max_pixels`` may lower it, never raise it: the guard always stays on.
BOMB_GUARD_PIXELS = 89_478_485

DEFAULT_PRESETS: Mapping[str, Mapping[str, Any]] = {
    "draft": {"steps": 20, "mesh_resolution": 192},
    "standard": {"steps": 30, "mesh_resolution": 256},
    "high": {"steps": 50, "mesh_resolution": 384},
}


@dataclass(frozen=True)
class InboxConfig:
    """One watched folder and where its outputs go."""

    path: Path
    output: Path
    default_task: str = "auto"
    poll: bool = False
    recursive: bool = True
    after: str = "keep"
    name: str = ""  # the inbox's identity in a cluster (every host names it alike)


@dataclass(frozen=True)
class Settings:
    """The daemon's validated settings; paths are absolute."""

    config_path: Path
    inboxes: tuple[InboxConfig, ...]
    state_dir: Path
    device: str = "auto"
    devices: tuple[str, ...] = ()  # one worker process per device (several GPUs in one box)
    settle_seconds: float = 2.0
    rescan_interval: float = 300.0
    unload_after: float = 600.0
    stop_timeout: float = 30.0
    max_attempts: int = 3
    min_free_mb: int = 500
    active_hours: str = ""
    max_pixels: int = BOMB_GUARD_PIXELS
    max_sidecar_bytes: int = 65_536
    max_batch: int = 8
    log_format: str = "auto"
    cpu_offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False
    generator: str = "diffusers"  # or "package.module:factory", a backend of one's own
    models: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    loras: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    presets: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType(dict(DEFAULT_PRESETS))
    )
    cluster: ClusterConfig | None = None
    notify: NotifySettings = field(default_factory=NotifySettings)
    ui: UiSettings = field(default_factory=UiSettings)

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in config.toml resolve against."""
        return self.config_path.parent

    @property
    def journal_path(self) -> Path:
        """The SQLite journal inside ``state_dir``."""
        return self.state_dir / "journal.sqlite3"

    def model_source(self, alias: str) -> ModelSource:
        """Resolve a ``[models]`` alias to a hub id, a local folder or a .safetensors file."""
        if alias not in self.models:
            raise ConfigError(f"model alias {alias!r} is not defined in [models]")
        source = resolve_model_ref(alias, self.models[alias], self.base_dir)
        # In a cluster, hosts keep models at different paths: keys name the alias instead.
        return dataclasses.replace(source, portable=True) if self.cluster else source

    def lora_source(self, alias: str, scale: float) -> LoraSource:
        """Resolve a ``[loras]`` alias to an absolute .safetensors path."""
        if alias not in self.loras:
            raise ConfigError(f"LoRA alias {alias!r} is not defined in [loras]")
        path = str(self.base_dir / self.loras[alias])
        return LoraSource(alias=alias, path=path, scale=scale, portable=self.cluster is not None)


def resolve_model_ref(alias: str, value: str, base_dir: Path) -> ModelSource:
    """Decide whether a model reference is a local path or a hub id.

    A value that exists relative to the config folder, is absolute, starts with ``.`` or
    ``~``, or ends in ``.safetensors`` is a path; anything else (``org/name``) is a hub id.
    """
    expanded = os.path.expanduser(value)
    candidate = Path(expanded) if os.path.isabs(expanded) else base_dir / expanded
    looks_local = (
        candidate.exists()
        or os.path.isabs(expanded)
        or value.startswith((".", "~"))
        or value.lower().endswith(".safetensors")
    )
    if not looks_local:
        return ModelSource(alias=alias, kind="hub", ref=value)
    resolved = candidate.resolve()
    if value.lower().endswith(".safetensors"):
        return ModelSource(alias=alias, kind="file", ref=str(resolved))
    return ModelSource(alias=alias, kind="folder", ref=str(resolved))


def validate_active_hours(where: str, value: str) -> str:
    """Check ``HH:MM-HH:MM`` (or empty)."""
    if not value:
        return value
    parts = value.split("-")
    ok = len(parts) == 2 and all(_is_clock(p.strip()) for p in parts)
    if not ok:
        raise ConfigError(
            f"{where}: active_hours must be HH:MM-HH:MM (e.g. 22:00-06:00) or empty, "
            f"got {show_value(value)}"
        )
    return value


def _is_clock(text: str) -> bool:
    hh, sep, mm = text.partition(":")
    return (
        sep == ":"
        and hh.isdigit()
        and mm.isdigit()
        and 0 <= int(hh) <= 23
        and 0 <= int(mm) <= 59
        and len(mm) == 2
    )


def default_config_path() -> Path:
    """``$DROPFORGE_CONFIG`` if set, else ``./config.toml``."""
    return Path(os.environ.get("DROPFORGE_CONFIG") or "config.toml")


def load_config(path: Path | str | None = None) -> Settings:
    """Read and validate config.toml; raise ConfigError naming the key and the rule."""
    config_path = Path(path) if path is not None else default_config_path()
    config_path = config_path.expanduser().absolute()
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{config_path}: config file not found (pass -c PATH or set DROPFORGE_CONFIG)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config_path.name}: not valid TOML: {exc}") from None
    return settings_from_mapping(data, config_path)


GENERATOR_RULE = '"diffusers" or "package.module:factory"'
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def _generator_value(d: Table) -> str:
    value = str(d.get("generator", str, "diffusers", GENERATOR_RULE))
    if value != "diffusers" and not _FACTORY.fullmatch(value):
        raise ConfigError(f"{d.where}: generator must be {GENERATOR_RULE}, got {show_value(value)}")
    return value


def settings_from_mapping(data: Mapping[str, Any], config_path: Path) -> Settings:
    """Validate an already-parsed config mapping (used by tests and load_config)."""
    name = config_path.name
    base = config_path.parent
    known = ("daemon", "inbox", "models", "loras", "defaults", "presets", "notify", "ui", "cluster")
    for key in data:
        if key not in known:
            raise ConfigError(f"{name}: [{key}]: unknown table{did_you_mean(key, known)}")

    d = Table(f"{name} [daemon]", data.get("daemon", {}))
    state_dir = base / os.path.expanduser(str(d.get("state_dir", str, ".dropforge", "a path")))
    daemon_values: dict[str, Any] = {
        "device": d.choice("device", "auto", ("auto", "cpu", "cuda", "mps"), DEVICES_HELP),
        "devices": devices_of(d),
        "settle_seconds": d.number("settle_seconds", 2.0, 0.0),
        "rescan_interval": d.number("rescan_interval", 300.0, 1.0),
        "unload_after": d.number("unload_after", 600.0, 0.0),
        "stop_timeout": d.number("stop_timeout", 30.0, 1.0),
        "max_attempts": d.integer("max_attempts", 3, 1),
        "min_free_mb": d.integer("min_free_mb", 500, 0),
        "active_hours": validate_active_hours(
            f"{name} [daemon]", d.get("active_hours", str, "", "HH:MM-HH:MM")
        ),
        "max_pixels": d.integer("max_pixels", BOMB_GUARD_PIXELS, 4096, BOMB_GUARD_PIXELS),
        "max_sidecar_bytes": d.integer("max_sidecar_bytes", 65_536, 256),
        "max_batch": d.integer("max_batch", 8, 1, 64),
        "log_format": d.choice("log_format", "auto", ("auto", "console", "json")),
        "cpu_offload": d.get("cpu_offload", bool, False, "true or false"),
        "vae_slicing": d.get("vae_slicing", bool, False, "true or false"),
        "vae_tiling": d.get("vae_tiling", bool, False, "true or false"),
        "attention_slicing": d.get("attention_slicing", bool, False, "true or false"),
        "generator": _generator_value(d),
    }
    d.finish()

    inbox_tables = data.get("inbox", [])
    if isinstance(inbox_tables, dict):
        inbox_tables = [inbox_tables]
    if not isinstance(inbox_tables, list) or not inbox_tables:
        raise ConfigError(f"{name}: at least one [[inbox]] table is required")
    inboxes = []
    seen: set[Path] = set()
    for i, table in enumerate(inbox_tables, 1):
        t = Table(f"{name} [[inbox]] #{i}", table)
        path = base / os.path.expanduser(str(t.get("path", str, "", "a path")))
        if "path" not in t.data:
            raise ConfigError(f"{t.where}: path is required")
        output = base / os.path.expanduser(str(t.get("output", str, "", "a path")))
        if "output" not in t.data:
            raise ConfigError(f"{t.where}: output is required")
        inbox = InboxConfig(
            path=path.resolve(),
            output=output.resolve(),
            default_task=t.choice("default_task", "auto", ("auto", *TASK_NAMES)),
            poll=t.get("poll", bool, False, "true or false"),
            recursive=t.get("recursive", bool, True, "true or false"),
            after=t.choice("after", "keep", ("keep", "move")),
            name=inbox_name(t),
        )
        t.finish()
        _check_inbox_layout(t.where, inbox, state_dir.resolve())
        if inbox.path in seen:
            raise ConfigError(f"{t.where}: path {inbox.path} is already watched")
        seen.add(inbox.path)
        inboxes.append(inbox)
    cluster = cluster_settings(name, data.get("cluster", {}))
    inboxes = _named_inboxes(name, inboxes, cluster)

    models = _string_table(name, "models", data.get("models", {}))
    loras = _string_table(name, "loras", data.get("loras", {}))
    for alias, value in loras.items():
        if not value.lower().endswith(".safetensors"):
            raise ConfigError(
                f"{name} [loras]: {alias} must be a .safetensors file, got {show_value(value)}"
            )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{name}: [defaults] must be a table")
    presets_raw = data.get("presets", {})
    if not isinstance(presets_raw, dict):
        raise ConfigError(f"{name}: [presets] must hold tables like [presets.draft]")
    presets: dict[str, Mapping[str, Any]] = {k: dict(v) for k, v in DEFAULT_PRESETS.items()}
    for preset_name, table in presets_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: [presets.{preset_name}] must be a table")
        presets[preset_name] = {**presets.get(preset_name, {}), **table}

    return Settings(
        config_path=config_path,
        inboxes=tuple(inboxes),
        state_dir=state_dir.resolve(),
        models=MappingProxyType(models),
        loras=MappingProxyType(loras),
        defaults=MappingProxyType(dict(defaults)),
        presets=MappingProxyType({k: MappingProxyType(dict(v)) for k, v in presets.items()}),
        notify=notify_settings(Table(f"{name} [notify]", data.get("notify", {}))),
        ui=ui_settings(Table(f"{name} [ui]", data.get("ui", {}))),
        cluster=cluster,
        **daemon_values,
    )


def _named_inboxes(
    name: str, inboxes: list[InboxConfig], cluster: ClusterConfig | None
) -> list[InboxConfig]:
    """Inbox names identify jobs in a cluster: each must be given there, and unique. On one
    host an inbox without a name is called after its folder."""
    seen: set[str] = set()
    named = []
    for i, inbox in enumerate(inboxes, 1):
        where = f"{name} [[inbox]] #{i}"
        if not inbox.name:
            if cluster is not None:
                raise ConfigError(
                    f"{where}: name is required with [cluster] database (it identifies the "
                    "inbox on every host)"
                )
            named.append(dataclasses.replace(inbox, name=inbox.path.name))
            continue
        if inbox.name in seen:
            raise ConfigError(
                f"{where}: name {show_value(inbox.name)} is already used by another inbox"
            )
        seen.add(inbox.name)
        named.append(inbox)
    return named


def _string_table(name: str, table: str, data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        raise ConfigError(f'{name}: [{table}] must be a table of alias = "value"')
    for key, value in data.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{name} [{table}]: {key} must be a non-empty string, got {show_value(value)}"
            )
    return dict(data)


def _check_inbox_layout(where: str, inbox: InboxConfig, state_dir: Path) -> None:
    if inbox.output == inbox.path:
        raise ConfigError(f"{where}: output must differ from path, got {inbox.output}")
    if inbox.path.is_relative_to(inbox.output):
        raise ConfigError(f"{where}: path must not lie inside output ({inbox.output})")
    if state_dir.is_relative_to(inbox.path):
        raise ConfigError(
            f"{where}: state_dir {state_dir} must not lie inside the inbox "
            "(keep the journal on local disk, out of synced folders)"
        )


def display_path(path: str | Path, settings: Settings) -> str:
    """A path relative to the config folder when it lies below it."""
    try:
        return str(Path(path).relative_to(settings.base_dir))
    except ValueError:
        return str(path)
