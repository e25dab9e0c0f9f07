"""Benchmarks of the performance issue: each measures a ratio against its baseline in one run.

Subcommands (each prints the machine, the medians of ``--runs`` runs and a markdown table row):

- ``overhead``: ``dropforge once`` on 40 prompt files vs a plain diffusers script, both processes
- ``resident``: 40 mixed jobs with resident pipelines vs a fresh pipeline load per job
- ``rescan``: a restart over N already-done inputs vs a bare ``os.scandir`` + ``stat`` walk
- ``reaction``: ``dropforge run``, files dropped one by one: final write → job start vs settle
- ``startup``: ``dropforge --help`` / ``check`` / ``status`` vs ``python -c pass``
- ``memory``: peak RSS after 10 jobs vs after 1,000 jobs in a row
- ``batching``: ``count = 8`` in one pipeline call vs 8 single calls

Not a test: nothing is asserted. The tiny random-weight model is written to a temporary folder.
Example::

    python bench/perf.py overhead --runs 5
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

# Run from a checkout without installing: the package lives one folder up.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from daemon.config import load_config  # noqa: E402
from daemon.generators.tiny import TINY_SD_SUBDIR, write_tiny_models  # noqa: E402

PYTHON = sys.executable
_SCRIPT = Path(PYTHON).with_name("dropforge")
DROPFORGE = [str(_SCRIPT)] if _SCRIPT.is_file() else [PYTHON, "-m", "daemon"]

# The baseline of `overhead`: what a person would write to make the same 40 images.
PLAIN_SCRIPT = """\
import sys
from pathlib import Path

import torch
from diffusers import AutoPipelineForText2Image

model, inbox, out, steps, size = sys.argv[1:6]
pipe = AutoPipelineForText2Image.from_pretrained(
    model, dtype=torch.float32, use_safetensors=True, local_files_only=True
)
pipe.set_progress_bar_config(disable=True)
out = Path(out)
out.mkdir(parents=True, exist_ok=True)
for i, path in enumerate(sorted(Path(inbox).glob("*.txt"))):
    image = pipe(
        path.read_text(encoding="utf-8").strip(),
        negative_prompt="",
        num_inference_steps=int(steps),
        width=int(size),
        height=int(size),
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(i),
    ).images[0]
    image.save(out / f"{path.stem}.png")
"""


# --- shared -----------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        return names[0] if names else cpu
    except OSError:
        return cpu


def machine() -> str:
    """Describe the machine the numbers come from (without importing torch)."""
    cpu = cpu_name()
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "not installed"
    try:
        load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        load = ""
    return (
        f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs{load}, "
        f"Python {platform.python_version()}, torch {torch}"
    )


def header(title: str, runs: int) -> None:
    """Print what is measured and where."""
    print(f"# {title}")
    print(f"machine: {machine()}")
    print(f"median of {runs} runs")


def row(cells: Sequence[object]) -> None:
    """Print one markdown table row."""
    print("| " + " | ".join(str(c) for c in cells) + " |")


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


def timed(
    command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> float:
    """Run ``command``; return its wall-clock seconds; fail loudly when it fails."""
    return timed_cpu(command, env, cwd)[0]


def timed_cpu(
    command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, float]:
    """Run ``command``; return its wall-clock and CPU (user + system) seconds.

    CPU seconds barely move when other work shares the cores; wall-clock seconds do.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu


