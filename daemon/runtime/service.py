"""`dropforge run`: journal + watcher + a worker thread, maintenance on APScheduler, signals.

Start-up recovers what a dead process left (runner.recover), starts the observers and the
intake thread (whose first full scan ends in ``READY=1``), the worker thread and the
scheduler. A stop (SIGTERM, SIGINT, a Windows service stop) sets the worker's stop event,
so the running job is interrupted at its next denoising step and requeued with its finished
outputs kept, stops intake, and returns within ``stop_timeout``; a second signal exits at once.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, NoReturn

import structlog

from daemon.config import Settings
from daemon.generators import Generator
from daemon.intake.observers import native_observer
from daemon.runtime.cluster import FORGET_HOSTS_AFTER, Membership, join_cluster
from daemon.runtime.companion import Companion
from daemon.runtime.loop import ActiveHours, WorkerLoop
from daemon.runtime.monitor import MONITOR_INTERVAL_S, JournalMonitor, cancel_listener
from daemon.runtime.notify import Notices, notices_for
from daemon.runtime.pool import FactoryMaker, WorkerPool
from daemon.runtime.presence import Presence, clear_presence, write_presence
from daemon.runtime.recovery import owner_id, prune_guard, recover
from daemon.runtime.removals import OutputWatch
from daemon.runtime.systemd import Health, Notifier
from daemon.runtime.watcher import Watcher
from daemon.runtime.worker import JobResult, Outcome, Progress, Worker
from daemon.store.open import open_journal
from daemon.store.protocols import HostRegistry, JobStore, Journal
from daemon.store.rows import Job
from daemon.values import Clock, JobState

log = structlog.get_logger("dropforge.service")

PRUNE_AFTER_S = 30 * 86400.0  # done jobs and unseen cache rows older than this are deleted
HEARTBEAT_S = 30.0  # health checks without a systemd watchdog
STOP_MARGIN_S = 1.0  # of stop_timeout, kept for closing the journal and exiting


class Service:
    """The daemon: start(), then run() until a stop; every part is injectable for tests."""

    def __init__(
        self,
        settings: Settings,
        generator_factory: Callable[[], Generator],
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        notifier: Notifier | None = None,
        native_observer: Callable[[], Any] = native_observer,
        poll_interval: float = 1.0,
        retry_tick: float = 15.0,
        on_result: Callable[[JobResult], None] = lambda result: None,
        hard_exit: Callable[[int], NoReturn] = os._exit,
        extra_devices: Sequence[str] = (),
        make_factory: FactoryMaker | None = None,
        companions: Sequence[Companion] = (),
        monitor_interval: float = MONITOR_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self._factory = generator_factory
        self._clock = clock
        self._monotonic = monotonic
        self.notifier = notifier or Notifier()
        self._native = native_observer
        self._poll_interval = poll_interval
        self._retry_tick = retry_tick
        self._on_result = on_result
        self._hard_exit = hard_exit
        self.window = ActiveHours.parse(settings.active_hours)
        self.stop_event = threading.Event()
        self._requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop_requested = False
        self._started_at = monotonic()
        self.journal: Journal | None = None
        self.loop: WorkerLoop | None = None
        self.watcher: Watcher | None = None
        self.scheduler: Any = None
        self.member: Membership | None = None
        self.pool: WorkerPool | None = None
        if extra_devices:
            assert make_factory is not None, "worker processes need a generator factory maker"
            self.pool = WorkerPool(settings, list(extra_devices), make_factory)
        self.companions = tuple(companions)
        self._monitor_interval = monitor_interval
        self.monitor: JournalMonitor | None = None
        self.outputs: OutputWatch | None = None
        self.notices: Notices | None = None
        self.owner = owner_id(settings)

    # --- start and stop ---------------------------------------------------------------

    def start(self) -> None:
        """Recover, then start the watcher, the worker thread and the scheduler."""
        settings = self.settings
        self._started_at = self._monotonic()
        self.notices = notices_for(settings)  # a URL Apprise refuses stops the start here
        journal = self.journal = open_journal(settings, clock=self._clock)
        self.member = join_cluster(settings, journal, self.owner, lambda: self.loop)
        recover(settings, journal)
        progress = Progress(
            on_start=lambda job, total: self._beat(job),
            on_image=lambda job, done, total: self._beat(job),
            on_step=lambda job, done, total: self._beat(job),
        )
        worker = Worker(
            settings,
            journal,
            self._factory,
            owner=self.owner,
            stop=self.stop_event,
            clock=self._clock,
            progress=progress,
        )
        self.loop = WorkerLoop(
            worker,
            window=self.window,
            monotonic=self._monotonic,
            on_result=self._result,
            # In a cluster a host outside its hours leaves the jobs to the others.
            park_outside=settings.cluster is None,
        )
        self.watcher = Watcher(
            settings,
            journal,
            on_queued=self._queued,
            on_ready=self._ready,
            clock=self._monotonic,
            wall_clock=self._clock,
            native=self._native,
            poll_interval=self._poll_interval,
        )
        log.info(
            "service.starting",
            inboxes=[str(i.path) for i in settings.inboxes],
            device=settings.device,
            active_hours=settings.active_hours or "always",
            pid=os.getpid(),
        )
        self.notifier.status("starting: scanning the inboxes")
        self.monitor = JournalMonitor(
            settings,
            [self._journal_changed],
            interval=self._monitor_interval,
            clock=self._clock,
        )
        self.monitor.start()
        self.outputs = OutputWatch(journal)
        self.outputs.start()
        self.watcher.start()
        self.loop.start()
        if self.pool is not None:
            self.pool.start()
        if self.member is not None:
            self.member.start()
        self.scheduler = self._schedule()
        presence = Presence(self.owner, os.getpid(), "run", self._clock())
        write_presence(settings, presence)  # before the UI starts: its first page knows
        for companion in self.companions:
            companion.start()
        urls = [c.url for c in self.companions if c.url]
        if urls:
            write_presence(settings, dataclasses.replace(presence, ui=urls[0]))

    def _result(self, result: JobResult) -> None:
        journal = self.journal
        if journal is not None and result.outcome in (Outcome.done, Outcome.skipped):
            job = journal.get_job(result.inbox, result.rel)
            if job is not None and self.outputs is not None:
                self.outputs.watch(job.id, job.out_dir, job.job_key)
        if self.notices is not None and journal is not None:
            self.notices.job_ended(result, journal)
        self._on_result(result)

    def _journal_changed(self, view: JobStore) -> None:
        """Another process (or thread) changed the journal: look for work, and stop the
        running job if a cancel of it was recorded."""
        loop = self.loop
        if loop is not None:
            loop.wake()
            cancel_listener(loop.worker)(view)

    def _queued(self) -> None:
        """A job was queued: wake this process's worker and every worker process."""
        if self.loop is not None:
            self.loop.wake()
        if self.pool is not None:
            self.pool.wake()

    def _beat(self, job: Job) -> None:
        if self.loop is not None:
            self.loop.beat(job)

    def _ready(self) -> None:
        status = self.status_line()
        log.info("service.ready", seconds=round(self._monotonic() - self._started_at, 3))
        self.notifier.ready(status)

    def _schedule(self) -> Any:
        from apscheduler.schedulers.background import BackgroundScheduler

        settings = self.settings
        assert self.watcher is not None
        # Late runs still run (a busy CPU must not skip heartbeats), once.
        scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        interval = "interval"
        scheduler.add_job(
            self.watcher.request_rescan, interval, seconds=settings.rescan_interval, id="rescan"
        )
        idle_check = min(max(settings.unload_after / 4, 0.1), 30.0)
        scheduler.add_job(self.unload_if_idle, interval, seconds=idle_check, id="unload")
        scheduler.add_job(self.wake_for_due, interval, seconds=self._retry_tick, id="retry")
        beat = self.notifier.watchdog_seconds
        scheduler.add_job(
            self.heartbeat, interval, seconds=beat / 2 if beat else HEARTBEAT_S, id="heartbeat"
        )
        scheduler.add_job(self.prune, interval, hours=24, id="prune")
        cluster = settings.cluster
        if cluster is not None:
            # A dead host's jobs are reclaimed within host_timeout + one of these checks, and
            # an idle host looks for work now and then in case a notification was lost.
            scheduler.add_job(
                self.reclaim, interval, seconds=cluster.heartbeat_seconds, id="reclaim"
            )
            assert self.loop is not None
            scheduler.add_job(self.loop.wake, interval, seconds=cluster.poll_seconds, id="poll")
        if self.window is not None:
            opens = {"hour": self.window.start // 60, "minute": self.window.start % 60}
            scheduler.add_job(self.wake_for_due, "cron", id="active-hours", **opens)
        scheduler.start()
        return scheduler

    def run(self, *, handle_signals: bool = True) -> int:
        """Start, block until a stop is requested, stop gracefully; return the exit code."""
        restore: dict[int, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for name in ("SIGTERM", "SIGINT"):
                if hasattr(signal, name):
                    signum = getattr(signal, name)
                    restore[signum] = signal.signal(signum, self._on_signal)
        try:
            try:
                self.start()
            except BaseException:
                self.shutdown("start-up failed")
                raise
            reason = self._requests.get()
            self.shutdown(reason)
        finally:
            for signum, previous in restore.items():
                signal.signal(signum, previous)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs between bytecodes of the main thread: no locks, no logging; the
        # SimpleQueue's put is reentrant.
        if self._stop_requested:
            self._hard_exit(128 + signum)
        self._stop_requested = True
        self._requests.put(signal.Signals(signum).name)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask run() to stop gracefully (from any thread, e.g. a Windows service stop)."""
        self._stop_requested = True
        self._requests.put(reason)

    def shutdown(self, reason: str) -> None:
        """Interrupt the running job, stop intake and the scheduler, close the journal."""
        started = self._monotonic()
        deadline = started + max(self.settings.stop_timeout - STOP_MARGIN_S, 0.5)
        log.info("service.stopping", reason=reason, timeout=self.settings.stop_timeout)
        self.notifier.stopping(f"stopping ({reason})")
        self.stop_event.set()  # first: the running job stops at its next step meanwhile
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.member is not None:
            self.member.stop()
        if self.pool is not None:
            self.pool.stop(max(0.0, deadline - self._monotonic()))
        for part in (*self.companions, self.monitor, self.outputs):
            if part is not None:
                part.stop(timeout=max(0.0, min(2.0, deadline - self._monotonic())))
        clear_presence(self.settings, self.owner)
        if self.notices is not None:  # what is queued goes out, in the time that is left
            self.notices.close(timeout=max(0.0, min(5.0, deadline - self._monotonic())))
        if self.watcher is not None:
            self.watcher.stop(timeout=max(0.0, deadline - self._monotonic()))
        loop = self.loop
        if loop is not None and loop.is_alive():
            loop.wake()
            loop.join(max(0.0, deadline - self._monotonic()))
        if loop is not None and loop.is_alive():
            job = loop.current
            if job is not None and self.journal is not None:
                # A requeue, not a crash: no attempt counted.
                self.journal.mark_queued(job.id, claim=job.claim)
            log.warning("service.stop_timeout", input=job.input if job else None)
        else:
            if loop is not None:
                loop.worker.unload()
            if self.journal is not None:
                self.journal.close()
        log.info("service.stopped", seconds=round(self._monotonic() - started, 3))

    # --- maintenance (APScheduler jobs) ------------------------------------------------

    def unload_if_idle(self) -> bool:
        """Unload the pipelines after ``unload_after`` idle seconds; True when it did."""
        loop = self.loop
        if loop is None or not loop.worker.has_generator or loop.current is not None:
            return False
        idle = self._monotonic() - loop.idle_since
        if idle < self.settings.unload_after or not loop.worker.generator.loaded_models():
            return False
        if not loop.busy.acquire(blocking=False):
            return False
        try:
            loop.worker.unload()
        finally:
            loop.busy.release()
        log.info("pipelines.unloaded", idle=round(idle, 1))
        return True

    def wake_for_due(self) -> bool:
        """Wake the worker when a waiting job's backoff has run out; True when one has."""
        if self.journal is None or self.loop is None:
            return False
        now = self._clock()
        waiting = self.journal.jobs([JobState.waiting], limit=1000)
        if any((j.not_before or 0.0) <= now for j in waiting):
            self.loop.wake()
            return True
        return False

    def prune(self) -> int:
        """Delete old done jobs and unseen cache rows."""
        if self.journal is None:
            return 0
        removed = self.journal.prune(PRUNE_AFTER_S, exists=prune_guard(self.settings))
        if isinstance(self.journal, HostRegistry):
            self.journal.forget_hosts(FORGET_HOSTS_AFTER)
        if removed:
            log.info("journal.pruned", rows=removed)
        return removed

    def reclaim(self) -> int:
        """Requeue the jobs of dead hosts (and of this host's dead processes); log how many."""
        try:
            return self.recover_orphans()
        except Exception:  # the database away for a moment: the next check tries again
            log.exception("cluster.reclaim_failed")
            return 0

    def health(self) -> Health:
        """Observers and intake alive, worker alive and not stuck beyond its lease."""
        problems: list[str] = []
        if self.watcher is not None:
            problems += self.watcher.problems()
        loop = self.loop
        if loop is not None:
            if loop.ident is not None and not loop.is_alive() and not self.stop_event.is_set():
                problems.append("the worker thread has stopped")
            stuck = loop.stuck_for()
            job = loop.current
            if job is not None and stuck > loop.worker.lease_seconds():
                problems.append(
                    f"the worker is stuck on {job.input}: no progress for {stuck:.0f} s"
                )
        return Health(tuple(problems))

    def heartbeat(self) -> Health:
        """Repair what can be repaired, check health, feed systemd's watchdog when healthy."""
        if self.watcher is not None:
            self.watcher.ensure_observers()
        if self.pool is not None:
            self.pool.ensure()
        try:
            self.recover_orphans()
        except Exception:  # e.g. the journal's disk still full: the next beat tries again
            log.exception("journal.recover_failed")
        health = self.health()
        if health.ok:
            self.notifier.watchdog()
            self.notifier.status(self.status_line())
        else:
            log.warning("service.unhealthy", problems=list(health.problems))
            self.notifier.status("unhealthy: " + "; ".join(health.problems))
        return health

    def recover_orphans(self) -> int:
        """Requeue the jobs left running that no worker runs any more; return how many.

        Other processes' jobs whose owner died or whose lease ran out, as at start-up, and
        this process's own while its worker is idle: a job whose last journal write failed
        (the state disk full, say) is dropped by the worker loop while still ``running``.
        """
        loop = self.loop
        if self.journal is None or loop is None:
            return 0
        if loop.busy.acquire(blocking=False):  # idle: nothing of ours is running
            try:
                requeued = recover(self.settings, self.journal)
            finally:
                loop.busy.release()
        else:
            requeued = recover(self.settings, self.journal, spare=loop.worker.owner)
        if requeued:
            loop.wake()
        return requeued

    def status_line(self) -> str:
        """One line for systemd's STATUS=: queue counts, the running job, a pause."""
        if self.journal is None:
            return "starting"
        counts = self.journal.counts()
        parts = [f"{counts[s]} {s.value}" for s in (JobState.queued, JobState.waiting)]
        parts.append(f"{counts[JobState.failed]} failed")
        line = ", ".join(parts)
        loop = self.loop
        job = loop.current if loop is not None else None
        if job is not None:
            try:
                row = self.journal.get(job.id)
            except KeyError:  # its input vanished a moment ago
                row = job
            note = f", {row.progress_note}" if row.progress_note else ""
            line = f"running {job.input} ({row.progress_done}/{row.progress_total}{note}); " + line
        if loop is not None and loop.paused:
            line = f"paused: {loop.paused}; " + line
        missing = self.watcher.missing_inboxes() if self.watcher is not None else []
        if missing:  # restarting would not bring a share back: a warning, not unhealthy
            line = f"inbox missing: {', '.join(missing)} (waiting for it to return); " + line
        return line
