"""The parts of config.toml that make hosts and devices work together: ``[cluster]`` (the
shared job store, see docs/cluster.md), inbox names, ``devices``, and database URLs as
messages show them (without the password)."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from daemon.config_ui import Table, is_cuda_index
from daemon.errors import ConfigError, show_value

DATABASE_ENV = "DROPFORGE_DATABASE"
DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: the shared job store of several hosts (see docs/cluster.md)."""

    database: str  # postgresql://… (or $DROPFORGE_DATABASE)
    host_name: str  # this host in leases and `dropforge status`
    heartbeat_seconds: float = 5.0
    host_timeout: float = 30.0  # a host silent this long is dead: its jobs are reclaimed
    poll_seconds: float = 5.0  # idle hosts look for work this often (lost notifications)


def redact_url(url: str) -> str:
    """A database URL without its password, for messages, logs and ``dropforge status``."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.partition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


def devices_of(d: Table) -> tuple[str, ...]:
    """``devices = ["cuda:0", "cuda:1"]``: one worker process per device."""
    rule = f"a list of devices ({DEVICES_HELP})"
    value = d.get("devices", list, [], rule)
    for item in value:
        ok = isinstance(item, str) and (item in ("cpu", "cuda", "mps") or is_cuda_index(item))
        if not ok:
            raise ConfigError(f"{d.where}: devices must be {rule}, got {show_value(value)}")
    return tuple(value)


def inbox_name(t: Table) -> str:
    """An inbox's ``name``: letters, digits, ``.``, ``_``, ``-`` ("" when not given)."""
    value = str(t.get("name", str, "", "a name of letters, digits, '.', '_' or '-'"))
    if "name" in t.data and not _NAME_RE.match(value):
        raise ConfigError(
            f"{t.where}: name must be 1..64 letters, digits, '.', '_' or '-', "
            f"got {show_value(value)}"
        )
    return value


def cluster_settings(name: str, data: Any) -> ClusterConfig | None:
    """``[cluster]`` (and ``$DROPFORGE_DATABASE``): None when no database is named."""
    t = Table(f"{name} [cluster]", data)
    database = str(t.get("database", str, "", "a postgresql:// URL"))
    host = str(t.get("host_name", str, "", "a host name"))
    heartbeat = t.number("heartbeat_seconds", 5.0, 0.1, 60.0)
    timeout = t.number("host_timeout", 30.0, 1.0, 3600.0)
    poll = t.number("poll_seconds", 5.0, 0.1, 60.0)
    t.finish()
    database = os.environ.get(DATABASE_ENV) or database
    if not database:
        return None
    if not database.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"{t.where}: database must be a postgresql:// URL, got {show_value(database)}"
        )
    if timeout < 2 * heartbeat:
        raise ConfigError(
            f"{t.where}: host_timeout must be at least twice heartbeat_seconds "
            f"({2 * heartbeat:g}), got {show_value(timeout)}"
        )
    host = host or socket.gethostname()
    if not _NAME_RE.match(host):
        raise ConfigError(
            f"{t.where}: host_name must be 1..64 letters, digits, '.', '_' or '-', "
            f"got {show_value(host)}"
        )
    return ClusterConfig(database, host, heartbeat, timeout, poll)
