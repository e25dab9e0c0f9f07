"""Load: N small prompt files dropped at once into a watched inbox, on the fast fake generator.

Runs the real watch-mode service (observers, settle tracker, intake thread, SQLite journal,
worker, atomic output writes) in-process; only the model is fake. Reports how long intake
took to journal every file and the worker to finish every job, and the memory the daemon
keeps: Python's allocated blocks and gc-tracked objects at rest after a warm-up burst against
at rest after the load (after a full collection), and RSS (then, after, and peak).
tests/test_load.py runs it on 10,000 files and asserts; this script goes further and prints.
Not a test: nothing is asserted here. Example::

    python bench/load.py --files 2000 10000 50000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Run from a checkout without installing: the package lives one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from daemon.config import load_config
from daemon.generators import GenerationEvents, ImageRequest
from daemon.runtime.service import Service
from daemon.runtime.systemd import Notifier
from daemon.runtime.worker import JobResult
from daemon.values import JobState
from tests.fakes import SolidGenerator, wait_until
from tests.helpers import write_config

MODEL = "./models/none"  # the fake generator ignores the model; it only has to be an alias


@dataclass
class CountingGenerator(SolidGenerator):
    """The fast fake generator, counting calls instead of keeping every request."""

    calls: int = 0

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """Make the solid images; remember only how many requests there were."""
        super().generate_images(request, events)
        with self._lock:
            self.requests.clear()
            self.calls += 1


@dataclass
class LoadFigures:
    """What one load run measured."""

    files: int
    warmup: int
    write_seconds: float  # writing the N files
    journal_seconds: float  # from the first write until every file had a journal row
    done_seconds: float  # from the first write until every job had finished
    generated: int  # generator calls during warm-up and load
    outcomes: dict[str, int]
    states: dict[str, int]
    blocks_before: int  # sys.getallocatedblocks() at rest after the warm-up
    blocks_after: int  # ... and at rest after the load
    objects_before: int  # gc-tracked objects, likewise
    objects_after: int
    rss_before_mb: float
    rss_after_mb: float
    peak_rss_mb: float  # VmHWM: the whole process's peak, warm-up and load included
    warnings: list[str] = field(default_factory=list)  # warning and error log events

    @property
    def jobs_per_second(self) -> float:
        """Jobs finished per second of the load phase."""
        return self.files / self.done_seconds if self.done_seconds else 0.0


def rss_mb(field_name: str = "VmRSS") -> float:
    """This process's resident set (or another /proc/self/status field) in MiB; 0 elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@contextmanager
