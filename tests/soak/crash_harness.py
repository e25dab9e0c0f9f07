"""Crash loop: `dropforge run` SIGKILLed at chosen moments, restarted, then checked.

Each life of the daemon is killed when a seeded random trigger fires: a short delay after
the n-th log event of that life (start-up, the first scan, a job started, an output written,
a job done: the last three right after journal commits), at once when the n-th temporary
output file appears (an output write in progress), or at a random moment up to a few seconds
after the life's first job started (loading the model, or generating). A batch of new inputs is
dropped whenever everything so far is finished, so every kill meets work in progress.
After the last kill the daemon runs until every input is done and is stopped; then
``verify`` checks what the promise says: one ``done`` manifest per input, every listed
output present, decodable and matching its sha256, nothing else in the outbox, no
temporaries, no output generated more often than the kills explain, and — with the default
``max_attempts`` — no job quarantined: every kill is an outside one, and the crash-loop guard
must tell them from a job that kills the process (``store.attempts``). The summary counts
the claims the kills ended and how the guard judged each.

Used by tests/test_crash_loop.py (fifteen kills) and bench/soak_crash.py (hundreds).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.outputs.files import TEMP_MARKER
from tests.helpers import mask_image, noise_image, write_config

# Log events a kill may follow. job.started comes right after a journal commit (the job's
# claim and identity), output.written right after an output's rename, job.done right after
# the manifest's rename and the journal's done commit. The first three come before the
# generator is loaded (torch imported), so lives ended by them are cheap.
EARLY_TRIGGERS = ("service.starting", "watch.ready", "job.started")
LATE_TRIGGERS = ("output.written", "job.done")
TEMP_TRIGGER = "temporary"
MOMENT_TRIGGER = "job.started"  # a moment trigger: a random delay after the first job started
MOMENT_S = 4.0  # the longest such delay: about a model load and a few jobs on the tiny model
LIFE_TIMEOUT_S = 120.0  # a trigger that never fires (a stuck daemon?) ends the life here
FINISH_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0
STATE_OF_WORK_S = 0.25  # how often a life looks whether every input is done
# Temporaries of ours, *.tmp, and SQLite's rollback journal, WAL and shared-memory files
# (the last two are removed when the daemon closes the journal on a clean stop).
_STRAY = re.compile(r"(\.tmp|-journal|-wal|-shm|" + re.escape(TEMP_MARKER) + r"[0-9a-f]+)$")


@dataclass(frozen=True)
class Trigger:
    """Kill ``delay`` seconds after the n-th ``event`` of a life (log event or temporary)."""

    event: str
    n: int
    delay: float

    def describe(self) -> str:
        """E.g. ``output.written #2 +0.013 s``."""
        return f"{self.event} #{self.n} +{self.delay:.3f} s"


def choose_trigger(rng: random.Random) -> Trigger:
    """A random trigger: 25 % on temporaries, 25 % after outputs and done jobs, 20 % at a
    random moment up to ``MOMENT_S`` after the first job started, 30 % early."""
    draw = rng.random()
    if draw < 0.25:
        return Trigger(TEMP_TRIGGER, rng.randint(1, 3), 0.0)
    if draw < 0.5:
        return Trigger(rng.choice(LATE_TRIGGERS), rng.randint(1, 3), rng.uniform(0.0, 0.03))
    if draw < 0.7:
        return Trigger(MOMENT_TRIGGER, 1, rng.uniform(0.0, MOMENT_S))
    event = rng.choice(EARLY_TRIGGERS)
    delay = rng.uniform(0.0, 0.5) if event == "service.starting" else rng.uniform(0.0, 0.05)
    return Trigger(event, 1, delay)


@dataclass(frozen=True)
class Kill:
    """One SIGKILL and what it left behind."""

    life: int
    trigger: Trigger
    fired: bool  # False: the life timed out before its trigger and was killed anyway
    phase: str  # startup (before the first scan ended), job (a job was running), idle
    temporaries: int  # temporary output files on disk right after the kill
    last_event: str
    seconds: float  # the life's length


