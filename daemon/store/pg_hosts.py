"""The hosts of a cluster: heartbeat rows, the settings they share, and wake-ups.

Every worker process registers a row (``join``) and beats it every few seconds; a row silent
for ``host_timeout`` seconds is a dead host, whose jobs any host reclaims. The first host
to join a cluster with no live host registers the settings that shape jobs; a host whose
settings differ from them is refused, naming the keys. ``listen`` blocks on
``LISTEN/NOTIFY`` and calls back whenever a job became runnable somewhere.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import structlog

from daemon.config import redact_url as redact
from daemon.errors import ConfigError
from daemon.store.pg_base import PostgresDatabase, connect
from daemon.store.pg_schema import CHANNEL, HOSTS, SETTINGS
from daemon.store.rows import Host

log = structlog.get_logger("dropforge.cluster")

LOCK_JOIN = 0x64660003
RECONNECT_S = 2.0


class SettingsMismatch(ConfigError):
    """This host's settings differ from those the cluster's hosts run with."""

    def __init__(self, keys: list[str], host: str) -> None:
        self.keys = keys
        shown = ", ".join(keys[:12]) + (f" and {len(keys) - 12} more" if len(keys) > 12 else "")
        super().__init__(
            f"settings differ from the cluster's (registered by host {host}): {shown}; make "
            "config.toml the same on every host, or stop every host to change them"
        )


class PostgresHosts(PostgresDatabase):
    """The hosts and settings tables, and the notification channel."""

    def join(
        self,
        owner: str,
        *,
        host: str,
        pid: int,
        device: str,
        version: str,
        settings: Mapping[str, str],
    ) -> None:
        """Register this worker process; raise SettingsMismatch when its settings differ
        from those of the cluster's live hosts (with none alive, they become the cluster's)."""
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_JOIN,))
            live = self._run(
                db,
                f"SELECT owner FROM {HOSTS} WHERE beat_at >= {{now}} - %(timeout)s"
                " AND owner <> %(owner)s",
                {"timeout": self.host_timeout, "owner": owner},
            ).fetchall()
            registered = {
                r["key"]: (r["value"], r["host"])
                for r in db.execute(f"SELECT key, value, host FROM {SETTINGS}").fetchall()
            }
            if live and registered:
                differ = sorted(
                    k
                    for k in set(registered) | set(settings)
                    if registered.get(k, ("", ""))[0] != settings.get(k)
                )
                if differ:
                    by = next(iter(registered.values()))[1]
                    raise SettingsMismatch(differ, by)
            else:
                db.execute(f"DELETE FROM {SETTINGS}")
                with db.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {SETTINGS} (key, value, host) VALUES (%s, %s, %s)",
                        [(k, v, host) for k, v in sorted(settings.items())],
                    )
            self._run(
                db,
                f"INSERT INTO {HOSTS} (owner, host, pid, device, version, settings, started_at,"
                " beat_at) VALUES (%(owner)s, %(host)s, %(pid)s, %(device)s, %(version)s,"
                " %(settings)s, {now}, {now}) ON CONFLICT (owner) DO UPDATE SET"
                " host = EXCLUDED.host, pid = EXCLUDED.pid, device = EXCLUDED.device,"
                " version = EXCLUDED.version, settings = EXCLUDED.settings,"
                " started_at = EXCLUDED.started_at, beat_at = EXCLUDED.beat_at",
                {
                    "owner": owner,
                    "host": host,
                    "pid": pid,
                    "device": device,
                    "version": version,
                    "settings": json.dumps(dict(settings), sort_keys=True),
                },
            )

    def beat(self, owner: str, *, device: str, job_id: int | None, job_input: str | None) -> bool:
        """This worker process is alive (and runs ``job_id``); False when its row is gone
        (it was taken for dead and must join again)."""
        self._offset = self._measure_offset()
        return (
            self._exec(
                f"UPDATE {HOSTS} SET beat_at = {{now}}, device = %(device)s, job_id = %(job)s,"
                " job_input = %(input)s WHERE owner = %(owner)s",
                {"owner": owner, "device": device, "job": job_id, "input": job_input},
            )
            > 0
        )

    def leave(self, owner: str) -> None:
        """This worker process stops: its row goes."""
        self._exec(f"DELETE FROM {HOSTS} WHERE owner = %(owner)s", {"owner": owner})

    def hosts(self, *, live_only: bool = True) -> list[Host]:
        """The cluster's worker processes (live ones: beaten within ``host_timeout``)."""
        where = "WHERE beat_at >= {now} - %(timeout)s" if live_only else ""
        rows = self._query(
            f"SELECT owner, host, pid, device, version, started_at, beat_at, job_id, job_input"
            f" FROM {HOSTS} {where} ORDER BY host, owner",
            {"timeout": self.host_timeout},
        )
        return [Host(**r) for r in rows]

    def forget_hosts(self, older_than: float) -> int:
        """Delete host rows silent for ``older_than`` seconds (long dead); return how many."""
        return self._exec(
            f"DELETE FROM {HOSTS} WHERE beat_at < {{now}} - %(age)s", {"age": older_than}
        )

    def listen(self, on_wake: Callable[[], None], stop: threading.Event) -> None:
        """Call ``on_wake`` for every notification that a job became runnable, until ``stop``
        is set; a lost connection is opened again (polling covers the gap)."""
        while not stop.is_set():
            try:
                with connect(self.url) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            on_wake()
            except (psycopg.Error, ConfigError) as exc:
                log.warning("cluster.listen_failed", database=redact(self.url), error=str(exc))
                stop.wait(RECONNECT_S)


def settings_rows(rows: Mapping[str, Any]) -> dict[str, str]:
    """Settings as the cluster compares them: key → canonical JSON of its value."""
    return {k: json.dumps(v, sort_keys=True, separators=(",", ":")) for k, v in rows.items()}
