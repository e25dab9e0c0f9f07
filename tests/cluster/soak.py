"""The kill loop of a simulated cluster: kill -9 random daemons mid-job, restart them, and
measure how long each killed job takes to be reclaimed.

Most killed daemons restart at once (a restarted host reclaims its own jobs at start-up);
every third stays down past the host timeout, so the other hosts must reclaim its job from
its silent heartbeat. Inputs arrive in batches so that every kill meets work in progress.
Used by tests/test_cluster.py (10 kills) and bench/soak_cluster.py (100 and more).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from tests.cluster.harness import Cluster, Host

SLACK_S = 3.0  # a busy two-core machine: process start-up and scheduling on top of the target


@dataclass
class KillLoop:
    """Kills, restarts, reclaim times."""

    cluster: Cluster
    rng: random.Random
    reclaims: list[float] = field(default_factory=list)
    by_heartbeat: int = 0
    seconds: float = 0.0

    @property
    def target(self) -> float:
        """Heartbeat timeout + one check, plus slack for start-up on a loaded machine."""
        return self.cluster.host_timeout + self.cluster.heartbeat + SLACK_S

    def run(self, *, kills: int, inputs: int) -> list[str]:
        """Drop ``inputs`` in batches, kill ``kills`` times, wait until all is done."""
        started = time.monotonic()
        batches = max(1, min(kills, inputs // 20 or 1))
        per = inputs // batches
        names: list[str] = []
        for k in range(kills):
            if k % max(1, kills // batches) == 0 and len(names) < inputs:
                n = per if len(names) + 2 * per <= inputs else inputs - len(names)
                names += self.cluster.drop(len(names), n)
            self._kill_once(down=k % 3 == 2)
        if len(names) < inputs:
            names += self.cluster.drop(len(names), inputs - len(names))
        self.cluster.wait(
            lambda: sum(r["state"] == "done" for r in self.cluster.rows()) == inputs,
            60 + inputs,
            "every input done",
        )
        self.seconds = time.monotonic() - started
        return names

    def _kill_once(self, *, down: bool) -> None:
        victim: list[tuple[Host, dict[str, object]]] = []

        def running() -> bool:
            victim[:] = [
                (h, r)
                for r in self.cluster.rows()
                if r["state"] == "running" and (h := self.cluster.owner_host(r["lease_owner"]))
            ]
            return bool(victim)

        self.cluster.wait(running, 60, "a job running on a live daemon")
        host, row = self.rng.choice(victim)
        host.kill()
        killed = time.monotonic()
        if not down:
            host.start(self.cluster.step_seconds)

        def reclaimed() -> bool:
            now = next(r for r in self.cluster.rows() if r["id"] == row["id"])
            return now["lease_owner"] != row["lease_owner"]

        self.cluster.wait(reclaimed, self.target + 30, f"job {row['id']} reclaimed")
        self.reclaims.append(time.monotonic() - killed)
        if down:
            self.by_heartbeat += 1
            host.start(self.cluster.step_seconds)

    def lines(self) -> list[str]:
        """A printable summary."""
        ordered = sorted(self.reclaims)
        return [
            f"kills: {len(self.reclaims)} ({self.by_heartbeat} left down past the host timeout)",
            f"reclaim seconds: min {ordered[0]:.2f}, median {ordered[len(ordered) // 2]:.2f},"
            f" max {ordered[-1]:.2f} (target {self.target:.1f})",
            f"seconds: {self.seconds:.1f}",
        ]
