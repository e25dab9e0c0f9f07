"""The PostgreSQL connection behind a cluster's job store: psycopg 3, imported only here and
only when ``[cluster] database`` (or ``$DROPFORGE_DATABASE``) names a database.

One connection serves every thread of a process (a lock keeps transactions whole) and is
opened again after the server went away. Times come from the database's clock: SQL says
``{now}`` and gets ``extract(epoch from now())``; tests inject a clock instead, as they do
for the embedded journal, and ``{now}`` becomes that clock's value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from daemon.config import redact_url as redact
from daemon.errors import ConfigError
from daemon.store.pg_schema import ensure_schema
from daemon.store.portable import PortablePaths
from daemon.values import Clock

DB_NOW = "extract(epoch from now())::float8"
CONNECT_TIMEOUT_S = 10

_Base = TypeVar("_Base", bound="PostgresDatabase")


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    """An autocommit connection returning rows as dicts; ConfigError when it cannot be made."""
    try:
        return psycopg.connect(
            url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_S
        )
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot connect to the database {redact(url)}: {reason}") from None


class PostgresDatabase:
    """An open connection to the shared database, with its schema in place."""

    def __init__(
        self,
        url: str,
        paths: PortablePaths,
        *,
        clock: Clock | None = None,
        host_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.paths = paths
        self.host_timeout = host_timeout
        self._injected = clock
        self.clock: Clock = clock if clock is not None else self._database_clock
        self._lock = threading.RLock()
        self._sql_cache: dict[str, str] = {}
        self._db = connect(url)
        try:
            ensure_schema(self._db, redact(url))
            self._offset = self._measure_offset()
        except BaseException:
            self._db.close()
            raise

    # --- time -------------------------------------------------------------------------

    def _database_clock(self) -> float:
        """Now, by the database's clock (estimated locally between measurements)."""
        return time.time() + self._offset

    def _measure_offset(self) -> float:
        """How far the database's clock is ahead of this host's (refreshed at heartbeats)."""
        before = time.time()
        row = self._db.execute(f"SELECT {DB_NOW} AS now").fetchone()
        assert row is not None
        return float(row["now"]) - (before + time.time()) / 2

    def _sql(self, text: str) -> str:
        """``text`` with ``{now}`` as the database's clock (or the injected clock's value)."""
        cached = self._sql_cache.get(text)
        if cached is None:
            cached = text.replace("{now}", "%(now)s" if self._injected else DB_NOW)
            self._sql_cache[text] = cached
        return cached

    def _args(self, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out = dict(args or {})
        if self._injected is not None:
            out["now"] = self._injected()
        return out

    # --- connection ---------------------------------------------------------------------

    def _conn(self) -> psycopg.Connection[dict[str, Any]]:
        if self._db.closed or self._db.broken:
            self._db.close()
            self._db = connect(self.url)
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """One transaction on the shared connection."""
        with self._lock:
            conn = self._conn()
            with conn.transaction():
                yield conn

    def _run(self, conn: Any, text: str, args: Mapping[str, Any] | None = None) -> Any:
        """Execute ``text`` (``{now}`` filled in) within a transaction of ``_tx``."""
        return conn.execute(self._sql(text), self._args(args))

    def _query(self, text: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return self._conn().execute(self._sql(text), self._args(args)).fetchall()

    def _exec(self, text: str, args: Mapping[str, Any] | None = None) -> int:
        with self._lock:
            return self._conn().execute(self._sql(text), self._args(args)).rowcount

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._db.close()

    def __enter__(self: _Base) -> _Base:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