@dataclass
class Summary:
    """The figures of one crash loop and every violation found by ``verify``."""

    kills: list[Kill] = field(default_factory=list)
    restarts: int = 0
    inputs: int = 0
    outputs: int = 0
    generations: int = 0
    duplicates: int = 0
    duplicate_images: int = 0  # the rest are contact sheets drawn again from kept images
    unlogged: int = 0
    lost: int = 0
    deaths: Counter[str] = field(default_factory=Counter)  # claims the kills ended, by verdict
    quarantined: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No violation found."""
        return not self.problems

    def lines(self) -> list[str]:
        """A printable summary."""
        phases = Counter(k.phase for k in self.kills)
        by_trigger = Counter(k.trigger.event for k in self.kills)
        mid_write = sum(1 for k in self.kills if k.temporaries)
        lines = [
            f"kills: {len(self.kills)} ({', '.join(f'{n} {p}' for p, n in sorted(phases.items()))};"
            f" {mid_write} left a temporary output behind)",
            "triggers: " + ", ".join(f"{n} {e}" for e, n in sorted(by_trigger.items())),
            f"restarts: {self.restarts}",
            f"inputs: {self.inputs}",
            f"outputs: {self.outputs} (images and contact sheets, all verified)",
            f"generations logged: {self.generations}; duplicates: {self.duplicates}"
            f" (allowed: {len(self.kills)}; images: {self.duplicate_images}, the rest contact"
            f" sheets); written but unlogged (kill between rename and log line):"
            f" {self.unlogged}",
            f"lost: {self.lost}",
            "claims ended by a kill: "
            + (", ".join(f"{n} {v}" for v, n in sorted(self.deaths.items())) or "none")
            + f"; quarantined: {self.quarantined}",
            f"seconds: {self.seconds:.1f}",
        ]
        lines += [f"VIOLATION: {p}" for p in self.problems]
        return lines


class Workload:
    """A test inbox with a mix of inputs, and how many images each must yield."""

    def __init__(self, root: Path, sd_model: Path, rng: random.Random) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.outbox = root / "outbox"
        self.state = root / "state"
        self.rng = rng
        # The default max_attempts: kills from outside must not get a healthy job quarantined.
        self.config = write_config(
            root,
            str(sd_model),
            extra_daemon='settle_seconds = 0.2\nlog_format = "json"\nstop_timeout = 20',
        )
        self.outbox.mkdir(exist_ok=True)
        self.images: dict[str, int] = {}  # input (relative to the inbox) -> images expected
        self.refill = 3  # inputs dropped whenever everything so far is done
        self._next = 0

    def add(self, count: int) -> None:
        """Drop ``count`` inputs: prompt files (count 2-3), multi-scene files, images (count
        1-2) for variations, and one inpaint among the first batch."""
        for _ in range(count):
            i = self._next
            self._next += 1
            kind = i % 5
            if i == 3:
                noise_image(self.inbox / "room.png", seed=1000)
                mask_image(self.inbox / "room.mask.png")
                self.images["room.png"] = 1
            elif kind in (0, 1):
                n = self.rng.randint(2, 3)
                (self.inbox / f"p{i:04d}.toml").write_text(f"count = {n}\nseed = {i * 10}\n")
                (self.inbox / f"p{i:04d}.txt").write_text(f"a lighthouse, number {i}\n")
                self.images[f"p{i:04d}.txt"] = n
            elif kind == 2:
                (self.inbox / f"s{i:04d}.toml").write_text(f"seed = {i}\n")
                text = f"a harbour at dawn {i}\n\n* * *\n\na storm over the harbour {i}\n"
                (self.inbox / f"s{i:04d}.md").write_text(text)
                self.images[f"s{i:04d}.md"] = 2
            else:
                n = self.rng.randint(1, 2)
                noise_image(self.inbox / f"v{i:04d}.png", seed=i)
                if n > 1:
                    (self.inbox / f"v{i:04d}.toml").write_text(f"count = {n}\nseed = {i}\n")
                self.images[f"v{i:04d}.png"] = n

    def finished(self) -> bool:
        """Every input has a ``done`` manifest (outputs are checked by ``verify``)."""
        for rel in self.images:
            data = _read_json(self.outbox / Path(rel).stem / "manifest.json")
            if data is None or data.get("status") != "done":
                return False
        return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start `dropforge run` with its JSON log lines going to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "-c", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )


def log_events(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log; a line cut short by a kill is skipped."""
    found = []
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


