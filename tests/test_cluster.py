"""A cluster of three daemons on one PostgreSQL, killed and frozen, loses and duplicates nothing.

Each simulated host has its own state folder and its own bindfs view of the shared inbox and
outbox (plain paths where FUSE does not work); the daemons run the real service on the fast
fake generator (tests/cluster/daemon_main.py). bench/soak_cluster.py runs the same with
a hundred kills.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, fuse_problem, verify_outputs
from tests.cluster.soak import KillLoop

INPUTS = 60
KILLS = 10
SEED = 14


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    """A cluster folder on the session's PostgreSQL; every daemon stopped afterwards."""
    made = Cluster(tmp_path, pg_url)
    try:
        yield made
    finally:
        made.close()


def test_bindfs_views_do_not_see_each_others_events(tmp_path: Path) -> None:
    """Two bindfs views of one folder show the same files (what makes them a share)."""
    problem = fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    made = Cluster(tmp_path, "postgresql://unused")
    made.build(["a", "b"])
    try:
        (made.hosts[0].view / "inbox" / "x.txt").write_text("x\n", encoding="utf-8")
        assert (made.hosts[1].view / "inbox" / "x.txt").read_text(encoding="utf-8") == "x\n"
        assert made.views
    finally:
        made.close()


def test_three_daemons_survive_ten_kills(cluster: Cluster) -> None:
    """60 inputs, 10 kill -9s of random daemons mid-job and restarts: one done manifest per
    input, no image made twice, no temporary left, every reclaim within the target, and
    status lists the live hosts."""
    cluster.build(["a", "b", "c"])
    cluster.start()
    loop = KillLoop(cluster, random.Random(SEED))
    inputs = loop.run(kills=KILLS, inputs=INPUTS)
    print("\n".join(loop.lines()))
    status = cluster.status(cluster.hosts[0])
    assert sorted(h["host"] for h in status["hosts"]) == ["a", "b", "c"]
    assert status["counts"]["done"] == INPUTS
    rows = cluster.rows()
    assert len(rows) == INPUTS and {r["state"] for r in rows} == {"done"}
    assert verify_outputs(cluster, inputs) == []
    assert len(loop.reclaims) == KILLS
    assert max(loop.reclaims) <= loop.target, loop.reclaims
    assert loop.by_heartbeat >= 3  # killed hosts left down: others reclaimed their jobs
    if fuse_problem() is None:
        assert cluster.views


def test_a_frozen_host_writes_nothing_after_it_wakes(cluster: Cluster) -> None:
    """A host stopped (SIGSTOP) past its host timeout loses its job to another host; woken
    (SIGCONT), it writes nothing more: no output, no manifest, no journal change."""
    cluster.host_timeout = 2.0
    cluster.step_seconds = 0.15
    cluster.build(["a", "b"], steps=6, count=3)
    cluster.start()
    cluster.drop(0, 1)
    cluster.wait(
        lambda: any(cluster.owner_host(r["lease_owner"]) for r in cluster.rows()), 30, "a claim"
    )
    row = cluster.rows()[0]
    frozen = cluster.owner_host(row["lease_owner"])
    assert frozen is not None
    frozen.signal(signal.SIGSTOP)
    cluster.wait(lambda: cluster.rows()[0]["state"] == "done", 60, "the other host to finish")
    finished = cluster.rows()[0]
    assert finished["claim"] > row["claim"]
    woke = time.time()
    frozen.signal(signal.SIGCONT)
    cluster.wait(
        lambda: any(e["event"] == "job.lost" for e in frozen.events()), 30, "the frozen host"
    )
    time.sleep(1.0)  # whatever it would still do, it has done by now
    assert cluster.rows()[0] == finished
    late = [
        e
        for e in frozen.events()
        if e["event"] in ("output.written", "job.done", "job.failed")
        and datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp() >= woke
    ]
    assert late == []
    assert verify_outputs(cluster, ["p000.txt"]) == []


def test_a_host_with_other_settings_refuses_to_start(cluster: Cluster) -> None:
    """`dropforge run` on a host whose config differs from the live hosts' exits 2, naming
    the keys; the cluster's hosts go on."""
    import os
    import subprocess
    import sys

    cluster.build(["a", "b"])
    a, b = cluster.hosts
    a.start(cluster.step_seconds)
    cluster.wait(lambda: cluster.status(a)["hosts"], 60, "host a to join")
    b.config.write_text(
        b.config.read_text(encoding="utf-8").replace("steps = 4", "steps = 9"), encoding="utf-8"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "run", "-c", str(b.config)],
        cwd=b.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: settings differ from the cluster's (registered by host a): [presets.standard] "
        "steps; make config.toml the same on every host, or stop every host to change them"
    )
    assert [h["host"] for h in cluster.status(a)["hosts"]] == ["a"]


def test_a_job_that_kills_every_host_at_the_same_step_is_quarantined(cluster: Cluster) -> None:
    """A prompt that ends the process at step 2 on whichever host claims it is quarantined
    with the default max_attempts: its claims on all hosts are judged as one history (the
    first ones got further, the next three did not); the other input is done."""
    import psycopg

    from tests.soak.backends import EXIT_CODE

    cluster.step_seconds = 0.05
    cluster.build(["a", "b"], steps=4, count=1)
    inbox = cluster.share / "inbox"
    (inbox / "crashy.txt").write_text("a lighthouse, exit at step 2\n", encoding="utf-8")
    (inbox / "calm.txt").write_text("a calm harbour\n", encoding="utf-8")
    cluster.start()
    deaths = 0

    def settled() -> bool:
        nonlocal deaths
        for host in cluster.hosts:
            assert host.process is not None
            code = host.process.poll()
            if code is not None:
                assert code == EXIT_CODE, f"host {host.name} exited {code}"
                deaths += 1
                host.start(cluster.step_seconds)  # as systemd would
        states = {r["input"]: r["state"] for r in cluster.rows()}
        return states == {"crashy.txt": "quarantined", "calm.txt": "done"}

    cluster.wait(settled, 120, "crashy.txt quarantined and calm.txt done")
    with psycopg.connect(cluster.url) as conn:
        history = conn.execute(
            "SELECT a.owner, a.ended, a.stage, a.counted FROM dropforge_attempts a"
            " JOIN dropforge_jobs j ON j.id = a.job_id WHERE j.input = 'crashy.txt'"
            " ORDER BY a.number"
        ).fetchall()
        (error,) = conn.execute(
            "SELECT error FROM dropforge_jobs WHERE input = 'crashy.txt'"
        ).fetchone()
    print(f"{deaths} deaths; claims: {history}")
    assert all(ended == "died" and stage == "generating" for _, ended, stage, _ in history)
    counted = [c for _, _, _, c in history]
    assert counted[-3:] == [True, True, True] and not counted[0]
    assert len(history) == deaths <= 3 + 2  # at most two claims got further than the last
    assert error.startswith("quarantined: the process died 3 times without getting further")
