"""Several dropforge daemons on one PostgreSQL: a simulated cluster for tests and the soak.

Each simulated host has its own folder (config, state folder on "local disk") and its own
view of one shared folder: a ``bindfs`` (FUSE) mount where FUSE works, so that file events
made through one view are not seen through another, as on NFS or SMB (the hosts poll, as
the README tells users of network shares); plain paths elsewhere. Daemons are
``tests.cluster.daemon_main`` processes: the real service on the fast fake generator.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from daemon.outputs.files import TEMP_MARKER, sha256_file

ROOT = Path(__file__).resolve().parents[2]


def fuse_problem() -> str | None:
    """Why bindfs views cannot be used here, or None when they can."""
    if shutil.which("bindfs") is None:
        return "bindfs is not installed (Debian: apt-get install bindfs; .ci/run installs it)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: FUSE does not work in this sandbox"
    return None


@dataclass
class Host:
    """One simulated host: its folder, its view of the share, its daemon process."""

    name: str
    root: Path
    view: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def log(self) -> Path:
        return self.root / "state" / "logs" / "d.log"

    def start(self, step_seconds: float) -> None:
        """Start this host's daemon."""
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.cluster.daemon_main",
                str(self.config),
                str(step_seconds),
            ],
            cwd=self.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / f"stderr-{self.starts}.txt", "wb"),  # noqa: SIM115
        )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the daemon."""
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """kill -9, and reap the process."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after 30 s); the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(30)

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line this host's daemons wrote."""
        found = []
        for path in sorted(self.log.parent.glob("d.log*")):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("{"):
                    found.append(json.loads(line))
        return found


@dataclass
class Cluster:
    """A shared folder, a database, and hosts with their own views and state."""

    root: Path
    url: str
    host_timeout: float = 3.0
    heartbeat: float = 0.5
    step_seconds: float = 0.1
    rescan_interval: float = 3.0
    hosts: list[Host] = field(default_factory=list)
    views: bool = False

    @property
    def share(self) -> Path:
        return self.root / "share"

    def build(
        self, names: list[str], *, steps: int = 4, count: int = 2, bindfs: bool = True
    ) -> None:
        """Make the share, each host's folder, view (bindfs where FUSE works, unless not
        wanted: a benchmark of the store) and config."""
        (self.share / "inbox").mkdir(parents=True)
        (self.share / "outbox").mkdir()
        self.views = bindfs and fuse_problem() is None
        for name in names:
            root = self.root / "hosts" / name
            view = root / "view"
            root.mkdir(parents=True)
            if self.views:
                view.mkdir()
                subprocess.run(["bindfs", str(self.share), str(view)], check=True, timeout=30)
            else:
                view.symlink_to(self.share)
            host = Host(name, root, view)
            host.config.write_text(self.config_text(name, steps, count), encoding="utf-8")
            self.hosts.append(host)

    def config_text(self, name: str, steps: int, count: int) -> str:
        return textwrap.dedent(
            f"""\
            [daemon]
            state_dir = "state"
            device = "cpu"
            min_free_mb = 0
            settle_seconds = 0.2
            rescan_interval = {self.rescan_interval}
            stop_timeout = 10

            [cluster]
            database = "{self.url}"
            host_name = "{name}"
            heartbeat_seconds = {self.heartbeat}
            host_timeout = {self.host_timeout}
            poll_seconds = 1

            [[inbox]]
            name = "share"
            path = "view/inbox"
            output = "view/outbox"
            poll = true

            [models]
            default = "org/model"

            [defaults]
            width = 64
            height = 64
            count = {count}

            [presets.standard]
            steps = {steps}
            """
        )

    def start(self) -> None:
        for host in self.hosts:
            host.start(self.step_seconds)

    def drop(self, first: int, n: int) -> list[str]:
        """Write prompt files p{first}..p{first+n-1} into the share (as a person would)."""
        names = []
        for i in range(first, first + n):
            name = f"p{i:03d}.txt"
            (self.share / "inbox" / name).write_text(f"prompt number {i}\n", encoding="utf-8")
            names.append(name)
        return names

    def rows(self) -> list[dict[str, Any]]:
        """Every job row, straight from the database."""
        with psycopg.connect(self.url, row_factory=psycopg.rows.dict_row) as conn:
            try:
                return conn.execute(
                    "SELECT id, input, state, lease_owner, claim FROM dropforge_jobs ORDER BY id"
                ).fetchall()
            except psycopg.errors.UndefinedTable:  # no daemon has created the schema yet
                return []

    def owner_host(self, owner: str | None) -> Host | None:
        """The host whose live daemon holds this lease."""
        for host in self.hosts:
            if owner and host.pid is not None and owner == f"{host.name}:{host.pid}":
                return host
        return None

    def wait(self, condition: Callable[[], object], timeout: float, what: str) -> float:
        """Poll ``condition`` every 20 ms; return the seconds it took (fail after timeout)."""
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > timeout:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.02)
        return time.monotonic() - start

    def status(self, host: Host) -> dict[str, Any]:
        """`dropforge status --json` on a host, through the real command line."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run(
            [sys.executable, "-m", "daemon", "status", "-c", str(host.config), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def close(self) -> None:
        """Stop every daemon and unmount every view."""
        for host in self.hosts:
            host.stop()
        if self.views:
            for host in self.hosts:
                subprocess.run(["fusermount", "-u", str(host.view)], check=False, timeout=30)


def verify_outputs(cluster: Cluster, inputs: list[str]) -> list[str]:
    """What the promise says about the outbox: problems found (empty when all is well).

    Every input has one done manifest whose outputs exist with their recorded sha256; no
    temporary is left; no image was written twice (logged writes of every host).
    """
    problems: list[str] = []
    outbox = cluster.share / "outbox"
    for name in inputs:
        folder = outbox / Path(name).stem
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: no readable manifest ({exc})")
            continue
        if manifest["status"] != "done":
            problems.append(f"{name}: manifest status {manifest['status']}")
        for out in manifest["outputs"]:
            path = folder / out["file"]
            if not path.is_file() or sha256_file(path) != out["sha256"]:
                problems.append(f"{name}: output {out['file']} missing or changed")
    temporaries = [str(p) for p in outbox.rglob("*") if TEMP_MARKER in p.name]
    problems += [f"temporary left: {t}" for t in temporaries]
    written = Counter(
        (e.get("input"), e["file"])
        for host in cluster.hosts
        for e in host.events()
        if e.get("event") == "output.written" and e.get("role") != "contact"
    )
    problems += [f"image written {n} times: {k}" for k, n in written.items() if n > 1]
    return problems
