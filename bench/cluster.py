"""Benchmarks of the cluster's job store on a local PostgreSQL (run by hand).

    python bench/cluster.py            # starts a throw-away server like the tests do

- claim latency p50 / p99: one claim + mark_done round trip per job, measured per claim;
- jobs per second of 1 and 4 daemons (`tests.cluster.daemon_main`: the real service on the
  fast fake generator, 1 step, 1 image, 64x64) over 400 prompt files;
- idle-host wake-up: a job queued by one host, claimed by an idle other (NOTIFY);
- the embedded SQLite journal's claim latency, for comparison.

The daemon runs also print the CPU seconds per job of the daemons and of the PostgreSQL
server (from /proc: on a shared machine a steadier figure than jobs per second). Progress
is watched through one connection and a count every 50 ms, so the bench's own polling costs
the server next to nothing.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.store.cluster import ClusterJournal
from daemon.store.portable import InboxPlace, PortablePaths
from daemon.store.sqlite import SqliteJournal
from tests.cluster.harness import Cluster
from tests.pg_server import clear_tables, start_server, stop_server


def claims(store: Any, n: int) -> list[float]:
    """Milliseconds per claim over ``n`` queued jobs."""
    for i in range(n):
        store.upsert_job(
            inbox="/s/inbox",
            input=f"{i:05}.png",
            kind="image",
            fingerprint="f",
            job_key="k",
            out_dir=f"/s/outbox/{i:05}",
        )
    times = []
    for _ in range(n):
        t = time.perf_counter()
        job = store.claim("bench:1", 600)
        times.append((time.perf_counter() - t) * 1000)
        store.mark_done(job.id, seconds=0.0, claim=job.claim)
    return times


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found += _tree(int(child))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system, with reaped children) of live processes ``pids``."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU seconds of a cluster's daemons and of the database server since it was made."""

    def __init__(self, cluster: Cluster, url: str) -> None:
        self.daemons = [h.pid for h in cluster.hosts if h.pid]
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        self.server = int((Path(str(row[0])) / "postmaster.pid").read_text().split()[0])
        self.start = self._now()

    def _now(self) -> tuple[float, float]:
        # Processes are looked up each time: backends come and go (the postmaster's reaped
        # children's time counts in its own), a daemon may start worker processes.
        daemons = cpu_seconds([p for pid in self.daemons for p in _tree(pid)])
        return daemons, cpu_seconds(_tree(self.server))

    def per_job(self, jobs: int) -> str:
        """``daemons x ms, server y ms`` of CPU per job since the start."""
        now = self._now()
        daemons = (now[0] - self.start[0]) / jobs * 1000
        server = (now[1] - self.start[1]) / jobs * 1000
        return f"CPU per job: daemons {daemons:.1f} ms, server {server:.1f} ms"


def count(url: str, where: str = "") -> Callable[[], int]:
    """A cheap counter of job rows (one connection, kept) for polling."""
    conn = psycopg.connect(url, autocommit=True)

    def n() -> int:
        try:
            row = conn.execute(f"SELECT count(*) FROM dropforge_jobs {where}").fetchone()
        except psycopg.errors.UndefinedTable:  # no daemon has created the schema yet
            return 0
        return int(row[0]) if row else 0

    return n


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms; fail after ``timeout`` seconds."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def throughput(url: str, daemons: int, inputs: int = 400) -> float:
    """Jobs per second of ``daemons`` daemons over ``inputs`` prompt files, from the drop to
    the last done (intake included: every host polls, plans and queues what it finds)."""
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # no fsync cost: the store's pace
    with tempfile.TemporaryDirectory(dir=shm) as root:
        cluster = Cluster(
            Path(root),
            url,
            step_seconds=0.0,
            rescan_interval=300,
            heartbeat=5.0,
            host_timeout=30.0,
        )
        # Plain folders: bindfs's FUSE round trips would be measured, not the job store.
        cluster.build([f"h{i}" for i in range(daemons)], steps=1, count=1, bindfs=False)
        try:
            cluster.start()
            time.sleep(4)  # every daemon up and idle
            meter = Meter(cluster, url)
            rows, done = count(url), count(url, "WHERE state = 'done'")
            cluster.drop(0, inputs)
            t0 = time.monotonic()
            until(lambda: rows() == inputs, 300, "all queued")
            queued = time.monotonic() - t0
            until(lambda: done() == inputs, 600, "all done")
            seconds = time.monotonic() - t0
            print(f"  {daemons} daemon(s): all {inputs} queued after {queued:.1f} s,", end=" ")
            print(f"all done after {seconds:.1f} s; {meter.per_job(inputs)}")
        finally:
            cluster.close()
            clear_tables(url)
    return inputs / seconds


