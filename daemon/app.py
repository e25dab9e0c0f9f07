"""The composition root: validated settings, the generator factory and the journal.

The command line and the Windows service both build dropforge from here, so neither imports
the other; nothing below this module chooses a generator backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from daemon.config import Settings, load_config
from daemon.errors import ConfigError
from daemon.generators import Generator
from daemon.planning.params import check_settings
from daemon.store.open import open_journal

__all__ = ["generator_factory", "load_settings", "open_journal"]


def load_settings(path: Path | str | None = None) -> Settings:
    """Read config.toml (``-c``, ``$DROPFORGE_CONFIG`` or ./config.toml) and validate its
    ``[defaults]`` and presets as job parameters; raise ConfigError naming the key."""
    settings = load_config(path)
    check_settings(settings)
    return settings


def generator_factory(settings: Settings) -> Callable[[], Generator]:
    """Make the generator backend on first call: the diffusers one (torch is imported only
    then), or the ``package.module:factory`` that ``[daemon] generator`` names, called with
    the settings. A named factory is imported here, so that a wrong name is a ConfigError at
    start-up rather than a failed job."""
    if settings.generator != "diffusers":
        module_name, _, attribute = settings.generator.partition(":")
        where = f"{settings.config_path.name} [daemon]: generator {settings.generator}"
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import {module_name} ({exc})") from None
        except AttributeError:
            raise ConfigError(f"{where}: {module_name} has no {attribute}") from None
        if not callable(factory):
            raise ConfigError(f"{where}: {attribute} is not callable")
        return lambda: factory(settings)

    def make() -> Generator:
        from daemon.generators.diffusers_backend import DiffusersGenerator

        return DiffusersGenerator(
            settings.device,
            cpu_offload=settings.cpu_offload,
            vae_slicing=settings.vae_slicing,
            vae_tiling=settings.vae_tiling,
            attention_slicing=settings.attention_slicing,
        )

    return make
