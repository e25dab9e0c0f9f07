"""``[notify]`` and ``[ui]`` of config.toml (how dropforge reaches people: notifications and the
web UI), and ``Table``, the checked reader of one TOML table that every section uses."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from daemon.errors import ConfigError, did_you_mean, show_value

NOTIFY_EVENTS = ("job_done", "job_failed", "job_waiting", "job_canceled", "drop_done")
DEFAULT_NOTIFY_EVENTS = ("job_failed", "job_waiting", "drop_done")
UI_PORT = 8650  # the web UI's documented default port
MIN_TOKEN = 16


@dataclass(frozen=True)
class NotifySettings:
    """``[notify]``: Apprise URLs and the events sent to them."""

    urls: tuple[str, ...] = ()
    events: frozenset[str] = frozenset(DEFAULT_NOTIFY_EVENTS)


@dataclass(frozen=True)
class UiSettings:
    """``[ui]``: where the web UI listens and who may use it."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = UI_PORT  # 0: any free port (tests)
    token: str = ""
    hosts: tuple[str, ...] = ()  # further Host header names allowed (a LAN name)

    @property
    def loopback(self) -> bool:
        """Bound to this machine only."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Table:
    """Reads one TOML table, checking types and recording which keys were used."""

    def __init__(self, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table, got {show_value(data)}")
        self.where = where
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, rule: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.where}: {key} must be {rule}, got {show_value(value)}")
        if not isinstance(value, kinds):
            raise ConfigError(f"{self.where}: {key} must be {rule}, got {show_value(value)}")
        return value

    def number(self, key: str, default: float, lo: float, hi: float | None = None) -> float:
        rule = f"a number ≥ {lo:g}" if hi is None else f"a number in {lo:g}..{hi:g}"
        value = float(self.get(key, (int, float), default, rule))
        if value < lo or (hi is not None and value > hi):
            raise ConfigError(f"{self.where}: {key} must be {rule}, got {show_value(value)}")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        rule = f"an integer ≥ {lo}" if hi is None else f"an integer in {lo}..{hi}"
        value = int(self.get(key, int, default, rule))
        if value < lo or (hi is not None and value > hi):
            raise ConfigError(f"{self.where}: {key} must be {rule}, got {show_value(value)}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...], rule: str = "") -> str:
        rule = rule or "one of " + ", ".join(choices)
        value = str(self.get(key, str, default, rule))
        if value not in choices and not (key == "device" and is_cuda_index(value)):
            raise ConfigError(f"{self.where}: {key} must be {rule}, got {show_value(value)}")
        return value

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise ConfigError(
                    f"{self.where}: {key}: unknown key{did_you_mean(key, sorted(self.used))}"
                )


def is_cuda_index(value: str) -> bool:
    """``cuda:N``."""
    head, _, tail = value.partition(":")
    return head == "cuda" and tail.isdigit()


def _strings(t: Table, key: str, rule: str, check: Any) -> tuple[str, ...]:
    """A list of strings, each passing ``check``; the message names the item and the rule."""
    values = t.get(key, list, [], f"a list of {rule}")
    for i, value in enumerate(values, 1):
        if not isinstance(value, str) or not check(value):
            raise ConfigError(f"{t.where}: {key}[{i}] must be {rule}, got {show_value(value)}")
    return tuple(values)


def notify_settings(t: Table) -> NotifySettings:
    urls = _strings(t, "urls", 'Apprise URLs like "ntfy://ntfy.sh/topic"', lambda v: "://" in v)
    if "events" in t.data:
        rule = "one of " + ", ".join(NOTIFY_EVENTS)
        events = frozenset(_strings(t, "events", rule, lambda v: v in NOTIFY_EVENTS))
    else:
        t.used.add("events")
        events = frozenset(DEFAULT_NOTIFY_EVENTS)
    t.finish()
    return NotifySettings(urls, events)


def ui_settings(t: Table) -> UiSettings:
    enabled = t.get("enabled", bool, True, "true or false")
    listen = t.get("listen", str, f"127.0.0.1:{UI_PORT}", 'HOST:PORT, e.g. "127.0.0.1:8650"')
    host, port = _host_port(t.where, listen)
    token = t.get("token", str, "", "a string")
    hosts = _strings(t, "hosts", "host names", lambda v: bool(v) and ":" not in v)
    t.finish()
    if token and len(token) < MIN_TOKEN:
        raise ConfigError(f"{t.where}: token must be at least {MIN_TOKEN} characters")
    if enabled and not is_loopback(host) and not token:
        raise ConfigError(
            f"{t.where}: listen = {show_value(listen)} serves beyond this machine: set token "
            f"(a random string of at least {MIN_TOKEN} characters) or listen on 127.0.0.1"
        )
    return UiSettings(enabled, host, port, token, hosts)


def _host_port(where: str, listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f'{where}: listen must be HOST:PORT (e.g. "127.0.0.1:{UI_PORT}", port 0..65535), '
            f"got {show_value(listen)}"
        )
    return host, int(port)
