"""Membership of a cluster: joining with this host's settings, heartbeats, wake-ups.

A worker process of a cluster registers a heartbeat row when it starts (refused, naming the
keys, when its settings differ from the cluster's), beats it every ``heartbeat_seconds`` from
a thread of its own, listens for ``NOTIFY`` so that a job queued on any host wakes it within
a fraction of a second, and removes its row when it stops.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from daemon import __version__
from daemon.config import ClusterConfig, Settings
from daemon.generators import GENERATOR_VERSION
from daemon.store.protocols import HostRegistry, Journal
from daemon.store.rows import Job

if TYPE_CHECKING:
    from daemon.runtime.loop import WorkerLoop

log = structlog.get_logger("dropforge.cluster")

FORGET_HOSTS_AFTER = 86400.0  # rows of hosts silent this long are deleted


def shared_settings(settings: Settings) -> dict[str, str]:
    """What every host of a cluster must agree on, key by key (names as in config.toml):
    whatever shapes a job's parameters, key or outputs."""
    import json

    values: dict[str, Any] = {"generator version": GENERATOR_VERSION}
    for key, value in settings.defaults.items():
        values[f"[defaults] {key}"] = value
    for name, preset in settings.presets.items():
        for key, value in preset.items():
            values[f"[presets.{name}] {key}"] = value
    for alias in settings.models:
        source = settings.model_source(alias)
        # Local models lie at different paths on each host: compare their names only.
        values[f"[models] {alias}"] = (
            source.ref if source.kind == "hub" else f"{source.kind}:{Path(source.ref).name}"
        )
    for alias, path in settings.loras.items():
        values[f"[loras] {alias}"] = Path(path).name
    for inbox in settings.inboxes:
        for key in ("default_task", "recursive", "after"):
            values[f"[[inbox]] {inbox.name} {key}"] = getattr(inbox, key)
    for key in ("max_pixels", "max_sidecar_bytes", "max_attempts"):
        values[f"[daemon] {key}"] = getattr(settings, key)
    return {k: json.dumps(v, sort_keys=True, separators=(",", ":")) for k, v in values.items()}


class Membership:
    """This process's row in the cluster: join, beat on a thread, listen, leave."""

    def __init__(
        self,
        settings: Settings,
        registry: HostRegistry,
        *,
        owner: str,
        device: Callable[[], str],
        current: Callable[[], Job | None],
        on_wake: Callable[[], None],
    ) -> None:
        cluster = settings.cluster
        assert cluster is not None
        self.cluster: ClusterConfig = cluster
        self.settings = settings
        self.registry = registry
        self.owner = owner
        self._device = device
        self._current = current
        self._on_wake = on_wake
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def join(self) -> None:
        """Register this process (ConfigError when its settings differ from the cluster's)."""
        self.registry.join(
            self.owner,
            host=self.cluster.host_name,
            pid=os.getpid(),
            device=self._device(),
            version=__version__,
            settings=shared_settings(self.settings),
        )
        log.info("cluster.joined", owner=self.owner, host=self.cluster.host_name)

    def start(self) -> None:
        """Beat and listen on threads of their own until ``stop``."""
        for name, target in (("beat", self._beat_loop), ("listen", self._listen)):
            thread = threading.Thread(target=target, name=f"dropforge-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def beat(self) -> None:
        """Beat once; join again when the row was taken for dead (a long pause, say)."""
        job = self._current()
        alive = self.registry.beat(
            self.owner,
            device=self._device(),
            job_id=job.id if job else None,
            job_input=job.input if job else None,
        )
        if not alive:
            log.warning("cluster.rejoined", owner=self.owner)
            self.join()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.cluster.heartbeat_seconds):
            try:
                self.beat()
            except Exception:  # the database away for a while: the next beat tries again
                log.exception("cluster.beat_failed")

    def _listen(self) -> None:
        self.registry.listen(self._on_wake, self._stop)

    def stop(self, journal: Journal | None = None) -> None:
        """Stop beating and listening, and remove this process's row."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        try:
            self.registry.leave(self.owner)
        except Exception:  # the database is gone: the row times out by itself
            log.exception("cluster.leave_failed")


def join_cluster(
    settings: Settings, journal: Journal, owner: str, loop: Callable[[], WorkerLoop | None]
) -> Membership | None:
    """In a cluster, this process's membership, joined (ConfigError when its settings differ
    from the cluster's); None on one host. ``loop`` gives the worker loop once it exists."""
    if not isinstance(journal, HostRegistry):
        return None
    member = Membership(
        settings,
        journal,
        owner=owner,
        device=lambda: running.worker.device_name() if (running := loop()) else "none",
        current=lambda: running.current if (running := loop()) else None,
        on_wake=lambda: running.wake() if (running := loop()) else None,
    )
    member.join()
    return member