def worker_throughput(url: str, daemons: int, inputs: int = 400) -> float:
    """Jobs per second of ``daemons`` daemons' workers over ``inputs`` jobs queued before they
    start (intake done beforehand), from the first job done to the last."""
    from daemon.config import load_config
    from daemon.intake.candidates import candidate_for
    from daemon.store.open import open_journal
    from daemon.survey.survey import survey

    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=shm) as root:
        cluster = Cluster(
            Path(root),
            url,
            step_seconds=0.0,
            rescan_interval=300,
            heartbeat=5.0,
            host_timeout=30.0,
        )
        cluster.build([f"h{i}" for i in range(daemons)], steps=1, count=1, bindfs=False)
        names = cluster.drop(0, inputs)
        settings = load_config(cluster.hosts[0].config)
        inbox = settings.inboxes[0]
        with open_journal(settings) as journal:
            for name in names:
                candidate = candidate_for(inbox, inbox.path / name)
                assert candidate is not None
                survey(settings, journal, candidate)
        try:
            cluster.start()
            done = count(url, "WHERE state = 'done'")
            until(lambda: done() > 0, 120, "the first job done")
            meter = Meter(cluster, url)
            t0 = time.monotonic()
            until(lambda: done() == inputs, 600, "all done")
            seconds = time.monotonic() - t0
            print(f"  workers only, {daemons} daemon(s): {meter.per_job(inputs - 1)}")
        finally:
            cluster.close()
            clear_tables(url)
    return (inputs - 1) / seconds


def wake_up(url: str, tries: int = 20) -> list[float]:
    """Seconds from a job queued on host A to its claim by idle host B (woken by NOTIFY)."""
    paths = PortablePaths([InboxPlace("s", "/s/inbox", "/s/outbox")])
    results = []
    with tempfile.TemporaryDirectory() as root:
        a = ClusterJournal(url, paths, Path(root) / "a.sqlite3")
        b = ClusterJournal(url, paths, Path(root) / "b.sqlite3")
        woken = threading.Event()
        stop = threading.Event()
        listener = threading.Thread(target=b.listen, args=(woken.set, stop), daemon=True)
        listener.start()
        time.sleep(1.0)
        for i in range(tries):
            woken.clear()
            t = time.perf_counter()
            a.upsert_job(
                inbox="/s/inbox",
                input=f"w{i}.png",
                kind="image",
                fingerprint="f",
                job_key="k",
                out_dir=f"/s/outbox/w{i}",
            )
            assert woken.wait(10)
            job = b.claim("b:1", 600)
            results.append(time.perf_counter() - t)
            assert job is not None
            b.mark_done(job.id, seconds=0.0, claim=job.claim)
        stop.set()
        a.close()
        b.close()
    clear_tables(url)
    return results


def main() -> None:
    import logging

    import structlog

    # The bench queues jobs itself (worker_throughput): its own log lines are noise here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    only_throughput = "--throughput" in sys.argv
    server = start_server()
    if isinstance(server, str):
        sys.exit(server)
    url = server.url()
    try:
        if only_throughput:
            for daemons in (1, 4):
                print(f"throughput {daemons} daemon(s): {throughput(url, daemons):.0f} jobs/s")
            for daemons in (1, 4):
                rate = worker_throughput(url, daemons)
                print(f"workers only, jobs queued beforehand, {daemons} daemon(s): {rate:.0f}")
            return
        paths = PortablePaths([InboxPlace("s", "/s/inbox", "/s/outbox")])
        with tempfile.TemporaryDirectory() as root:
            with ClusterJournal(url, paths, Path(root) / "c.sqlite3") as store:
                pg = claims(store, 2000)
            clear_tables(url)
            with SqliteJournal(Path(root) / "j.sqlite3") as journal:
                lite = claims(journal, 2000)
        print(f"claim latency PostgreSQL: p50 {pct(pg, 0.5):.2f} ms, p99 {pct(pg, 0.99):.2f} ms")
        print(
            f"claim latency SQLite:     p50 {pct(lite, 0.5):.2f} ms, p99 {pct(lite, 0.99):.2f} ms"
        )
        wake = wake_up(url)
        median = statistics.median(wake) * 1000
        print(f"wake-up (queued on A, claimed by idle B): median {median:.0f} ms,", end=" ")
        print(f"max {max(wake) * 1000:.0f} ms")
        for daemons in (1, 4):
            print(f"throughput {daemons} daemon(s): {throughput(url, daemons):.0f} jobs/s")
        for daemons in (1, 4):
            rate = worker_throughput(url, daemons)
            print(f"workers only, jobs queued beforehand, {daemons} daemon(s): {rate:.0f} jobs/s")
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
