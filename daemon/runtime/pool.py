"""Several GPUs in one box: one worker process per further device, on the same journal.

`dropforge run` keeps intake, maintenance and the first device's worker in its own process
and starts a child process for every further device (``[daemon] devices``, or ``device =
"auto"`` finding several GPUs). Each child opens the journal itself (SQLite's locking, or
the cluster's database, keeps claims apart), keeps its own pipelines resident, and claims
jobs until it is told to stop; the parent wakes the children when it queues work and starts
a child again if one dies (its job is requeued by the parent's heartbeat).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import structlog

from daemon.config import Settings, load_config
from daemon.generators import Generator

log = structlog.get_logger("dropforge.pool")

FactoryMaker = Callable[[Settings], Callable[[], Generator]]


def cuda_device_count() -> int:
    """GPUs the NVIDIA driver shows (``CUDA_VISIBLE_DEVICES`` respected), without torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def worker_devices(settings: Settings, count: Callable[[], int] = cuda_device_count) -> list[str]:
    """The devices to run workers on: ``devices``, or every GPU for ``device = "auto"`` when
    there are several, else the one ``device``."""
    if settings.devices:
        return list(settings.devices)
    if settings.device == "auto" and (n := count()) > 1:
        return [f"cuda:{i}" for i in range(n)]
    return [settings.device]


def on_device(settings: Settings, device: str) -> Settings:
    """The settings of one worker: ``device`` set, ``devices`` spent."""
    return dataclasses.replace(settings, device=device, devices=())


def child_main(
    config: str,
    device: str,
    index: int,
    make_factory: FactoryMaker,
    wake: ProcessEvent,
    stop: ProcessEvent,
) -> None:
    """A worker process: claim and run jobs on ``device`` until ``stop`` is set; it logs to
    ``state_dir/logs/worker-INDEX.log`` (and stderr, as the parent does)."""
    import logging

    from daemon.planning.params import check_settings
    from daemon.runtime.cluster import Membership
    from daemon.runtime.logs import configure_logging
    from daemon.runtime.loop import ActiveHours, WorkerLoop
    from daemon.runtime.monitor import JournalMonitor, cancel_listener
    from daemon.runtime.recovery import owner_id
    from daemon.runtime.worker import Worker
    from daemon.store.open import open_journal
    from daemon.store.protocols import HostRegistry

    settings = on_device(load_config(config), device)
    check_settings(settings)
    logfile = settings.state_dir / "logs" / f"worker-{index}.log"
    configure_logging(settings.log_format, level=logging.INFO, logfile=logfile)
    stopping = threading.Event()
    with open_journal(settings) as journal:
        owner = owner_id(settings)
        worker = Worker(settings, journal, make_factory(settings), owner=owner, stop=stopping)
        loop = WorkerLoop(
            worker,
            window=ActiveHours.parse(settings.active_hours),
            monotonic=time.monotonic,
            on_result=lambda result: None,
            park_outside=settings.cluster is None,
        )
        member = None
        if isinstance(journal, HostRegistry):
            member = Membership(
                settings,
                journal,
                owner=owner,
                device=worker.device_name,
                current=lambda: loop.current,
                on_wake=loop.wake,
            )
            member.join()
            member.start()
        # A cancel of the job this process runs (from `dropforge cancel`, the web UI, a
        # deleted input, another host) is heard here as in the daemon's own worker.
        monitor = JournalMonitor(settings, [cancel_listener(worker)])
        monitor.start()
        loop.start()
        log.info("pool.worker_started", device=device, pid=os.getpid())
        parent = os.getppid()
        while not stop.is_set():
            if os.getppid() != parent:  # the daemon died (kill -9): no orphan keeps working
                log.warning("pool.orphaned", device=device)
                break
            if wake.wait(1.0):
                wake.clear()
            loop.wake()  # also the fallback poll: a missed wake-up costs at most a second
            idle = time.monotonic() - loop.idle_since
            if loop.current is None and worker.has_generator and idle > settings.unload_after:
                with loop.busy:
                    worker.unload()
        stopping.set()
        monitor.stop()
        loop.wake()
        loop.join(settings.stop_timeout)
        worker.unload()
        if member is not None:
            member.stop()


class WorkerPool:
    """The child worker processes of `dropforge run`, one per further device."""

    def __init__(self, settings: Settings, devices: list[str], make_factory: FactoryMaker) -> None:
        self._config = str(settings.config_path)
        self._devices = devices
        self._make_factory = make_factory
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._wake = self._context.Event()
        self._children: dict[int, Any] = {}
        self._timeout = settings.stop_timeout

    def start(self) -> None:
        """Start a child for every device."""
        for index in range(len(self._devices)):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        device = self._devices[index]
        child = self._context.Process(
            target=child_main,
            args=(self._config, device, index + 1, self._make_factory, self._wake, self._stop),
            name=f"dropforge-worker-{index + 1}",
        )
        child.start()
        self._children[index] = child
        log.info("pool.started", device=device, worker=index + 1, pid=child.pid)

    def wake(self) -> None:
        """Tell the children that work was queued."""
        self._wake.set()

    def ensure(self) -> int:
        """Start again the children that died; return how many."""
        dead = [i for i, child in self._children.items() if not child.is_alive()]
        for index in dead:
            code = self._children[index].exitcode
            log.warning("pool.worker_died", device=self._devices[index], code=code)
            self._spawn(index)
        return len(dead)

    def pids(self) -> list[int]:
        """The children's process ids."""
        return [child.pid for child in self._children.values() if child.pid is not None]

    def stop(self, timeout: float | None = None) -> None:
        """Ask every child to stop (its running job is requeued) and wait for them."""
        self._stop.set()
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        for child in self._children.values():
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(5.0)