def thread_env(threads: int | None) -> dict[str, str]:
    """The environment of child processes: offline, and the same torch thread count for all."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def tiny_models(scratch: Path) -> Path:
    """Write the tiny models once; return the ``sd`` folder."""
    folder = scratch / "models"
    if not (folder / TINY_SD_SUBDIR).is_dir():
        write_tiny_models(folder)
    return folder / TINY_SD_SUBDIR


def write_config(
    root: Path, model: Path, *, steps: int = 2, size: int = 64, daemon: str = ""
) -> Path:
    """A config.toml for root/inbox → root/outbox with state in root/state."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "inbox").mkdir(exist_ok=True)
    path = root / "config.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [daemon]
            state_dir = "state"
            device = "cpu"
            min_free_mb = 0
            log_format = "json"
            {daemon}

            [[inbox]]
            path = "inbox"
            output = "outbox"

            [models]
            default = "{model}"

            [defaults]
            preset = "standard"
            width = {size}
            height = {size}

            [presets.standard]
            steps = {steps}
            """
        ),
        encoding="utf-8",
    )
    return path


def write_prompts(folder: Path, count: int, *, per_folder: int = 0) -> list[Path]:
    """Write ``count`` distinct prompt files (in subfolders of ``per_folder`` when given)."""
    paths = []
    for i in range(count):
        where = folder / f"d{i // per_folder:04d}" if per_folder else folder
        if per_folder and i % per_folder == 0:
            where.mkdir(parents=True, exist_ok=True)
        path = where / f"p{i:06d}.txt"
        path.write_text(f"a lighthouse at dusk, number {i}\n", encoding="utf-8")
        paths.append(path)
    return paths


def rss_kb() -> tuple[int, int]:
    """(peak RSS, current RSS) of this process in KiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open("/proc/self/statm", encoding="ascii") as handle:
        current = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return peak, current


def daemon_logging(settings: Any) -> None:
    """Log as `dropforge once` does: JSON lines to the state folder, nothing on the terminal."""
    from daemon.runtime.logs import configure_logging

    configure_logging(
        "json",
        level=logging.ERROR,
        stream=open(os.devnull, "w", encoding="utf-8"),  # noqa: SIM115 (lives with the process)
        logfile=settings.state_dir / "logs" / "dropforge.log",
    )


def fake_generator() -> Any:
    """The fast fake generator of the test suite (solid-colour images)."""
    from tests.fakes import SolidGenerator

    return SolidGenerator()


def no_generator() -> Any:
    """A generator factory for runs that must not generate anything."""
    raise AssertionError("a restart over done inputs must not need a generator")


# --- overhead ---------------------------------------------------------------------------


def bench_overhead(args: argparse.Namespace, scratch: Path) -> None:
    """`dropforge once` on N prompt files vs a plain script, both real processes."""
    model = tiny_models(scratch)
    env = thread_env(args.threads)
    plain = scratch / "plain.py"
    plain.write_text(PLAIN_SCRIPT, encoding="utf-8")
    header(f"overhead: dropforge once vs plain diffusers, {args.jobs} prompt files", args.runs)
    print(
        f"tiny model, {args.size}x{args.size}, {args.steps} steps, 1 image each, "
        f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset (torch default)')}"
    )
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    for run in range(args.runs + 1):  # run 0 warms the page cache and is not counted
        root = scratch / f"run{run}"
        config = write_config(root, model, steps=args.steps, size=args.size)
        write_prompts(root / "inbox", args.jobs)
        # Alternate which goes first, so a slow patch of the shared machine hits both.
        order = [0, 1] if run % 2 else [1, 0]
        seconds = [(0.0, 0.0), (0.0, 0.0)]
        for which in order:
            if which == 0:
                seconds[0] = timed_cpu([*DROPFORGE, "once", "-c", str(config)], env, root)
                made = list((root / "outbox").rglob("p*.png"))
                if len(made) != args.jobs:
                    raise SystemExit(f"dropforge made {len(made)} images, expected {args.jobs}")
            else:
                command = [PYTHON, str(plain), str(model), str(root / "inbox"), str(root / "plain")]
                seconds[1] = timed_cpu([*command, str(args.steps), str(args.size)], env, root)
        if run:
            ours.append(seconds[0])
            theirs.append(seconds[1])
            print(
                f"run {run}: dropforge {seconds[0][0]:.3f} s ({seconds[0][1]:.3f} s CPU), "
                f"plain {seconds[1][0]:.3f} s ({seconds[1][1]:.3f} s CPU)"
            )
    print()
    row(["measure", "jobs", "dropforge once (s)", "plain script (s)", "ratio", "per job (ms)"])
    row(["---"] + ["---:"] * 5)
    for index, name in ((0, "wall clock"), (1, "CPU time")):
        a = [x[index] for x in ours]
        b = [x[index] for x in theirs]
        ratio = median([x / y for x, y in zip(a, b, strict=True)])
        extra = (median(a) - median(b)) / args.jobs * 1000
        row(
            [
                name,
                args.jobs,
                f"{median(a):.3f}",
                f"{median(b):.3f}",
                f"{ratio:.3f}x",
                f"{extra:+.1f}",
            ]
        )
    print("target: <= 1.10x (aim 1.03x), process start included")


