"""A PostgreSQL server for the test session: Debian's ``postgresql`` binaries, started with
``initdb`` + ``pg_ctl`` on a temporary folder with a Unix socket there (as the ``postgres``
user when the tests run as root: the server refuses root). One server per session; tests
get a clean database through ``pg_url`` (every dropforge table emptied after each test).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MISSING = "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)"
DATABASE = "dropforge_test"


def find_bindir() -> Path | None:
    """The folder of Debian's (or any) PostgreSQL server binaries, newest first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass(frozen=True)
class PgServer:
    """A running test server: its socket folder and the URL of the test database."""

    bindir: Path
    root: Path
    socket_dir: Path

    def url(self, database: str = DATABASE) -> str:
        """A libpq URL reaching ``database`` through the Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the server's user."""
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def start_server() -> PgServer | str:
    """Start a server; return it, or the reason it cannot run here."""
    bindir = find_bindir()
    if bindir is None:
        return MISSING
    root = Path(tempfile.mkdtemp(prefix="dropforge-pg-"))
    server = PgServer(bindir, root, root / "sock")
    server.socket_dir.mkdir()
    if os.geteuid() == 0:
        for path in (root, server.socket_dir):
            shutil.chown(path, "postgres", "postgres")
    try:
        server.run("initdb", "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "-N")
        options = f"-k {server.socket_dir} -h '' -F -c max_connections=200"
        server.run(
            "pg_ctl",
            "-D",
            str(root / "data"),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        )
        server.run("createdb", "-h", str(server.socket_dir), "-U", "postgres", DATABASE)
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"PostgreSQL could not start here: {detail.strip()[:300]}"
    return server


def stop_server(server: PgServer) -> None:
    """Stop the server at once and remove its folder."""
    try:
        server.run("pg_ctl", "-D", str(server.root / "data"), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(server.root, ignore_errors=True)


def clear_tables(url: str) -> None:
    """Empty every dropforge table and restart its sequences (schema kept)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename LIKE 'dropforge%%' AND tablename <> 'dropforge_schema'"
            )
        ]
        if names:
            conn.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY")
        for (seq,) in conn.execute(
            "SELECT sequencename FROM pg_sequences WHERE sequencename LIKE 'dropforge%%'"
        ).fetchall():
            conn.execute(f"ALTER SEQUENCE {seq} RESTART")


def server_fixture() -> Iterator[PgServer]:
    """The body of the session fixture ``pg_server``: skip with the reason when unavailable."""
    started = start_server()
    if isinstance(started, str):
        pytest.skip(started)
    try:
        yield started
    finally:
        stop_server(started)


def url_fixture(server: PgServer) -> Iterator[str]:
    """The body of the ``pg_url`` fixture: the test database, emptied after the test."""
    url = server.url()
    try:
        yield url
    finally:
        clear_tables(url)
