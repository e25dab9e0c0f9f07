"""The service: sd_notify, health and watchdog, stopping and signals, maintenance, units."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest
from structlog.testing import capture_logs
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from daemon.cli import main, winservice
from daemon.config import load_config
from daemon.errors import ConfigError, DropforgeError, ModelUnavailable
from daemon.runtime import units
from daemon.runtime.loop import ActiveHours
from daemon.runtime.service import Service
from daemon.runtime.systemd import Notifier
from daemon.runtime.worker import JobResult, Outcome
from daemon.store.rows import Job
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import Launch, SolidGenerator, wait_until
from tests.helpers import SettableClock, snapshot, write_config

MODEL = "./models/none"
FAST = "settle_seconds = 0.3\nrescan_interval = 3600"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET (short path: 108-byte limit)."""
    folder = tempfile.mkdtemp(prefix="df-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    yield sock, path
    sock.close()
    shutil.rmtree(folder)


def next_message(sock: socket.socket, wanted: Callable[[str], bool]) -> str:
    """Read datagrams until one satisfies ``wanted`` (the socket's timeout bounds each read)."""
    while True:
        message = sock.recv(4096).decode("utf-8")
        if wanted(message):
            return message


def pending_messages(sock: socket.socket) -> list[str]:
    """Every datagram already waiting on the socket."""
    found: list[str] = []
    sock.setblocking(False)
    try:
        while True:
            found.append(sock.recv(4096).decode("utf-8"))
    except BlockingIOError:
        return found
    finally:
        sock.settimeout(15)


class OffsetClock:
    """A real clock that a test can push forward."""

    def __init__(self, base: Callable[[], float]) -> None:
        self.base = base
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base() + self.offset


def journal_of(config: Path) -> SqliteJournal:
    """The journal beside a test config."""
    return SqliteJournal(config.parent / "state" / "journal.sqlite3")


def all_jobs(config: Path) -> list[Job]:
    """Every job in the journal, in arrival order."""
    with journal_of(config) as journal:
        return journal.jobs()


def only_job(config: Path) -> Job:
    """The single job in the journal."""
    (job,) = all_jobs(config)
    return job


# --- sd_notify --------------------------------------------------------------------------


def test_notifier_sends_each_message_as_one_datagram(listener: tuple[socket.socket, str]) -> None:
    """READY, STATUS, WATCHDOG and STOPPING arrive as systemd expects them."""
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("2 queued,\n1 waiting")
    assert notifier.status("idle")
    assert notifier.watchdog()
    assert notifier.stopping()
    received = [sock.recv(4096).decode() for _ in range(4)]
    assert received == [
        "READY=1\nSTATUS=2 queued, 1 waiting",
        "STATUS=idle",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_notifier_reaches_an_abstract_socket() -> None:
    """A NOTIFY_SOCKET starting with @ names Linux's abstract namespace."""
    name = f"dropforge-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"


def test_notifier_is_a_no_op_without_systemd(tmp_path: Path) -> None:
    """Without NOTIFY_SOCKET nothing is sent; a dead socket is reported once, not raised."""
    assert Notifier({}).ready("x") is False
    with capture_logs() as logs:
        dead = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing")})
        assert dead.status("a") is False and dead.status("b") is False
    assert [e["event"] for e in logs] == ["notify.failed"]


def test_watchdog_period_comes_from_watchdog_usec_for_this_process() -> None:
    """WATCHDOG_USEC is honoured only when WATCHDOG_PID is absent or names this process."""
    assert Notifier({"WATCHDOG_USEC": "60000000"}).watchdog_seconds == 60.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_seconds == 2.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_seconds is None


def test_ready_is_sent_after_the_first_scan_queued_its_jobs(
    tmp_path: Path, listener: tuple[socket.socket, str], launch: Launch
) -> None:
    """READY=1 follows the queueing of every input present at start-up."""
    sock, path = listener
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    old = time.time() - 60
    for name in ("a.txt", "b.txt"):
        (tmp_path / "inbox" / name).write_text(f"{name}\n", encoding="utf-8")
        os.utime(tmp_path / "inbox" / name, (old, old))
    # An arrival counts from its ctime too (a rename keeps the mtime), which utime cannot set:
    # the files are there from before the start once it is older than settle_seconds.
    written = (tmp_path / "inbox" / "b.txt").stat().st_ctime
    wait_until(lambda: time.time() - written > 0.5, message="the files to be older than settle")
    with capture_logs() as logs:
        running = launch(config, notifier=Notifier({"NOTIFY_SOCKET": path}))
        ready = next_message(sock, lambda m: m.startswith("READY=1"))
        wait_until(lambda: len(running.results) == 2, message="both jobs")
    assert ready.startswith("READY=1\nSTATUS=")
    events = [e["event"] for e in logs]
    assert events.count("job.queued") == 2
    assert max(i for i, e in enumerate(events) if e == "job.queued") < events.index("service.ready")


# --- health and the watchdog ------------------------------------------------------------------


def test_healthy_service_feeds_the_watchdog(
    tmp_path: Path, listener: tuple[socket.socket, str], launch: Launch
) -> None:
    """With WATCHDOG_USEC set, the scheduler's heartbeat sends WATCHDOG=1 and a status line."""
    sock, path = listener
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    running = launch(config, notifier=Notifier(env))
    next_message(sock, lambda m: m == "WATCHDOG=1")
    status = next_message(sock, lambda m: m.startswith("STATUS="))
    assert status == "STATUS=0 queued, 0 waiting, 0 failed"
    assert running.service.health().ok


def test_stuck_worker_stops_the_watchdog_and_says_why(
    tmp_path: Path, listener: tuple[socket.socket, str], launch: Launch
) -> None:
    """A job without progress for longer than its lease makes the health check fail."""
    sock, path = listener
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    monotonic = OffsetClock(time.monotonic)
    generator = SolidGenerator(gate=threading.Event())  # holds the job before its first step
    running = launch(
        config, generator=generator, monotonic=monotonic, notifier=Notifier({"NOTIFY_SOCKET": path})
    )
    (tmp_path / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
    wait_until(lambda: generator.requests, message="the job to start")
    assert running.service.health().ok
    pending_messages(sock)
    monotonic.offset += 700  # the lease is 600 s
    with capture_logs() as logs:
        health = running.service.heartbeat()
    (problem,) = health.problems
    assert re.fullmatch(r"the worker is stuck on cat\.txt: no progress for 70\d s", problem)
    assert pending_messages(sock) == [f"STATUS=unhealthy: {problem}"]
    assert logs[-1]["event"] == "service.unhealthy" and logs[-1]["problems"] == [problem]


def test_dead_observer_is_replaced_by_polling(tmp_path: Path, launch: Launch) -> None:
    """The heartbeat notices a dead observer, replaces it with polling, and intake goes on."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    made: list[BaseObserver] = []

    def native() -> BaseObserver:
        made.append(Observer())
        return made[-1]

    running = launch(config, native_observer=native, poll_interval=0.2)
    made[0].stop()
    made[0].join(5)
    inbox = str(tmp_path / "inbox")
    assert running.service.health().problems == (f"the observer of {inbox} has stopped",)
    with capture_logs() as logs:
        assert running.service.heartbeat().ok
    assert "watch.observer_died" in [e["event"] for e in logs]
    assert running.service.watcher is not None
    assert running.service.watcher.observer_modes() == {inbox: "polling"}
    (tmp_path / "inbox" / "late.txt").write_text("a late arrival\n", encoding="utf-8")
    wait_until(lambda: running.results, message="the job")
    assert running.outcomes() == [("late.txt", Outcome.done)]


def test_long_jobs_renew_their_lease(tmp_path: Path, launch: Launch) -> None:
    """Progress a quarter-lease after the claim extends the job's lease in the journal."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST, steps=150)
    wall, monotonic = OffsetClock(time.time), OffsetClock(time.monotonic)
    generator = SolidGenerator(step_seconds=0.02)
    launch(config, generator=generator, clock=wall, monotonic=monotonic)
    (tmp_path / "inbox" / "long.txt").write_text("a long job\n", encoding="utf-8")
    wait_until(lambda: generator.requests, message="the job to start")
    first = only_job(config).lease_expires
    assert first is not None
    wall.offset += 200
    monotonic.offset += 200
    wait_until(lambda: (only_job(config).lease_expires or 0) >= first + 200, message="a renewal")


def test_a_job_whose_last_journal_write_failed_is_recovered_by_the_heartbeat(
    tmp_path: Path, launch: Launch
) -> None:
    """The journal refuses the `done` write (state disk full): the worker loop drops the job,
    still `running`; the next heartbeat requeues it, and the rerun finds its outputs complete
    instead of generating them again."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    running = launch(config)
    journal = running.service.journal
    assert journal is not None
    real_mark_done = journal.mark_done
    refusals: list[int] = []

    def full_disk(job_id: int, *, seconds: float, claim: int | None = None) -> bool:
        if not refusals:
            refusals.append(job_id)
            raise sqlite3.OperationalError("database or disk is full")
        return real_mark_done(job_id, seconds=seconds, claim=claim)

    journal.mark_done = full_disk  # type: ignore[method-assign]
    with capture_logs() as logs:
        (tmp_path / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
        wait_until(lambda: any(e["event"] == "worker.failed" for e in logs), message="failure")
    assert only_job(config).state is JobState.running and running.results == []
    assert running.service.loop is not None and running.service.loop.current is None
    with capture_logs() as logs:
        running.service.heartbeat()
        wait_until(lambda: running.results, message="the rerun")
    running.stop()
    recovered = next(e for e in logs if e["event"] == "journal.recovered")
    assert recovered["requeued"] == 1
    assert running.outcomes() == [("cat.txt", Outcome.skipped)]  # outputs were complete
    assert len(running.generator.requests) == 1
    assert only_job(config).state is JobState.done


def test_the_heartbeat_leaves_the_running_job_alone(tmp_path: Path, launch: Launch) -> None:
    """While the worker runs a job, even one past its lease, the heartbeat does not requeue it."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    wall = OffsetClock(time.time)
    generator = SolidGenerator(gate=threading.Event())  # holds the job before its first step
    running = launch(config, generator=generator, clock=wall)
    (tmp_path / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
    wait_until(lambda: generator.requests, message="the job to start")
    wall.offset += 700  # the lease (600 s) has run out
    assert running.service.recover_orphans() == 0
    assert only_job(config).state is JobState.running
    assert generator.gate is not None
    generator.gate.set()
    wait_until(lambda: running.results, message="the job")
    running.stop()
    assert running.outcomes() == [("cat.txt", Outcome.done)]
    assert len(generator.requests) == 1


# --- stopping ----------------------------------------------------------------------------


def test_stop_interrupts_the_job_and_a_restart_makes_only_what_is_missing(
    tmp_path: Path, launch: Launch
) -> None:
    """A stop mid-job requeues it with its finished images; the next run makes the rest."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST + "\nstop_timeout = 5", steps=20)
    (tmp_path / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
    (tmp_path / "inbox" / "cat.toml").write_text("count = 4\nseed = 1\n", encoding="utf-8")
    out = tmp_path / "outbox" / "cat"
    running = launch(config, generator=SolidGenerator(step_seconds=0.02))
    wait_until(lambda: (out / "cat-1.png").exists(), message="the first image")
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 5
    assert running.outcomes() == [("cat.txt", Outcome.interrupted)]
    job = only_job(config)
    assert (job.state, job.attempts) == (JobState.queued, 0)
    kept = snapshot(out)
    assert 1 <= len(kept) < 4 and "manifest.json" not in kept

    again = launch(config)
    wait_until(lambda: again.results, message="the resumed job")
    made = [spec.seed for r in again.generator.requests for spec in r.images]
    assert sorted(made + [int(n[4:-4]) for n in kept]) == [1, 2, 3, 4]
    after = snapshot(out)
    assert {name: after[name] for name in kept} == kept


class HardExit(Exception):
    """Raised by the test's stand-in for os._exit."""


def run_on_main_thread(service: Service, signals: Callable[[], None]) -> int:
    """Run the service on this (main) thread while ``signals`` runs on another."""
    sender = threading.Thread(target=signals, daemon=True)
    sender.start()
    try:
        return service.run()
    finally:
        sender.join(30)


def test_sigterm_stops_gracefully_and_requeues_the_running_job(tmp_path: Path) -> None:
    """A real SIGTERM mid-job ends run() with 0 within stop_timeout; the job is queued again."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST + "\nstop_timeout = 5", steps=150)
    (tmp_path / "inbox" / "long.txt").write_text("a long job\n", encoding="utf-8")
    generator = SolidGenerator(step_seconds=0.02)
    results: list[JobResult] = []
    service = Service(
        load_config(config), lambda: generator, notifier=Notifier({}), on_result=results.append
    )
    sent: list[float] = []

    def signals() -> None:
        wait_until(lambda: generator.requests, message="the job to start")
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    with capture_logs() as logs:
        assert run_on_main_thread(service, signals) == 0
    assert time.monotonic() - sent[0] < 5
    assert [(r.rel, r.outcome) for r in results] == [("long.txt", Outcome.interrupted)]
    assert only_job(config).state is JobState.queued
    stopping = next(e for e in logs if e["event"] == "service.stopping")
    assert stopping["reason"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    """While a stop waits for a job that does not yield, another SIGINT exits immediately."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST + "\nstop_timeout = 20")
    (tmp_path / "inbox" / "stuck.txt").write_text("never yields\n", encoding="utf-8")
    generator = SolidGenerator(gate=threading.Event())
    codes: list[int] = []

    def hard_exit(code: int) -> NoReturn:
        codes.append(code)
        raise HardExit

    service = Service(
        load_config(config), lambda: generator, notifier=Notifier({}), hard_exit=hard_exit
    )

    def signals() -> None:
        wait_until(lambda: generator.requests, message="the job to start")
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(service.stop_event.is_set, message="the graceful stop")
        os.kill(os.getpid(), signal.SIGINT)

    try:
        with pytest.raises(HardExit):
            run_on_main_thread(service, signals)
    finally:
        assert generator.gate is not None
        generator.gate.set()
    assert codes == [128 + signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- maintenance -----------------------------------------------------------------------------


def test_scheduler_runs_every_maintenance_job(tmp_path: Path, launch: Launch) -> None:
    """Rescans, idle unload, retries, heartbeats, pruning and the window opening are scheduled."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST + '\nactive_hours = "22:00-06:00"')
    running = launch(config)
    jobs = {job.id: job for job in running.service.scheduler.get_jobs()}
    assert set(jobs) == {"rescan", "unload", "retry", "heartbeat", "prune", "active-hours"}
    assert jobs["rescan"].trigger.interval.total_seconds() == 3600
    assert str(jobs["active-hours"].trigger) == "cron[hour='22', minute='0']"


def test_active_hours_hold_jobs_until_the_window_opens(tmp_path: Path, launch: Launch) -> None:
    """Outside active_hours a job waits with a message saying when it runs; then it runs."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST + '\nactive_hours = "22:00-06:00"')
    noon = datetime.now().replace(hour=12, minute=0, second=0, microsecond=0).timestamp()
    wall = OffsetClock(time.time)
    wall.offset = noon - time.time()
    running = launch(config, clock=wall, retry_tick=0.1)
    (tmp_path / "inbox" / "night.txt").write_text("a night sky\n", encoding="utf-8")
    wait_until(
        lambda: [j.state for j in all_jobs(config)] == [JobState.waiting], message="the deferral"
    )
    job = only_job(config)
    assert job.error == "outside active_hours 22:00-06:00; runs from 22:00"
    assert job.not_before == pytest.approx(noon + 10 * 3600, abs=60)
    assert running.generator.requests == []
    assert running.service.status_line() == (
        "paused: outside active_hours 22:00-06:00; runs from 22:00; 0 queued, 1 waiting, 0 failed"
    )
    wall.offset += 10 * 3600 + 30  # 22:00:30
    wait_until(lambda: running.results, message="the job in the window")
    assert running.outcomes() == [("night.txt", Outcome.done)]


def test_window_arithmetic_across_midnight() -> None:
    """A window crossing midnight contains the late evening and early morning, not noon."""
    window = ActiveHours.parse("22:00-06:30")
    assert window is not None
    day = datetime(2030, 5, 1)
    assert window.contains(day.replace(hour=23)) and window.contains(day.replace(hour=6, minute=29))
    assert not window.contains(day.replace(hour=6, minute=30))
    assert window.seconds_until_open(day.replace(hour=21, minute=59, second=30)) == 30
    assert window.seconds_until_open(day.replace(hour=23)) == 0
    daytime = ActiveHours.parse("09:00-17:00")
    assert daytime is not None
    assert daytime.seconds_until_open(day.replace(hour=18)) == 15 * 3600
    assert ActiveHours.parse("") is None


def test_waiting_job_runs_when_its_backoff_is_over(tmp_path: Path, launch: Launch) -> None:
    """A job sent to waiting is retried by the scheduler once its not_before has passed."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST)
    wall = OffsetClock(time.time)
    generator = SolidGenerator(fail_with=ModelUnavailable('model "default" is not here yet'))
    running = launch(config, generator=generator, clock=wall, retry_tick=0.1)
    (tmp_path / "inbox" / "later.txt").write_text("later\n", encoding="utf-8")
    wait_until(lambda: running.results, message="the first attempt")
    job = only_job(config)
    assert (job.state, job.error) == (JobState.waiting, 'model "default" is not here yet')
    assert job.not_before == pytest.approx(wall() + 30, abs=5)
    wall.offset += 31
    wait_until(lambda: len(running.results) >= 2, message="the retry")
    assert running.outcomes() == [("later.txt", Outcome.waiting), ("later.txt", Outcome.done)]


def test_idle_pipelines_are_unloaded(tmp_path: Path, launch: Launch) -> None:
    """After unload_after idle seconds the generator's pipelines are released, once."""
    config = write_config(tmp_path, MODEL, extra_daemon=FAST + "\nunload_after = 0.2")
    with capture_logs() as logs:
        running = launch(config)
        (tmp_path / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
        wait_until(lambda: running.generator.unloads == 1, message="the unload")
    assert running.generator.loaded_models() == {}
    assert [e["event"] for e in logs].count("pipelines.unloaded") == 1


# --- systemd units -----------------------------------------------------------------------------


def example_units() -> dict[str, str]:
    """The shipped examples systemd/dropforge.service and systemd/dropforge-user.service."""
    system = units.UnitOptions(
        user=False,
        command=("/opt/dropforge/.venv/bin/dropforge",),
        config_path="/etc/dropforge/config.toml",
        writable=("/srv/dropforge/inbox", "/srv/dropforge/outbox", "/var/lib/dropforge"),
        stop_timeout=30.0,
        run_as="dropforge",
    )
    user = units.UnitOptions(
        user=True,
        command=("/home/me/dropforge/.venv/bin/dropforge",),
        config_path="/home/me/dropforge/config.toml",
        writable=(
            "/home/me/Sync/inbox",
            "/home/me/Sync/outbox",
            "/home/me/dropforge/.dropforge",
        ),
        stop_timeout=30.0,
    )
    return {
        "dropforge.service": units.render_unit(system),
        "dropforge-user.service": units.render_unit(user),
    }


def test_shipped_unit_files_match_the_renderer() -> None:
    """systemd/*.service are exactly what `dropforge service install` writes for the examples."""
    for name, text in example_units().items():
        assert (ROOT / "systemd" / name).read_text(encoding="utf-8") == text, name


def test_unit_runs_this_dropforge_with_the_absolute_config(tmp_path: Path) -> None:
    """ExecStart names the venv's dropforge and -c config; folders become ReadWritePaths."""
    (tmp_path / "with space").mkdir()
    config = write_config(tmp_path / "with space", MODEL)
    settings = load_config(config)
    text = units.render_unit(units.unit_options(settings, user=False, run_as="media"))
    script = Path(sys.executable).parent / "dropforge"
    assert f'ExecStart={script} run -c "{config}"' in text
    for key in ("Type=notify", "NotifyAccess=main", "WatchdogSec=60", "Restart=on-failure"):
        assert key + "\n" in text
    assert "TimeoutStopSec=45\n" in text and "User=media\n" in text
    for folder in ("inbox", "outbox", "state"):
        assert f'ReadWritePaths="{tmp_path / "with space" / folder}"\n' in text
    assert "ProtectSystem=strict" in text and "NoNewPrivileges=yes" in text


def test_unit_values_escape_specifiers_and_quotes() -> None:
    """% becomes %%, and words with blanks or quotes are quoted for systemd."""
    assert units.quote("/srv/a%b") == "/srv/a%%b"
    assert units.quote("/srv/my inbox") == '"/srv/my inbox"'
    assert units.quote('/srv/say "hi"') == '"/srv/say \\"hi\\""'


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd)",
)
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_verify_accepts_the_rendered_units(tmp_path: Path, user: bool) -> None:
    """`systemd-analyze verify` finds nothing to complain about, odd paths included."""
    (tmp_path / "drop forge %h").mkdir()
    config = write_config(tmp_path / "drop forge %h", MODEL)
    settings = load_config(config)
    for folder in (settings.state_dir, settings.inboxes[0].output):
        folder.mkdir(parents=True, exist_ok=True)
    unit = tmp_path / "dropforge.service"
    unit.write_text(units.render_unit(units.unit_options(settings, user=user)), encoding="utf-8")
    runtime = tempfile.mkdtemp(prefix="df-run-")
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "SYSTEMD_LOG_LEVEL": "notice"}
    command = ["systemd-analyze", *(["--user"] if user else []), "verify", "--man=no", str(unit)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    finally:
        shutil.rmtree(runtime)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.fixture
def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `systemctl` on PATH that records its arguments; XDG_CONFIG_HOME in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n', encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return log


def without_tmp_warnings(out: str) -> list[str]:
    """The lines of install's output but its warnings about folders under /tmp (pytest's
    tmp_path usually is; test_folders_under_tmp_get_a_warning checks them)."""
    return [line for line in out.splitlines() if not line.startswith("warning: ")]


def test_folders_under_tmp_get_a_warning(
    tmp_path: Path, fake_systemctl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An inbox under /tmp gets a warning (PrivateTmp=yes hides it); others do not."""
    options = units.UnitOptions(
        user=True,
        command=("dropforge",),
        config_path="/srv/config.toml",
        writable=("/tmp/drop/inbox", "/srv/outbox", "/var/tmp/state"),
        stop_timeout=30,
    )
    lines = units.install(options, dry_run=True, target=tmp_path / "unit.service")
    assert lines[:2] == [
        "warning: /tmp/drop/inbox is under /tmp, which the service sees as an empty private "
        "/tmp of its own (PrivateTmp=yes): files put there from outside never reach it; move "
        "it out of /tmp in config.toml",
        "warning: /var/tmp/state is under /var/tmp, which the service sees as an empty private "
        "/var/tmp of its own (PrivateTmp=yes): files put there from outside never reach it; "
        "move it out of /var/tmp in config.toml",
    ]
    assert lines[2] == f"would write {tmp_path / 'unit.service'}:"


def test_service_install_and_uninstall_a_user_unit(
    tmp_path: Path, fake_systemctl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """install --user writes the unit, creates its folders and enables it; uninstall undoes it."""
    config = write_config(tmp_path, MODEL)
    unit = tmp_path / "xdg" / "systemd" / "user" / "dropforge.service"
    assert main(["service", "install", "--user", "-c", str(config)]) == 0
    assert without_tmp_warnings(capsys.readouterr().out) == [
        f"created {tmp_path / 'outbox'}",
        f"created {tmp_path / 'state'}",
        f"wrote {unit}",
        "run systemctl --user daemon-reload",
        "run systemctl --user enable --now dropforge.service",
        "logs: journalctl --user -u dropforge -f; state: systemctl --user status dropforge",
        "to keep it running while you are logged out: loginctl enable-linger $USER",
    ]
    assert f"run -c {config}\n" in unit.read_text(encoding="utf-8")
    assert main(["service", "uninstall", "--user"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "run systemctl --user disable --now dropforge.service",
        f"remove {unit}",
        "run systemctl --user daemon-reload",
    ]
    assert not unit.exists()
    assert fake_systemctl.read_text(encoding="utf-8").splitlines() == [
        "--user daemon-reload",
        "--user enable --now dropforge.service",
        "--user disable --now dropforge.service",
        "--user daemon-reload",
    ]


def test_service_install_dry_run_changes_nothing(
    tmp_path: Path, fake_systemctl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run prints the system unit and the commands, and runs none of them."""
    config = write_config(tmp_path, MODEL)
    code = main(["service", "install", "--dry-run", "--run-as", "media", "-c", str(config)])
    assert code == 0
    out = without_tmp_warnings(capsys.readouterr().out)
    assert out[0] == "would write /etc/systemd/system/dropforge.service:"
    assert "    User=media" in out
    assert out[-3:] == [
        "would run systemctl daemon-reload",
        "would run systemctl enable --now dropforge.service",
        "logs: journalctl -u dropforge -f; state: systemctl status dropforge",
    ]
    assert not fake_systemctl.exists() and not (tmp_path / "outbox").exists()


def test_service_without_an_action_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dropforge service` alone says which actions exist and exits 2."""
    assert main(["service"]) == 2
    assert capsys.readouterr().err == "Error: service needs an action: install or uninstall\n"


def test_failing_systemctl_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A systemctl failure ends the install with its message and exit 2."""

    def refuse(argv: Any) -> None:
        raise DropforgeError(f"{' '.join(argv)} failed: Failed to connect to bus")

    options = units.unit_options(load_config(write_config(tmp_path, MODEL)), user=True)
    with pytest.raises(DropforgeError) as caught:
        units.install(options, runner=refuse, target=tmp_path / "unit.service")
    assert str(caught.value) == "systemctl --user daemon-reload failed: Failed to connect to bus"


# --- the Windows service --------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="checks the message shown without pywin32")
def test_windows_service_without_pywin32_says_how_to_get_it() -> None:
    """The import-guarded module loads anywhere; using it without pywin32 names the extra."""
    with pytest.raises(ConfigError) as caught:
        winservice.pywin32()
    assert str(caught.value) == (
        'the Windows service needs pywin32: pip install "dropforge[windows]", then run '
        "python Scripts\\pywin32_postinstall.py -install as administrator"
    )


def test_mapped_network_drives_are_flagged() -> None:
    """Paths on mapped drives get a warning pointing to UNC paths; local and UNC ones do not."""
    kinds = {"Z:\\": winservice.DRIVE_REMOTE, "C:\\": 3}
    found = winservice.mapped_drive_warnings(
        ["Z:\\inbox", "C:\\dropforge\\outbox", "\\\\nas\\share\\inbox"], kinds.__getitem__
    )
    assert found == [
        "Z:\\inbox: Z: is a mapped network drive, which services do not see; "
        "use its UNC path (\\\\server\\share\\...) in config.toml instead"
    ]


def test_steps_up_to_beyond_the_previous_claim_always_get_through() -> None:
    """Reports up to the first one further than the claim cut short before are never
    thinned (the crash-loop rule sees exactly how far this claim got), later ones are."""
    from daemon.runtime.worker import ProgressThrottle

    clock = SettableClock()
    throttle = ProgressThrottle(clock, beyond=(0, 2))
    assert throttle.due(0, "")
    assert throttle.due(0, "step 1/30", 1)
    assert throttle.due(0, "step 2/30", 2)
    assert throttle.due(0, "step 3/30", 3)
    assert not throttle.due(0, "step 4/30", 4)
    fresh = ProgressThrottle(clock)  # no earlier claim: beyond where this one started
    assert fresh.due(1, "")
    assert fresh.due(1, "step 1/30", 1)
    assert not fresh.due(1, "step 2/30", 2)


def test_step_progress_is_written_about_once_a_second() -> None:
    """Once a claim got further than where it started, its step reports are thinned to one
    a second; image boundaries always get through."""
    from daemon.runtime.worker import ProgressThrottle

    clock = SettableClock()
    throttle = ProgressThrottle(clock)
    assert throttle.due(0, "")
    assert throttle.due(0, "step 1/30", 1)  # further than where it started: recorded
    assert not throttle.due(0, "step 2/30", 2)
    clock.advance(0.5)
    assert not throttle.due(0, "step 3/30", 3)
    clock.advance(0.5)
    assert throttle.due(0, "step 4/30", 4)
    assert not throttle.due(0, "step 5/30", 5)
    assert throttle.due(1, "cat-1.png")
    assert not throttle.due(1, "step 1/30", 1)
