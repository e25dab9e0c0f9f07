"""Watch mode: a watchdog observer per inbox, settle tracking and rescans feeding the survey.

Events only say "look at this path again" (``daemon.intake.settle`` decides when a file is
ready). One intake thread owns every settle timer (a heap), so a thousand files arriving at
once cost neither a thread nor a sleep each; it classifies settled files as a scan would,
works out which inputs a sidecar, mask or _defaults.toml concerns, and surveys them.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.observers.api import BaseObserver

from daemon.config import Settings
from daemon.intake.candidates import Candidate, candidate_for
from daemon.intake.deliveries import Deliveries, delivery_folder
from daemon.intake.names import INPUT_KINDS, FileKind, classify
from daemon.intake.observers import Observers, native_observer
from daemon.intake.parts import Parts, parts_of
from daemon.intake.paths import InboxRoots, inbox_available, inbox_roots
from daemon.intake.scan import scan_inbox
from daemon.intake.settle import Settled, SettleState, SettleTracker
from daemon.runtime.arrivals import (
    OVERFLOW_LOGGER,
    RESCAN,
    STOP,
    TOMLS,
    Event,
    InboxState,
    OverflowListener,
    excluded,
    files_of,
    mounted,
    mtime_or_inf,
    siblings,
    walk,
    wanted,
    wanted_folder,
)
from daemon.runtime.recovery import table_reader
from daemon.runtime.removals import cancel_removed
from daemon.store.protocols import Journal
from daemon.survey.entries import Verdict
from daemon.survey.survey import BULK_FROM, SurveyPass, survey
from daemon.values import Clock, JobState

log = structlog.get_logger("dropforge.watch")


RECHECK_S = 1.0  # how often inputs that changed while their job ran are looked at again


class Watcher:
    """Observers for every inbox plus one intake thread: settle, classify, survey.

    The first full scan runs on the intake thread as soon as it starts; ``ready`` is set
    (and ``on_ready`` called) once it has queued what it found. ``on_queued`` is called
    whenever a job was (re)queued, so a worker can wake up.
    """

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        *,
        on_queued: Callable[[], None] = lambda: None,
        on_ready: Callable[[], None] = lambda: None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        native: Callable[[], BaseObserver] = native_observer,
        poll_interval: float = 1.0,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.ready = threading.Event()
        self._on_queued = on_queued
        self._on_ready = on_ready
        self._clock = clock
        self._wall_clock = wall_clock
        self.poll_interval = poll_interval
        self._deliveries = Deliveries(clock, wall_clock)
        self._tracker = SettleTracker(clock, hold=self._held)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._observers = Observers(
            settings.inboxes, self._enqueue, native=native, poll_interval=poll_interval
        )
        self._inboxes = [
            InboxState(i, inbox, str(inbox.path)) for i, inbox in enumerate(settings.inboxes)
        ]
        self._roots = [i.output for i in settings.inboxes] + [settings.state_dir]
        self._excluded = tuple(str(p) for p in self._roots)
        self._batch_roots: dict[int, InboxRoots] = {}  # inbox index → roots, for one batch
        self._batch_available: dict[int, bool] = {}  # inbox index → inbox_available, likewise
        self._reader = table_reader(journal)
        self._rescans: dict[int, str | None] = {}
        self._recheck: dict[tuple[int, str], str] = {}
        self._next_recheck = 0.0
        self._thread = threading.Thread(target=self._loop, name="dropforge-intake", daemon=True)
        self._overflow = OverflowListener(self._events_lost)

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the observers, then the intake thread (which begins with a full scan)."""
        logging.getLogger(OVERFLOW_LOGGER).addFilter(self._overflow)
        self._observers.start()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the observers and the intake thread, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        logging.getLogger(OVERFLOW_LOGGER).removeFilter(self._overflow)
        self._observers.stop(timeout)
        self._queue.put(STOP)
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def request_rescan(self) -> None:
        """Ask the intake thread for a full rescan of every inbox (catches missed events)."""
        self._queue.put(RESCAN)

    def _events_lost(self) -> None:
        log.warning(
            "watch.overflow",
            message="file events were lost (the kernel's event queue overflowed, e.g. when "
            "thousands of files arrive at once): rescanning the inboxes",
        )
        self.request_rescan()

    def ensure_observers(self) -> None:
        """Replace dead observers (on polling), start those of inboxes that appeared."""
        if self._observers.ensure():
            self.request_rescan()  # whatever happened while nobody watched

    def problems(self) -> list[str]:
        """What keeps intake from working, for the health check (empty when healthy)."""
        found = self._observers.problems()
        if self._thread.ident is not None and not self._thread.is_alive():
            found.insert(0, "the intake thread has stopped")
        return found

    def missing_inboxes(self) -> list[str]:
        """Inbox folders that are gone or unmounted: shown in the status, not a health problem."""
        return self._observers.missing()

    def observer_modes(self) -> dict[str, str]:
        """Inbox → ``native``, ``polling`` or ``none`` (folder missing)."""
        return self._observers.modes()

    def _enqueue(self, index: int, path: str, is_dir: bool) -> None:
        self._queue.put(Event(index, path, is_dir))

    def _held(self, folder: str) -> bool:
        """Whether a sync tool is delivering into ``folder``: its settled files wait."""
        return self._deliveries.holds(folder, self.settings.settle_seconds)

    def _settle_for(self, state: InboxState) -> float:
        # Polled shares see a change only at the next poll; mtimes there may lag too.
        extra = self.poll_interval if self._observers.polled(state.index) else 0.0
        return self.settings.settle_seconds + extra

    # --- the intake thread --------------------------------------------------------------

    def _loop(self) -> None:
        started = self._clock()
        for state in self._inboxes:
            self._guarded(self._rescan, state, None)
        log.info("watch.ready", seconds=round(self._clock() - started, 3))
        self.ready.set()
        self._guarded(self._on_ready)
        while True:
            try:
                first = self._queue.get(timeout=self._timeout())
            except queue.Empty:
                first = None
            batch = [] if first is None else [first]
            while len(batch) < 10_000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # A file written once brings created, modified and closed events: one look each.
            seen: set[object] = set()
            for item in batch:
                if item is STOP:
                    return
                if item in seen:
                    continue
                seen.add(item)
                self._guarded(self._handle, item)
            self._guarded(self._after_batch)

    def _guarded(self, action: Callable[..., object], *args: object) -> None:
        try:
            action(*args)
        except Exception:  # intake must outlive any one bad file
            log.exception("intake.failed", action=getattr(action, "__name__", "?"))

    def _timeout(self) -> float | None:
        due = self._tracker.next_due()
        if self._recheck:
            due = self._next_recheck if due is None else min(due, self._next_recheck)
        if self._rescans:
            return 0.0
        return None if due is None else max(0.0, due - self._clock())

    def _handle(self, item: object) -> None:
        if item is RESCAN:
            for state in self._inboxes:
                self._rescans[state.index] = None
            return
        assert isinstance(item, Event)
        state = self._inboxes[item.index]
        folder = delivery_folder(item.path, state.root)
        if folder is not None and not excluded(item.path, self._excluded):
            self._deliveries.note(folder, os.path.basename(item.path))
        if item.is_dir:
            if os.path.isdir(item.path):  # moved or copied in whole: its files need a look
                for path in walk(state, item.path, self._excluded):
                    self._track(state, path)
            elif wanted_folder(state, item.path, self._excluded):  # deleted or moved away
                rel = Path(os.path.relpath(item.path, state.root)).as_posix()
                cancel_removed(self.journal, state.root, rel, folder=True)
            return
        if wanted(state, item.path, self._excluded):
            self._track(state, item.path)

    def _track(self, state: InboxState, path: str) -> None:
        if classify(os.path.basename(path)) in TOMLS:
            state.pending_tomls.add(path)
        self._tracker.touch(path, self._settle_for(state), state.index)

    def _after_batch(self) -> None:
        # Each input is looked at once per batch, however many of its files settled.
        self._batch_roots.clear()  # resolved afresh per batch: folders may be replaced
        self._batch_available.clear()
        todo: dict[str, tuple[InboxState, float | None]] = {}
        for settled in self._tracker.pop_settled():
            self._guarded(self._settled, settled, todo)
        for path, (state, waited) in todo.items():
            self._guarded(self._consider, state, path, waited)
        for state in self._inboxes:
            if state.held and not state.pending_tomls:
                held, state.held = state.held, set()
                for image in sorted(held):
                    self._guarded(self._consider, state, image)
        rescans, self._rescans = self._rescans, {}
        for index, prefix in rescans.items():
            self._guarded(self._rescan, self._inboxes[index], prefix)
        if self._recheck and self._clock() >= self._next_recheck:
            self._next_recheck = self._clock() + RECHECK_S
            for key, rel in list(self._recheck.items()):
                state = self._inboxes[key[0]]
                job = self.journal.get_job(state.root, rel)
                if job is None or job.state is not JobState.running:
                    del self._recheck[key]
                    self._guarded(self._consider, state, key[1], None, False)

    def _settled(self, settled: Settled, todo: dict[str, tuple[InboxState, float | None]]) -> None:
        """Note which inputs a settled (or vanished) file concerns."""
        state = self._inboxes[settled.tag]
        path = settled.path
        name = os.path.basename(path)
        kind = classify(name)
        state.pending_tomls.discard(path)
        present = settled.state is SettleState.settled
        concerned: list[str] = []
        if kind is FileKind.defaults:
            folder = Path(os.path.relpath(os.path.dirname(path), state.root)).as_posix()
            self._request_rescan(state, "" if folder == "." else folder + "/")
        elif kind is FileKind.sidecar:
            if present:
                self._merge_parts(state, path)
            stem = name[: -len(".toml")]
            # (FileKind.job: expressions.toml is the sidecar of expressions.json)
            concerned = siblings(path, stem, (FileKind.image, FileKind.prompt, FileKind.job))
        elif kind is FileKind.mask:
            stem = name.rpartition(".")[0][: -len(".mask")]
            concerned = siblings(path, stem, (FileKind.image,))
        elif kind in INPUT_KINDS and present:
            if kind is FileKind.job:
                self._merge_parts(state, path)
            todo[path] = (state, settled.waited)
        elif kind in INPUT_KINDS and settled.state is SettleState.gone and mounted(state):
            rel = Path(os.path.relpath(path, state.root)).as_posix()
            cancel_removed(self.journal, state.root, rel)
        for sibling in concerned:
            todo.setdefault(sibling, (state, settled.waited))

    def _merge_parts(self, state: InboxState, path: str) -> None:
        new = parts_of(state.inbox, Path(path), read_table=self._reader)
        rules = state.parts.endpoints + tuple(
            r for r in new.endpoints if r not in state.parts.endpoints
        )
        state.parts = Parts(state.parts.files | new.files, rules)

    def _request_rescan(self, state: InboxState, prefix: str | None) -> None:
        if state.index in self._rescans and self._rescans[state.index] != prefix:
            prefix = None  # two different folders: the whole inbox, once
        self._rescans[state.index] = prefix

    def _consider(
        self, state: InboxState, path: str, waited: float | None = None, settled: bool = True
    ) -> None:
        """A settled file: classify it as a scan would, then survey it unless it must wait.

        ``settled`` is False for a second look after a job ended (nothing new arrived).
        """
        if not os.path.isfile(path):
            return
        if self.settings.cluster is not None and not self._available(state):
            return  # its outbox is not mounted here: a rescan looks again once it is
        roots = self._batch_roots.get(state.index)
        if roots is None:
            roots = self._batch_roots[state.index] = inbox_roots(state.inbox, self._roots)
        candidate = candidate_for(
            state.inbox, Path(path), parts=state.parts, read_table=self._reader, roots=roots
        )
        if candidate is None:
            if (
                wanted(state, path, self._excluded)
                and classify(os.path.basename(path)) is FileKind.image
            ):
                self._request_rescan(state, None)  # a mask or endpoint: its job must see it
            return
        if any(self._tracker.pending(str(p)) for p in files_of(candidate)):
            return  # a sidecar or mask is still arriving; its settling brings us back
        if candidate.kind is FileKind.image and state.pending_tomls:
            state.held.add(path)  # a TOML file still settling may name this image as a part
            return
        if settled:
            log.info(
                "intake.settled",
                input=candidate.rel,
                inbox=state.root,
                waited=None if waited is None else round(waited, 3),
            )
        self._survey(state, candidate)

    def _available(self, state: InboxState) -> bool:
        """Whether the inbox and its output folder are here, looked at once per batch."""
        found = self._batch_available.get(state.index)
        if found is None:
            found = self._batch_available[state.index] = inbox_available(state.inbox, shared=True)
        return found

    def _survey(
        self, state: InboxState, candidate: Candidate, within: SurveyPass | None = None
    ) -> Verdict:
        if within is not None:
            entry = within.survey(candidate)
        else:
            entry = survey(self.settings, self.journal, candidate)
        if entry.verdict is Verdict.queued:
            self._on_queued()
        elif entry.verdict is Verdict.deferred and candidate.path.is_file():
            self._track(state, str(candidate.path))  # changed while being read: settle again
        elif entry.verdict is Verdict.pending and entry.job and entry.job.state is JobState.running:
            # Changed while its job runs: look again when the job has ended.
            self._recheck[(state.index, str(candidate.path))] = candidate.rel
        return entry.verdict

    def _rescan(self, state: InboxState, prefix: str | None) -> None:
        """Scan an inbox (or the part below ``prefix``); survey what has been still long enough."""
        started = self._clock()
        if not os.path.isdir(state.root):
            return  # the observers said so; a later rescan looks again
        if self.settings.cluster is not None and not inbox_available(state.inbox, shared=True):
            # An unmounted outbox would make every done job look unfinished: requeueing the
            # shared rows would make the other hosts redo them. Wait for it to return.
            log.warning("outbox.missing", inbox=state.root, output=str(state.inbox.output))
            return
        survey_pass = SurveyPass(self.settings, self.journal)
        marks = survey_pass.folder_marks(state.inbox)
        result = scan_inbox(
            state.inbox, excluded_roots=self._roots, read_table=self._reader, shortcut=marks
        )
        state.parts = result.parts
        for _path, why in result.rejected:
            if why not in state.refused:
                log.warning("input.refused", inbox=state.root, reason=why)
        state.refused = {why for _path, why in result.rejected}
        settle = self._settle_for(state)
        recent_before = self._wall_clock() - settle
        counts = dict.fromkeys(Verdict, 0)
        settling = 0
        survey_pass.bulk = len(result.candidates) >= BULK_FROM
        with survey_pass:
            for candidate in result.candidates:
                if prefix and not candidate.rel.startswith(prefix):
                    continue
                files = files_of(candidate)
                if any(self._tracker.pending(str(p)) for p in files):
                    settling += 1
                    continue
                recent = [p for p in files if mtime_or_inf(p) > recent_before]
                folder = str(candidate.path.parent)
                if recent or self._held(folder):  # settles (and waits for the delivery) first
                    settling += 1
                    for path in recent or [candidate.path]:
                        self._track(state, str(path))
                    continue
                counts[self._survey(state, candidate, survey_pass)] += 1
            survey_pass.mark(marks, result.folders)
        log.info(
            "scan.finished",
            inbox=state.root,
            folder=prefix or ".",
            found=len(result.candidates) + result.unchanged,
            queued=counts[Verdict.queued],
            done=counts[Verdict.done] + result.unchanged,
            settling=settling,
            refused=len(result.rejected),
            seconds=round(self._clock() - started, 3),
        )