class _TemporaryWatch(FileSystemEventHandler):
    """Counts temporary output files as they are created; kills at the n-th one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.kill_at: int | None = None
        self.pid: int | None = None
        self.killed = threading.Event()

    def arm(self, pid: int, kill_at: int | None) -> None:
        with self.lock:
            self.count, self.pid, self.kill_at = 0, pid, kill_at
            self.killed.clear()

    def disarm(self) -> None:
        with self.lock:
            self.pid = None

    def on_created(self, event: FileSystemEvent) -> None:
        if event.is_directory or TEMP_MARKER not in os.fsdecode(event.src_path):
            return
        with self.lock:
            self.count += 1
            if self.pid is not None and self.count == self.kill_at:
                os.kill(self.pid, signal.SIGKILL)  # at once, from the observer's thread
                self.killed.set()


def temporaries(*folders: Path) -> list[Path]:
    """Temporary or journal leftovers under the folders (a dropforge temporary, *.tmp,
    a SQLite rollback journal)."""
    return sorted(
        p
        for folder in folders
        if folder.exists()
        for p in folder.rglob("*")
        if _STRAY.search(p.name)
    )


def _phase(events: list[dict[str, Any]]) -> str:
    names = [e.get("event") for e in events]
    if "watch.ready" not in names:
        return "startup"
    open_jobs = 0
    for name in names:
        if name == "job.started":
            open_jobs += 1
        elif name in ("job.done", "job.failed", "job.waiting", "job.interrupted", "job.crashed"):
            open_jobs = max(0, open_jobs - 1)
    return "job" if open_jobs else "idle"


def run_crash_loop(
    root: Path,
    sd_model: Path,
    *,
    kills: int,
    inputs: int,
    seed: int = 0,
    say: Callable[[str], None] = lambda line: None,
) -> Summary:
    """Kill `dropforge run` ``kills`` times, let it finish, verify; return the summary."""
    started = time.monotonic()
    rng = random.Random(seed)  # the triggers: the same seed gives the same kills
    work = Workload(root, sd_model, random.Random(f"{seed}-inputs"))
    work.add(inputs)
    work.refill = max(3, inputs // 4)
    logs = root / "logs"
    logs.mkdir()
    summary = Summary()
    watch = _TemporaryWatch()
    observer = Observer()
    observer.schedule(watch, str(work.outbox), recursive=True)
    observer.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        for life in range(kills):
            if work.finished():
                work.add(work.refill)  # keep every kill meeting work in progress
            trigger = choose_trigger(rng)
            log = logs / f"life-{life:04d}.log"
            born = time.monotonic()
            proc = start_daemon(work.config, log)
            summary.restarts += 1
            watch.arm(proc.pid, trigger.n if trigger.event == TEMP_TRIGGER else None)
            fired = _await_trigger(proc, log, trigger, watch, work)
            watch.disarm()
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            code = proc.wait(timeout=30)
            proc = None
            if code != -signal.SIGKILL:
                summary.problems.append(f"life {life}: the daemon exited by itself ({code})")
            events = log_events(log)
            left = len(temporaries(work.outbox))
            kill = Kill(
                life,
                trigger,
                fired,
                _phase(events),
                left,
                str(events[-1].get("event")) if events else "-",
                time.monotonic() - born,
            )
            summary.kills.append(kill)
            say(
                f"kill {life + 1}/{kills}: {trigger.describe()}"
                f"{'' if fired else ' (timed out)'}, {kill.phase}, last {kill.last_event},"
                f" {left} temporary, {kill.seconds:.1f} s"
            )
        log = logs / "final.log"
        proc = start_daemon(work.config, log)
        summary.restarts += 1
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while not work.finished():
            if _quarantined(work):
                summary.problems.append("a job was quarantined: it can never finish")
                break
            if proc.poll() is not None:
                summary.problems.append(f"the final run exited ({proc.returncode})")
                break
            if time.monotonic() > deadline:
                summary.problems.append(f"not finished after {FINISH_TIMEOUT_S:.0f} s")
                break
            time.sleep(STATE_OF_WORK_S)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=STOP_TIMEOUT_S)
            if code != 0:
                summary.problems.append(f"the final run exited {code} on SIGTERM")
        proc = None
        _check_once(work, summary)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        observer.stop()
        observer.join(10)
    verify(work, sorted(logs.glob("*.log")), summary)
    summary.seconds = time.monotonic() - started
    return summary


def _quarantined(work: Workload) -> bool:
    """Whether the journal holds a quarantined job (read without disturbing the daemon)."""
    path = work.state / "journal.sqlite3"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return bool(db.execute("SELECT 1 FROM jobs WHERE state = 'quarantined'").fetchone())
        finally:
            db.close()
    except sqlite3.Error:
        return False  # not there yet, or busy: look again


def _check_once(work: Workload, summary: Summary) -> None:
    """`dropforge once` afterwards finds every input done and makes nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "once", "-c", str(work.config)],
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_S * 2,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    want = [f"Inputs Found: {len(work.images)}", f"Skipped (existing): {len(work.images)}"]
    lines = result.stdout.splitlines()
    if result.returncode != 0 or any(w not in lines for w in [*want, "Processed: 0"]):
        summary.problems.append(
            f"dropforge once afterwards (exit {result.returncode}) did not skip everything:"
            f" {result.stdout[-500:]} {result.stderr[-500:]}"
        )


