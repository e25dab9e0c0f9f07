"""The PostgreSQL connections behind a cluster's job store: psycopg 3, imported only here and
only when ``[cluster] database`` (or ``$DROPFORGE_DATABASE``) names a database.

Threads of a process take a connection from a small pool for each statement or transaction
(so the intake thread never waits for the worker's round trips, nor the other way round); a
broken connection is dropped and a new one opened, so the store survives a server restart.

Times come from the database's clock: SQL says ``{now}`` and gets ``extract(epoch from
now())``; tests inject a clock instead, as they do for the embedded journal, and ``{now}``
becomes that clock's value.
"""

from __future__ import annotations

import queue
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
MAX_IDLE = 4  # connections a process keeps open between uses

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
        self._sql_cache: dict[str, str] = {}
        self._idle: queue.SimpleQueue[psycopg.Connection[dict[str, Any]]] = queue.SimpleQueue()
        self._closed = False
        first = connect(url)
        try:
            ensure_schema(first, redact(url))
        except BaseException:
            first.close()
            raise
        self._idle.put(first)
        self._offset = 0.0
        self._offset = self._measure_offset()

    # --- time -------------------------------------------------------------------------

    def _database_clock(self) -> float:
        """Now, by the database's clock (estimated locally between measurements)."""
        return time.time() + self._offset

    def _measure_offset(self) -> float:
        """How far the database's clock is ahead of this host's (refreshed at heartbeats)."""
        with self._connection() as conn:
            before = time.time()
            row = conn.execute(f"SELECT {DB_NOW} AS now").fetchone()
            after = time.time()
        assert row is not None
        return float(row["now"]) - (before + after) / 2

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

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A connection of the pool for one statement or transaction."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = connect(self.url)
        try:
            yield conn
        finally:
            if conn.closed or conn.broken or self._closed or self._idle.qsize() >= MAX_IDLE:
                conn.close()
            else:
                self._idle.put(conn)

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """One transaction."""
        with self._connection() as conn, conn.transaction():
            yield conn

    def _run(self, conn: Any, text: str, args: Mapping[str, Any] | None = None) -> Any:
        """Execute ``text`` (``{now}`` filled in) within a transaction of ``_tx``."""
        return conn.execute(self._sql(text), self._args(args))

    def _query(self, text: str, args: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return conn.execute(self._sql(text), self._args(args)).fetchall()

    def _exec(self, text: str, args: Mapping[str, Any] | None = None) -> int:
        with self._connection() as conn:
            return conn.execute(self._sql(text), self._args(args)).rowcount

    def close(self) -> None:
        """Close the idle connections (those in use close when released); the store cannot
        be used afterwards."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def __enter__(self: _Base) -> _Base:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