def quiet_logs(warnings: list[str]) -> Iterator[None]:
    """Drop info events (10,000 jobs log ~50,000 lines); keep warnings and errors in a list."""
    saved = structlog.get_config()

    def keep(logger: Any, method: str, event: Any) -> Any:
        warnings.append(f"{method}: {event}")
        raise structlog.DropEvent

    structlog.configure(
        processors=[keep],
        wrapper_class=structlog.make_filtering_bound_logger(30),  # logging.WARNING
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


def at_rest() -> tuple[int, int, float]:
    """Allocated blocks, gc-tracked objects and RSS after a full collection."""
    gc.collect()
    return sys.getallocatedblocks(), len(gc.get_objects()), rss_mb()


def drop(inbox: Path, prefix: str, count: int) -> None:
    """Write ``count`` one-line prompt files into ``inbox`` as fast as possible."""
    for i in range(count):
        (inbox / f"{prefix}{i:06d}.txt").write_text(f"prompt {prefix} {i}\n", encoding="utf-8")


def run_load(
    root: Path,
    files: int,
    *,
    warmup: int = 100,
    settle: float = 0.5,
    timeout: float = 900.0,
    logs: bool = False,
    data_dir: Path | None = None,
) -> LoadFigures:
    """Start the service on ``root``, drop ``warmup`` files, then ``files`` at once; measure.

    The inbox and outbox go to ``data_dir`` when given, else beside the config in ``root``.
    """
    config = write_config(
        root, MODEL, steps=1, extra_daemon=f"settle_seconds = {settle}\nrescan_interval = 3600"
    )
    inbox = root / "inbox"
    if data_dir is not None:
        # Inbox and outbox elsewhere (tmpfs): the journal stays on disk beside the config.
        inbox, outbox = data_dir / "inbox", data_dir / "outbox"
        inbox.mkdir(parents=True)
        text = config.read_text(encoding="utf-8")
        text = text.replace('path = "inbox"', f"path = {json.dumps(str(inbox))}")
        text = text.replace('output = "outbox"', f"output = {json.dumps(str(outbox))}")
        config.write_text(text, encoding="utf-8")
    warnings: list[str] = []
    generator = CountingGenerator()
    outcomes: Counter[str] = Counter()

    def count(result: JobResult) -> None:
        outcomes[result.outcome.value] += 1

    with quiet_logs(warnings) if not logs else _nothing():
        service = Service(
            load_config(config), lambda: generator, on_result=count, notifier=Notifier({})
        )
        thread = threading.Thread(target=service.run, kwargs={"handle_signals": False}, daemon=True)
        thread.start()
        try:
            wait_until(lambda: service.watcher is not None and service.watcher.ready.is_set(), 60)
            journal = service.journal
            assert journal is not None

            def total() -> int:
                return sum(outcomes.values())

            drop(inbox, "w", warmup)
            wait_until(lambda: total() >= warmup, timeout, "the warm-up jobs")
            blocks_before, objects_before, rss_before = at_rest()

            started = time.monotonic()
            drop(inbox, "p", files)
            written = time.monotonic()
            wanted = warmup + files
            wait_until(
                lambda: sum(journal.counts().values()) >= wanted, timeout, "every journal row"
            )
            journaled = time.monotonic()
            wait_until(lambda: total() >= wanted, timeout, "every job")
            finished = time.monotonic()
            blocks_after, objects_after, rss_after = at_rest()
            states = {s.value: n for s, n in journal.counts().items() if n}
        finally:
            service.request_stop("load finished")
            thread.join(60)
    return LoadFigures(
        files=files,
        warmup=warmup,
        write_seconds=round(written - started, 2),
        journal_seconds=round(journaled - started, 2),
        done_seconds=round(finished - started, 2),
        generated=generator.calls,
        outcomes=dict(outcomes),
        states=states,
        blocks_before=blocks_before,
        blocks_after=blocks_after,
        objects_before=objects_before,
        objects_after=objects_after,
        rss_before_mb=round(rss_before, 1),
        rss_after_mb=round(rss_after, 1),
        peak_rss_mb=round(rss_mb("VmHWM"), 1),
        warnings=warnings,
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--dir", type=Path, default=None, help="where config and journal go")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where inbox and outbox go (e.g. /dev/shm)"
    )
    parser.add_argument("--logs", action="store_true", help="keep the daemon's info logs")
    parser.add_argument("--json", action="store_true", help="print figures as JSON lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one load per --files value, each in a fresh folder and service; print the figures."""
    args = parse_args(argv)
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        flush=True,
    )
    print(
        "| files | written (s) | journaled (s) | done (s) | jobs/s | blocks kept | "
        "objects kept | RSS before → after (MiB) | peak RSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for files in args.files:
        root = Path(tempfile.mkdtemp(prefix="dropforge-load-", dir=args.dir))
        data = Path(tempfile.mkdtemp(prefix="dropforge-load-", dir=args.data_dir))
        try:
            figures = run_load(
                root,
                files,
                warmup=args.warmup,
                settle=args.settle,
                logs=args.logs,
                data_dir=data if args.data_dir else None,
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
        if args.json:
            print(json.dumps({**asdict(figures), "jobs_per_second": figures.jobs_per_second}))
        print(
            f"| {files:,} | {figures.write_seconds} | {figures.journal_seconds} | "
            f"{figures.done_seconds} | {figures.jobs_per_second:.0f} | "
            f"{figures.blocks_after - figures.blocks_before:+,} | "
            f"{figures.objects_after - figures.objects_before:+,} | "
            f"{figures.rss_before_mb} → {figures.rss_after_mb} | {figures.peak_rss_mb} |",
            flush=True,
        )
        for warning in figures.warnings:
            print(f"  {warning}")
        if figures.states.get(JobState.done.value) != files + args.warmup:
            print(f"  not all done: {figures.states}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