def _await_trigger(
    proc: subprocess.Popen[bytes],
    log: Path,
    trigger: Trigger,
    watch: _TemporaryWatch,
    work: Workload,
) -> bool:
    """Wait until the trigger fires (killing the daemon); False when the life timed out."""
    deadline = time.monotonic() + LIFE_TIMEOUT_S
    seen = 0
    offset = 0
    partial = b""
    next_look = 0.0
    while time.monotonic() < deadline:
        if watch.killed.is_set():
            return True
        if proc.poll() is not None:
            return False
        if trigger.event != TEMP_TRIGGER:
            with open(log, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"{") and f'"event": "{trigger.event}"'.encode() in line:
                    seen += 1
                    if seen == trigger.n:
                        if trigger.delay:
                            time.sleep(trigger.delay)
                        proc.send_signal(signal.SIGKILL)
                        return True
        now = time.monotonic()
        if now >= next_look:  # the trigger may never come once all work is done
            next_look = now + STATE_OF_WORK_S
            if work.finished():
                work.add(work.refill)
        time.sleep(0.003)
    return False


def verify(work: Workload, logs: list[Path], summary: Summary) -> None:
    """Check the outbox, the state folder, the journal and the logs; record violations."""
    problems = summary.problems
    summary.inputs = len(work.images)
    manifests: dict[str, list[Path]] = {}
    for path in sorted(work.outbox.rglob("manifest.json")):
        data = _read_json(path)
        key = str(data.get("input", {}).get("path")) if data else f"unreadable {path}"
        manifests.setdefault(key, []).append(path)
    listed: set[Path] = set()
    lost_inputs: set[str] = set()
    for rel, images in sorted(work.images.items()):
        found = manifests.pop(rel, [])
        if len(found) != 1:
            problems.append(f"{rel}: {len(found)} manifests, expected exactly one")
            lost_inputs.add(rel)
            continue
        data = _read_json(found[0]) or {}
        if data.get("status") != "done":
            problems.append(f"{rel}: manifest status {data.get('status')!r}, not done")
            lost_inputs.add(rel)
            continue
        outputs = data.get("outputs", [])
        made = [o for o in outputs if o.get("role") not in ("contact", "prompts")]
        # A multi-scene prompt file also lists its STEM.prompts.toml.
        prompts = [o for o in outputs if o.get("role") == "prompts"]
        want = images + (1 if images > 1 else 0) + min(len(prompts), 1)
        if len(made) != images or len(outputs) != want:
            problems.append(f"{rel}: {len(outputs)} outputs listed, expected {want}")
            lost_inputs.add(rel)
        listed.add(found[0])
        for entry in outputs:
            path = found[0].parent / str(entry.get("file"))
            listed.add(path)
            summary.outputs += 1
            problem = _check_output(path, entry)
            if problem:
                problems.append(f"{rel}: {problem}")
                lost_inputs.add(rel)
    for key, paths in manifests.items():
        problems.append(f"manifest for an unknown input {key}: {[str(p) for p in paths]}")
    strays = [p for p in work.outbox.rglob("*") if p.is_file() and p not in listed]
    problems += [f"unlisted file in the outbox: {p.relative_to(work.outbox)}" for p in strays]
    leftovers = temporaries(work.outbox, work.state)
    problems += [f"temporary file left: {p}" for p in leftovers]
    _check_journal(work, summary)
    written: Counter[tuple[str, str]] = Counter()
    for log in logs:
        for event in log_events(log):
            if event.get("event") == "output.written":
                written[(str(event.get("input")), str(event.get("file")))] += 1
    summary.generations = sum(written.values())
    summary.duplicates = sum(n - 1 for n in written.values())
    summary.duplicate_images = sum(n - 1 for k, n in written.items() if k[1] != "contact.png")
    expected_keys = {(_input_of(p, work), p.name) for p in listed if p.name != "manifest.json"}
    summary.unlogged = len(expected_keys - set(written))
    unknown = set(written) - expected_keys
    problems += [f"generated but not listed: {k}" for k in sorted(unknown)]
    if summary.duplicates > len(summary.kills):
        twice = sorted(k for k, n in written.items() if n > 1)
        problems.append(
            f"{summary.duplicates} outputs generated again, more than the"
            f" {len(summary.kills)} kills explain: {twice}"
        )
    summary.lost = len(lost_inputs)


