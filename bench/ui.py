"""Benchmarks of queue control and the web UI.

Subcommands (each prints the machine and a markdown table row):

- ``progress``: a progress write to the journal → the text on the page (a real headless
  Chromium when Debian's chromium is there, else a server-sent-events client); p50/p95/max
- ``cancel``: `dropforge run` on the tiny model; a cancel committed to the journal → the daemon
  hears it → the job is canceled, against the time of one denoising step
- ``overhead``: 20 jobs through `dropforge run` with the web UI on and a page open vs with
  ``[ui] enabled = false`` (wall clock from the first job.started to the last job.done, and
  the daemon's CPU seconds), alternating which goes first

Not a test: nothing is asserted. Example::

    python bench/ui.py progress --samples 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import (
    DROPFORGE,
    ROOT,
    _stamp,
    _wait_for,
    header,
    median,
    percentile,
    row,
    thread_env,
    tiny_models,
    write_config,
    write_prompts,
)

from daemon.config import load_config
from daemon.runtime import control
from daemon.runtime.recovery import owner_id
from daemon.store.rows import PlannedFile
from daemon.store.sqlite import SqliteJournal

CHROMIUM = Path("/usr/lib/chromium/chromium")


# --- progress ---------------------------------------------------------------------------


@contextmanager
def page_watcher(url: str) -> Iterator[Callable[[str], float | None]]:
    """Yield ``seen(text)``: when the page first showed ``text`` (epoch seconds), or None."""
    if CHROMIUM.exists():
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page()
            page.add_init_script(
                "window.__seen = {}; new MutationObserver(() => {"
                " const t = document.querySelector('#running .muted');"
                " if (t && !(t.textContent in window.__seen))"
                "   window.__seen[t.textContent] = performance.timeOrigin + performance.now();"
                "}).observe(document, {subtree: true, childList: true, characterData: true});"
            )
            page.goto(url)
            page.wait_for_selector("#stream.live")
            print("measured to: the DOM of a headless Chromium page")

            def seen(text: str) -> float | None:
                found = page.evaluate(
                    "(text) => { for (const [k, v] of Object.entries(window.__seen))"
                    " if (k.includes(text)) return v / 1000; return null; }",
                    text,
                )
                return None if found is None else float(found)

            yield seen
            browser.close()
        return
    import httpx

    print("measured to: a server-sent events client (no chromium here)")
    arrivals: dict[str, float] = {}
    stop = threading.Event()

    def listen() -> None:
        with httpx.Client(timeout=None) as client, client.stream("GET", url + "api/events") as r:
            for line in r.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("data: "):
                    now = time.time()
                    for job in json.loads(line[6:]).get("running", []):
                        arrivals.setdefault(job["note"], now)

    threading.Thread(target=listen, daemon=True).start()
    yield lambda text: next((t for k, t in arrivals.items() if text in k), None)
    stop.set()


def bench_progress(args: argparse.Namespace, scratch: Path) -> None:
    """A progress write to the journal → the page shows it (target p95 ≤ 0.5 s)."""
    from daemon.ui.server import WebUI

    root = scratch / "progress"
    config = write_config(root, root / "no-model", daemon="")
    with open(config, "a", encoding="utf-8") as handle:
        handle.write('\n[ui]\nlisten = "127.0.0.1:0"\n')
    settings = load_config(config)
    journal = SqliteJournal(settings.journal_path)
    planned = [PlannedFile(f"cat/cat-{n}.png", n) for n in range(8)]
    job, _ = journal.upsert_job(
        inbox=str(root / "inbox"), input="cat.png", kind="image", fingerprint="f", job_key="k",
        out_dir=str(root / "outbox" / "cat"), task="variations", planned=planned,
    )  # fmt: skip
    journal.claim(owner_id(), 3600)
    ui = WebUI(settings, required=True)
    ui.start()
    assert ui.url is not None
    header(f"progress: journal write → page, {args.samples} writes", 1)
    latencies: list[float] = []
    try:
        with page_watcher(ui.url) as seen:
            for n in range(args.samples):
                note = f"step {n + 1}/{args.samples}"
                written = time.time()
                journal.set_progress(job.id, n % 8, 8, note)
                deadline = time.monotonic() + 10
                while (shown := seen(f"· {note} ·")) is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                if shown is None:
                    raise SystemExit(f"the page never showed {note!r}")
                latencies.append(shown - written)
                time.sleep(args.interval)
    finally:
        ui.stop()
        journal.close()
    print()
    row(["writes", "interval (s)", "median (s)", "p95 (s)", "max (s)", "target"])
    row(["---:"] * 5 + ["---"])
    p95 = percentile(latencies, 0.95)
    row([args.samples, args.interval, f"{median(latencies):.3f}", f"{p95:.3f}",
         f"{max(latencies):.3f}", "p95 <= 0.5"])  # fmt: skip


# --- cancel -----------------------------------------------------------------------------


def bench_cancel(args: argparse.Namespace, scratch: Path) -> None:
    """A cancel of the running job → heard → canceled, against the time of one step."""
    model = tiny_models(scratch)
    root = scratch / "cancel"
    config = write_config(
        root, model, steps=args.steps, size=args.size,
        daemon="max_batch = 1\nsettle_seconds = 0.2\nrescan_interval = 3600",
    )  # fmt: skip
    with open(config, "a", encoding="utf-8") as handle:
        handle.write("\n[ui]\nenabled = false\n")
    log = root / "state" / "logs" / "dropforge.log"
    process = subprocess.Popen(
        [*DROPFORGE, "run", "-c", str(config)], env=thread_env(args.threads), cwd=root,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    header(f"cancel: dropforge run, {args.runs} cancels of a running job", args.runs)
    state: dict[str, Any] = {"offset": 0, "seen": []}
    heard: list[float] = []
    stopped: list[float] = []
    steps: list[float] = []
    settings = load_config(config)
    try:
        _wait_for(log, state, lambda e: e.get("event") == "service.ready", 120)
        from tests.helpers import noise_image

        noise_image(root / "inbox" / "long.png")
        (root / "inbox" / "long.toml").write_text("count = 20\nseed = 1\n", encoding="utf-8")
        for _ in range(args.runs):
            _wait_for(log, state, lambda e: e.get("event") == "output.written", 300)
            time.sleep(args.delay)
            with SqliteJournal(settings.journal_path) as journal:
                (job,) = journal.running()
                control.cancel(journal, [job])
                committed = time.time()
            event = _wait_for(log, state, lambda e: e.get("event") == "job.cancel_heard", 60)
            done = _wait_for(log, state, lambda e: e.get("event") == "job.canceled", 60)
            heard.append(_stamp(event) - committed)
            stopped.append(_stamp(done) - committed)
            begun = [e for e in state["seen"] if e.get("event") == "job.started"]
            written = [e for e in state["seen"] if e.get("event") == "output.written"]
            if begun and written and _stamp(written[0]) > _stamp(begun[-1]):
                # The first image of a resumed job (pipelines resident): its steps' time.
                per_image = _stamp(written[0]) - _stamp(begun[-1])
                steps.append(per_image / max(1, int(args.steps * 0.6)))
            with SqliteJournal(settings.journal_path) as journal:
                control.retry(journal, [journal.get(job.id)])
            state["seen"] = []
    finally:
        process.terminate()
        process.wait(60)
    print()
    row(["cancels", "heard p50 (s)", "heard max (s)", "canceled p50 (s)", "canceled max (s)",
         "one step p50 (s)", "heard → canceled, max (steps)"])  # fmt: skip
    row(["---:"] * 7)
    step = median(steps) if steps else float("nan")
    gap = max(s - h for s, h in zip(stopped, heard, strict=True)) / step
    row([args.runs, f"{median(heard):.3f}", f"{max(heard):.3f}", f"{median(stopped):.3f}",
         f"{max(stopped):.3f}", f"{step:.3f}", f"{gap:.2f}"])  # fmt: skip


# --- overhead ---------------------------------------------------------------------------


def _daemon_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _one_run(scratch: Path, model: Path, args: argparse.Namespace, ui: bool) -> tuple[float, float]:
    root = Path(tempfile.mkdtemp(dir=scratch, prefix="ui-on-" if ui else "ui-off-"))
    config = write_config(root, model, steps=args.steps, size=args.size,
                          daemon="settle_seconds = 0.2\nrescan_interval = 3600")  # fmt: skip
    with open(config, "a", encoding="utf-8") as handle:
        handle.write('\n[ui]\nlisten = "127.0.0.1:0"\n' if ui else "\n[ui]\nenabled = false\n")
    log = root / "state" / "logs" / "dropforge.log"
    process = subprocess.Popen(
        [*DROPFORGE, "run", "-c", str(config)], env=thread_env(args.threads), cwd=root,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    state: dict[str, Any] = {"offset": 0, "seen": []}
    try:
        _wait_for(log, state, lambda e: e.get("event") == "service.ready", 120)
        url = _ui_url(root / "state" / "daemon.json") if ui else ""
        with page_watcher(url) if ui else _nothing() as _seen:
            write_prompts(root / "inbox", args.jobs)

            def all_done(event: dict[str, Any]) -> bool:
                return sum(x.get("event") == "job.done" for x in state["seen"]) >= args.jobs

            _wait_for(log, state, all_done, 600)
            cpu = _daemon_cpu(process.pid)
        starts = [_stamp(e) for e in state["seen"] if e.get("event") == "job.started"]
        ends = [_stamp(e) for e in state["seen"] if e.get("event") == "job.done"]
        return max(ends) - min(starts), cpu
    finally:
        process.terminate()
        process.wait(60)


def _ui_url(presence: Path) -> str:
    """The web UI's address, once the daemon has announced it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            url = json.loads(presence.read_text(encoding="utf-8")).get("ui")
        except (OSError, ValueError):
            url = None
        if url:
            return str(url)
        time.sleep(0.05)
    raise SystemExit(f"no web UI announced in {presence}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def bench_overhead(args: argparse.Namespace, scratch: Path) -> None:
    """20 jobs with the web UI and an open page vs without the UI."""
    model = tiny_models(scratch)
    header(f"overhead: {args.jobs} jobs, web UI with a page open vs no web UI", args.runs)
    on: list[tuple[float, float]] = []
    off: list[tuple[float, float]] = []
    for n in range(args.runs):
        for ui in (True, False) if n % 2 == 0 else (False, True):
            (on if ui else off).append(_one_run(scratch, model, args, ui))
    print()
    row(["jobs", "no UI wall (s)", "UI + page wall (s)", "ratio", "no UI CPU (s)",
         "UI + page CPU (s)", "ratio"])  # fmt: skip
    row(["---:"] * 7)
    w0, w1 = median([w for w, _ in off]), median([w for w, _ in on])
    c0, c1 = median([c for _, c in off]), median([c for _, c in on])
    row([args.jobs, f"{w0:.2f}", f"{w1:.2f}", f"{w1 / w0:.3f}", f"{c0:.2f}", f"{c1:.2f}",
         f"{c1 / c0:.3f}"])  # fmt: skip


BENCHES: dict[str, Callable[[argparse.Namespace, Path], None]] = {
    "progress": bench_progress,
    "cancel": bench_cancel,
    "overhead": bench_overhead,
}


def main(argv: list[str] | None = None) -> None:
    """Run one benchmark in a scratch folder."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("progress", help=bench_progress.__doc__)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--interval", type=float, default=0.2)
    for name, runs in (("cancel", 10), ("overhead", 3)):
        p = sub.add_parser(name, help=BENCHES[name].__doc__)
        p.add_argument("--runs", type=int, default=runs)
        p.add_argument("--steps", type=int, default=10)
        p.add_argument("--size", type=int, default=64)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--jobs", type=int, default=20)
        p.add_argument("--delay", type=float, default=0.3, help="cancel this long after an image")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="dropforge-bench-ui-") as scratch:
        BENCHES[args.bench](args, Path(scratch))


if __name__ == "__main__":
    main()