# --- resident ---------------------------------------------------------------------------


class _ReloadEachJob:
    """The baseline of `resident`: the real backend, its pipelines dropped before every job."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_images(self, request: Any, events: Any) -> None:
        self.inner.unload()
        self.inner.generate_images(request, events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _mixed_inbox(inbox: Path, jobs: int, size: int) -> dict[str, int]:
    """Write ``jobs`` inputs cycling text2image, variations and inpaint; return the counts."""
    from PIL import Image

    counts = {"text2image": 0, "variations": 0, "inpaint": 0}
    for i in range(jobs):
        task = ("text2image", "variations", "inpaint")[i % 3]
        counts[task] += 1
        if task == "text2image":
            (inbox / f"j{i:03d}.txt").write_text(f"a red fox, study {i}\n", encoding="utf-8")
            continue
        image = Image.effect_noise((size, size), 40 + i).convert("RGB")
        image.save(inbox / f"j{i:03d}.png")
        (inbox / f"j{i:03d}.toml").write_text(f'prompt = "a fox, take {i}"\n', encoding="utf-8")
        if task == "inpaint":
            mask = Image.new("L", (size, size), 0)
            mask.paste(255, (size // 2, 0, size, size))
            mask.save(inbox / f"j{i:03d}.mask.png")
    return counts


def bench_resident(args: argparse.Namespace, scratch: Path) -> None:
    """40 mixed jobs through dropforge with resident pipelines vs a fresh load per job."""
    from daemon.generators import residents
    from daemon.generators.diffusers_backend import DiffusersGenerator
    from daemon.runtime.once import run_once
    from daemon.runtime.worker import Outcome

    model = tiny_models(scratch)
    loads = [0]
    load = residents.load_image_pipeline

    def counted(*a: Any, **k: Any) -> Any:
        loads[0] += 1
        return load(*a, **k)

    # Counting only: every load still goes through the real loader.
    residents.load_image_pipeline = counted  # type: ignore[assignment]
    header(f"resident: {args.jobs} mixed jobs, resident pipelines vs a load per job", args.runs)
    times: dict[str, list[float]] = {"resident": [], "reload": []}
    load_counts: dict[str, list[int]] = {"resident": [], "reload": []}
    counts: dict[str, int] = {}
    for run in range(args.runs):
        for way in ("resident", "reload") if run % 2 else ("reload", "resident"):
            root = scratch / f"{way}{run}"
            config = write_config(root, model, steps=args.steps, size=args.size)
            counts = _mixed_inbox(root / "inbox", args.jobs, args.size)
            settings = load_config(config)
            generator = DiffusersGenerator("cpu", threads=args.threads)
            backend = generator if way == "resident" else _ReloadEachJob(generator)
            loads[0] = 0
            started = time.perf_counter()
            daemon_logging(settings)
            report = run_once(settings, lambda backend=backend: backend)
            seconds = time.perf_counter() - started
            done = [r for r in report.results if r.outcome is Outcome.done]
            if len(done) != args.jobs:
                raise SystemExit(f"{way}: {len(done)} jobs done, expected {args.jobs}")
            times[way].append(seconds)
            load_counts[way].append(loads[0])
            print(f"run {run + 1} {way}: {seconds:.3f} s, {loads[0]} pipeline loads")
    print(f"jobs: {counts}; tiny model, {args.size}x{args.size}, {args.steps} steps")
    print()
    speedup = [b / a for a, b in zip(times["resident"], times["reload"], strict=True)]
    row(["jobs", "resident (s)", "loads", "load per job (s)", "loads", "speed-up"])
    row(["---:"] * 6)
    row(
        [
            args.jobs,
            f"{median(times['resident']):.3f}",
            max(load_counts["resident"]),
            f"{median(times['reload']):.3f}",
            min(load_counts["reload"]),
            f"{median(speedup):.2f}x",
        ]
    )


# --- rescan -----------------------------------------------------------------------------


def bare_walk(folder: Path) -> int:
    """The baseline of `rescan`: every entry of the tree listed and stat'ed, nothing else."""
    files = 0
    stack = [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                entry.stat()
                if entry.is_dir():
                    stack.append(entry.path)
                else:
                    files += 1
    return files


def done_tree(scratch: Path, count: int, per_folder: int) -> Path:
    """An inbox of ``count`` prompt files made done by a first run (fake generator, in-process).

    The first run takes the real path (scan, survey, claim, PNG and manifest writes, journal
    commits); only the pixels come from the fake generator.
    """
    from daemon.runtime.once import run_once

    root = scratch / f"rescan{count}"
    config = write_config(root, tiny_models(scratch))
    if not (root / "state").exists():
        write_prompts(root / "inbox", count, per_folder=per_folder)
        started = time.perf_counter()
        generator = fake_generator()
        settings = load_config(config)
        daemon_logging(settings)
        report = run_once(settings, lambda: generator)
        if len(report.results) != count:
            raise SystemExit(f"first run made {len(report.results)} jobs, expected {count}")
        print(f"{count} inputs made done in {time.perf_counter() - started:.1f} s (first run)")
    return config


def forget_folder_marks(settings: Any) -> None:
    """Drop the journal's folder marks: the next restart checks every input on its own."""
    db = sqlite3.connect(settings.journal_path)
    with db:
        db.execute("DELETE FROM folder_marks")
    db.close()


def bench_rescan(args: argparse.Namespace, scratch: Path) -> None:
    """A restart over N done inputs (scan path in-process) vs a bare scandir + stat walk.

    First one restart without folder marks (every input checked on its own, the marks
    recorded), then ``--runs`` restarts that find the marks.
    """
    from daemon.runtime.once import run_once

    sizes = list(args.sizes) + ([100_000] if args.huge else [])
    header("rescan: a restart over already-done inputs vs a bare scandir + stat walk", args.runs)
    results = []
    for count in sizes:
        config = done_tree(scratch, count, args.per_folder)
        settings = load_config(config)
        inbox = settings.inboxes[0].path
        walk: list[float] = []
        ours: list[float] = []
        process: list[float] = []
        forget_folder_marks(settings)
        started = time.perf_counter()
        daemon_logging(settings)
        report = run_once(settings, no_generator)
        unmarked = time.perf_counter() - started
        if report.skipped != count or report.results:
            raise SystemExit(f"restart skipped {report.skipped} of {count} and ran jobs")
        for _ in range(args.runs):
            started = time.perf_counter()
            files = bare_walk(inbox)
            walk.append(time.perf_counter() - started)
            started = time.perf_counter()
            daemon_logging(settings)
            report = run_once(settings, no_generator)
            ours.append(time.perf_counter() - started)
            if report.skipped != count or report.results:
                raise SystemExit(f"restart skipped {report.skipped} of {count} and ran jobs")
        for _ in range(max(1, args.runs // 2)):
            process.append(timed([*DROPFORGE, "once", "-c", str(config)], thread_env(None)))
        print(f"{count}: {files} files walked; once process {median(process):.3f} s")
        print(f"  restart without folder marks (s): {unmarked:.3f}")
        print(f"  restart runs (s): {', '.join(f'{x:.3f}' for x in ours)}")
        print(f"  bare walk runs (s): {', '.join(f'{x:.4f}' for x in walk)}")
        results.append((count, median(walk), median(ours), median(process), unmarked))
    print()
    header_cells = ["inputs", "bare walk (s)", "restart (s)", "ratio", "per input (µs)"]
    row([*header_cells, "without marks (s)", "ratio", "`once` (s)"])
    row(["---:"] * 8)
    for count, walk_s, ours_s, process_s, unmarked_s in results:
        row(
            [
                f"{count:,}",
                f"{walk_s:.3f}",
                f"{ours_s:.3f}",
                f"{ours_s / walk_s:.2f}x",
                f"{ours_s / count * 1e6:.1f}",
                f"{unmarked_s:.3f}",
                f"{unmarked_s / walk_s:.1f}x",
                f"{process_s:.2f}",
            ]
        )


# --- reaction ---------------------------------------------------------------------------


def _log_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """JSON log lines appended after ``offset``; return them and the new offset."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + end


def _stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def _wait_for(
    log: Path, state: dict[str, Any], wanted: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """Poll the log until an event matches; keep every event seen in ``state['seen']``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events, state["offset"] = _log_events(log, state["offset"])
        state["seen"] += events
        for event in state["seen"]:
            if wanted(event):
                return event
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting in {log}")


def bench_reaction(args: argparse.Namespace, scratch: Path) -> None:
    """`dropforge run`: files dropped one by one; final write → job.started vs settle_seconds."""
    model = tiny_models(scratch)
    root = scratch / "reaction"
    config = write_config(
        root, model, steps=args.steps, size=args.size, daemon=f"settle_seconds = {args.settle}"
    )
    log = root / "state" / "logs" / "dropforge.log"
    process = subprocess.Popen(
        [*DROPFORGE, "run", "-c", str(config)],
        env=thread_env(args.threads),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    header(f"reaction: dropforge run, {args.files} files dropped one by one", 1)
    print(f"settle_seconds = {args.settle}, native events (inotify), tiny model")
    state: dict[str, Any] = {"offset": 0, "seen": []}
    delays: list[float] = []
    settled: list[float] = []
    try:
        _wait_for(log, state, lambda e: e.get("event") == "service.ready", 120)
        for i in range(args.files):
            name = f"drop{i:04d}.txt"
            path = root / "inbox" / name
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(f"a kite over the dunes, {i}\n")
            written = time.time()
            start = _wait_for(
                log,
                state,
                lambda e, n=name: e.get("event") == "job.started" and e.get("input") == n,
                60,
            )
            _wait_for(
                log,
                state,
                lambda e, n=name: e.get("event") == "job.done" and e.get("input") == n,
                60,
            )
            settle = next(
                e
                for e in state["seen"]
                if e.get("event") == "intake.settled" and e.get("input") == name
            )
            delays.append(_stamp(start) - written)
            settled.append(_stamp(settle) - written)
            state["seen"] = []
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    print(
        f"write → intake.settled: median {median(settled):.3f} s, "
        f"p95 {percentile(settled, 0.95):.3f} s"
    )
    print()
    row(["files", "settle (s)", "median (s)", "p95 (s)", "max (s)", "p95 - settle (s)", "target"])
    row(["---:"] * 6 + ["---"])
    p95 = percentile(delays, 0.95)
    row(
        [
            args.files,
            f"{args.settle:g}",
            f"{median(delays):.3f}",
            f"{p95:.3f}",
            f"{max(delays):.3f}",
            f"{p95 - args.settle:+.3f}",
            "<= +0.2",
        ]
    )


# --- startup ----------------------------------------------------------------------------

HEAVY = ("torch", "diffusers", "transformers")


def heavy_imports(argv: Sequence[str], cwd: Path) -> list[str]:
    """The heavy modules a CLI command imports (run in a fresh interpreter)."""
    code = (
        "import sys\nfrom daemon.cli import main\n"
        f"try:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [PYTHON, "-c", code], env=thread_env(None), cwd=cwd, capture_output=True, text=True
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("HEAVY")][-1]
    return list(json.loads(line[6:].replace("'", '"')))


def bench_startup(args: argparse.Namespace, scratch: Path) -> None:
    """`dropforge --help`, `check`, `status` vs `python -c pass`, each a fresh process."""
    from daemon.runtime.once import run_once

    root = scratch / "startup"
    config = write_config(root, tiny_models(scratch))
    write_prompts(root / "inbox", 5)
    generator = fake_generator()
    settings = load_config(config)
    daemon_logging(settings)
    run_once(settings, lambda: generator)  # status has a journal to read
    commands = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "dropforge --help": [*DROPFORGE, "--help"],
        "dropforge check": [*DROPFORGE, "check", "-c", str(config), "inbox/p000000.txt"],
        "dropforge status": [*DROPFORGE, "status", "-c", str(config)],
    }
    header("startup: CLI commands vs python -c pass", args.runs)
    times: dict[str, list[float]] = {name: [] for name in commands}
    env = thread_env(None)
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(timed(command, env, root))
    argv = {
        "dropforge --help": ["--help"],
        "dropforge check": ["check", "-c", str(config), "inbox/p000000.txt"],
        "dropforge status": ["status", "-c", str(config)],
    }
    print()
    row(["command", "median (s)", "more than python -c pass (s)", "heavy modules imported"])
    row(["---", "---:", "---:", "---"])
    base = median(times["python -c pass"])
    row(["python -c pass", f"{base:.3f}", "", ""])
    for name, argv_ in argv.items():
        imported = heavy_imports(argv_, root)
        more = median(times[name]) - base
        row(
            [
                f"`{name}`",
                f"{median(times[name]):.3f}",
                f"{more:+.3f}",
                ", ".join(imported) or "none",
            ]
        )


# --- memory -----------------------------------------------------------------------------


def bench_memory(args: argparse.Namespace, scratch: Path) -> None:
    """Peak RSS after the first 10 jobs vs after all ``--jobs`` jobs of one run."""
    from daemon.runtime.once import run_once
    from daemon.runtime.worker import Progress

    root = scratch / "memory"
    config = write_config(root, tiny_models(scratch), steps=args.steps, size=args.size)
    write_prompts(root / "inbox", args.jobs, per_folder=100)
    if args.generator == "fake":
        generator = fake_generator()
    else:
        from daemon.generators.diffusers_backend import DiffusersGenerator

        generator = DiffusersGenerator("cpu", threads=args.threads)
    samples: list[tuple[int, int]] = []
    progress = Progress(on_start=lambda job, total: samples.append(rss_kb()))
    header(f"memory: {args.jobs} jobs in a row, {args.generator} generator, in-process", 1)
    started = time.perf_counter()
    settings = load_config(config)
    daemon_logging(settings)
    report = run_once(settings, lambda: generator, progress=progress)
    samples.append(rss_kb())
    seconds = time.perf_counter() - started
    print(f"{len(report.results)} jobs in {seconds:.1f} s")
    marks = [m for m in (10, 100, args.jobs) if m <= args.jobs]
    print()
    row(["after job", "peak RSS (MiB)", "current RSS (MiB)"])
    row(["---:", "---:", "---:"])
    for mark in marks:
        peak, current = samples[mark]  # sample k is taken as job k+1 starts: k jobs finished
        row([mark, f"{peak / 1024:.1f}", f"{current / 1024:.1f}"])
    first, last = samples[10][0], samples[args.jobs][0]
    hundred = samples[min(100, args.jobs)][0]
    per_job = (last - hundred) / max(1, args.jobs - 100)
    print()
    print(
        f"peak growth from job 10 to job {args.jobs}: {(last - first) / 1024:+.1f} MiB; "
        f"from job 100 on: {per_job:+.2f} KiB per job"
    )


# --- batching ---------------------------------------------------------------------------


def bench_batching(args: argparse.Namespace, scratch: Path) -> None:
    """``count`` images in one pipeline call vs one call per image (the real backend)."""
    from daemon.generators import GenerationEvents, ImageRequest, ImageSpec
    from daemon.generators.diffusers_backend import DiffusersGenerator
    from daemon.values import ModelSource

    model = ModelSource("default", "folder", str(tiny_models(scratch)))
    generator = DiffusersGenerator("cpu", threads=args.threads)
    specs = tuple(
        ImageSpec(i, "a lighthouse at dusk", "", 100 + i, args.steps, 7.5, 0.6)
        for i in range(args.count)
    )
    made: list[int] = []
    events = GenerationEvents(on_image=lambda index, image: made.append(index))

    def make(max_batch: int) -> float:
        request = ImageRequest(
            "text2image", model, args.size, args.size, specs, max_batch=max_batch
        )
        made.clear()
        started = time.perf_counter()
        generator.generate_images(request, events)
        seconds = time.perf_counter() - started
        if sorted(made) != list(range(args.count)):
            raise SystemExit(f"made {made}")
        return seconds

    make(1)  # loads the model; not timed
    header(f"batching: count = {args.count} in one call vs {args.count} single calls", args.runs)
    print(f"tiny model, {args.size}x{args.size}, {args.steps} steps, on {generator.device_name()}")
    single: list[float] = []
    batched: list[float] = []
    for run in range(args.runs):
        for way in (1, args.count) if run % 2 else (args.count, 1):
            (single if way == 1 else batched).append(make(way))
    print()
    row(
        [
            "images",
            "single calls (s)",
            "one call (s)",
            "speed-up",
            "images/s single",
            "images/s one call",
        ]
    )
    row(["---:"] * 6)
    row(
        [
            args.count,
            f"{median(single):.3f}",
            f"{median(batched):.3f}",
            f"{median(single) / median(batched):.2f}x",
            f"{args.count / median(single):.1f}",
            f"{args.count / median(batched):.1f}",
        ]
    )


# --- command line -----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=None, help="work folder (kept)")
    sub = parser.add_subparsers(dest="bench", required=True)

    def add(name: str, runs: int, **extra: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=BENCHES[name].__doc__)
        p.add_argument("--runs", type=int, default=runs, help="timed runs (median)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.add_argument("--steps", type=int, default=2)
        p.add_argument("--size", type=int, default=64)
        for flag, default in extra.items():
            p.add_argument(f"--{flag}", type=type(default), default=default)
        return p

    add("overhead", 5, jobs=40)
    add("resident", 5, jobs=40)
    p = add("rescan", 5, per_folder=1000)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    p.add_argument("--huge", action="store_true", help="also 100,000 inputs (minutes)")
    add("reaction", 1, files=200, settle=1.0)
    add("startup", 10)
    p = add("memory", 1, jobs=1000)
    p.add_argument("--generator", choices=("fake", "tiny"), default="fake")
    add("batching", 5, count=8)
    return parser.parse_args(argv)


BENCHES: dict[str, Callable[[argparse.Namespace, Path], None]] = {
    "overhead": bench_overhead,
    "resident": bench_resident,
    "rescan": bench_rescan,
    "reaction": bench_reaction,
    "startup": bench_startup,
    "memory": bench_memory,
    "batching": bench_batching,
}


def _scratch(args: argparse.Namespace) -> Iterator[Path]:
    if args.scratch is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
        yield args.scratch.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="dropforge-bench-") as folder:
        yield Path(folder)


def main(argv: list[str] | None = None) -> None:
    """Run one benchmark."""
    args = parse_args(argv)
    for scratch in _scratch(args):
        BENCHES[args.bench](args, scratch)


if __name__ == "__main__":
    main()