def _input_of(path: Path, work: Workload) -> str:
    stem = path.parent.name
    return next(rel for rel in work.images if Path(rel).stem == stem)


def _check_output(path: Path, entry: dict[str, Any]) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"{path.name} listed but unreadable ({exc})"
    if hashlib.sha256(data).hexdigest() != entry.get("sha256") or len(data) != entry.get("bytes"):
        return f"{path.name} does not match its recorded sha256 and size"
    if entry.get("role") == "prompts":
        try:
            tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            return f"{path.name} is not valid TOML ({exc})"
        return None
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # Pillow raises many kinds for a damaged file
        return f"{path.name} does not decode ({exc})"
    return None


def _check_journal(work: Workload, summary: Summary) -> None:
    problems = summary.problems
    path = work.state / "journal.sqlite3"
    db = sqlite3.connect(path)
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            problems.append(f"journal integrity_check: {check}")
        rows = db.execute("SELECT input, state FROM jobs").fetchall()
        try:
            deaths = db.execute(
                "SELECT stage, counted FROM attempts WHERE ended = 'died'"
            ).fetchall()
        except sqlite3.OperationalError:  # a dropforge before the attempts table
            deaths = []
        for stage, counted in deaths:
            verdict = "counted" if counted else "not counted"
            summary.deaths[f"{verdict} ({stage})"] += 1
    finally:
        db.close()
    states = dict(rows)
    summary.quarantined = sum(1 for _, state in rows if state == "quarantined")
    if len(rows) != len(work.images):
        problems.append(f"journal holds {len(rows)} jobs for {len(work.images)} inputs")
    problems += [
        f"journal: {rel} is {states.get(rel)}" for rel in work.images if states.get(rel) != "done"
    ]
