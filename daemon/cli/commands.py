"""The commands: each turns its arguments into library calls and prints the result."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from daemon.app import generator_factory, load_settings
from daemon.cli import review, steer
from daemon.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from daemon.config import Settings, display_path
from daemon.errors import DropforgeError

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE"]


def cmd_run(args: argparse.Namespace) -> NoReturn:
    """`dropforge run`."""
    from daemon.runtime.logs import configure_logging
    from daemon.runtime.pool import on_device, worker_devices
    from daemon.runtime.service import Service

    settings = load_settings(args.config)
    configure_logging(
        settings.log_format,
        level=logging.INFO,
        logfile=settings.state_dir / "logs" / "dropforge.log",
    )
    companions = []
    if settings.ui.enabled:
        from daemon.ui.server import WebUI

        companions.append(WebUI(settings))
    devices = worker_devices(settings)  # one worker process per device
    first = on_device(settings, devices[0])
    code = Service(
        first,
        generator_factory(first),
        companions=companions,
        extra_devices=devices[1:],
        make_factory=generator_factory,
    ).run()
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    """End the process at once, after a graceful stop has closed everything dropforge owns.

    The interpreter's own finalisation would next tear down the torch, diffusers and
    transformers modules one by one, holding the prompt (or systemd's stop) for a second or
    more after ``service.stopped`` while doing nothing that matters: the journal is closed,
    every output was written atomically. Logs and standard streams are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def cmd_serve(args: argparse.Namespace) -> int:
    """`dropforge serve`: the web UI alone, until SIGINT or SIGTERM."""
    import signal
    import threading

    from daemon.runtime.logs import configure_logging
    from daemon.ui.server import WebUI

    if args.outbox is not None:
        from daemon.cli.review import outbox_settings

        settings = outbox_settings(args)
    elif args.inbox is not None or args.listen is not None:
        raise DropforgeError("--inbox and --listen go with --outbox")
    else:
        settings = load_settings(args.config)
    configure_logging(settings.log_format, level=logging.INFO)
    ui = WebUI(settings, required=True, journal=args.outbox is None)
    stop = threading.Event()
    for name in ("SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda signum, frame: stop.set())
    ui.start()
    print(f"dropforge web UI on {ui.url} (Ctrl-C stops)", flush=True)
    stop.wait()
    ui.stop(timeout=settings.stop_timeout)
    return EXIT_OK


def cmd_service(args: argparse.Namespace) -> int:
    """`dropforge service install/uninstall`."""
    if args.service_command not in ("install", "uninstall"):
        raise DropforgeError("service needs an action: install or uninstall")
    install = args.service_command == "install"
    if sys.platform == "win32":
        from daemon.cli import winservice

        if args.user:
            raise DropforgeError("--user is for systemd; a Windows service is system-wide")
        if install:
            lines = winservice.install(load_settings(args.config), dry_run=args.dry_run)
        else:
            lines = winservice.uninstall(dry_run=args.dry_run)
    else:
        from daemon.runtime import units

        if install:
            run_as = args.run_as or (None if args.user else os.environ.get("SUDO_USER"))
            options = units.unit_options(load_settings(args.config), user=args.user, run_as=run_as)
            lines = units.install(options, dry_run=args.dry_run)
        else:
            lines = units.uninstall(user=args.user, dry_run=args.dry_run)
    for line in lines:
        print(line)
    return EXIT_OK


def cmd_once(args: argparse.Namespace) -> int:
    """`dropforge once`."""
    from daemon.runtime.logs import configure_logging

    settings = load_settings(args.config)
    configure_logging(
        settings.log_format,
        # The report lists failures and waits; the terminal gets log lines only with -v.
        level=logging.INFO if args.verbose else logging.ERROR,
        # A dry run writes nothing, not even a log file.
        logfile=None if args.dry_run else settings.state_dir / "logs" / "dropforge.log",
    )
    if args.dry_run:
        return _print_dry_run(settings)
    from daemon.cli.progress import ProgressDisplay
    from daemon.cli.report import format_report
    from daemon.runtime.once import run_once

    with ProgressDisplay() as display:
        report = run_once(
            settings,
            generator_factory(settings),
            progress=display.callbacks(),
            on_planned=display.set_total,
        )
    if len(report.missing) < len(settings.inboxes):
        print(format_report(report, settings.base_dir), end="")
    for folder in report.missing:
        print(f"Error: Folder not found: {display_path(Path(folder), settings)}", file=sys.stderr)
    return report.exit_code


def _print_dry_run(settings: Settings) -> int:
    from daemon.runtime.once import dry_run

    forecasts = dry_run(settings)
    counts: dict[str, int] = {}
    for item in forecasts:
        counts[item.action.value] = counts.get(item.action.value, 0) + 1
        if item.action.value in ("skip", "later"):
            print(f"{item.rel}: {item.action} ({item.reason})")
            continue
        if item.action.value == "fail":
            print(f"{item.rel}: fail: {item.reason}")
            continue
        print(f"{item.rel}: {item.action} ({item.reason})")
        plan = item.prepared.plan if item.prepared is not None else None
        if plan is None:
            continue
        where = display_path(plan.out_dir, settings)
        print(f"  task {plan.task}, model {plan.model.alias} -> {where}")
        for line in plan.describe_outputs():
            print(f"  {line}")
        for note in plan.notes:
            print(f"  note: {note}")
    words = ("make", "remake", "skip", "fail", "later")
    summary = ", ".join(f"{counts.get(w, 0)} {w}" for w in words)
    inputs = "1 input" if len(forecasts) == 1 else f"{len(forecasts)} inputs"
    print(f"{inputs}: {summary} (dry run: nothing generated)")
    return EXIT_FAILED if any(f.fails_now for f in forecasts) else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """`dropforge check PATH`."""
    from daemon.runtime.inspect import check_path

    settings = load_settings(args.config)
    result = check_path(settings, args.path)
    print(result.text, end="")
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_tiny_model(args: argparse.Namespace) -> int:
    """`dropforge tiny-model DIR`."""
    from daemon.generators.tiny import TINY_LORA_FILE, write_tiny_models

    written = write_tiny_models(args.dir)
    for name, path in written.items():
        print(f"{name}: {path}")
    print("Point config.toml at them:")
    print("[models]")
    for name, path in written.items():
        alias = "default" if name == "sd" else name
        print(f'{alias} = "{path}"')
    lora = args.dir / TINY_LORA_FILE
    if lora.is_file():
        print("[loras]")
        print(f'tiny = "{lora}"')
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """`dropforge models fetch`."""
    if args.models_command != "fetch":
        raise DropforgeError("models needs an action: fetch")
    from daemon.generators.fetch import fetch_models

    settings = load_settings(args.config)
    sources = [settings.model_source(alias) for alias in settings.models]
    for line in fetch_models(sources):
        print(line)
    return EXIT_OK


COMMANDS = {
    "once": cmd_once,
    "status": steer.cmd_status,
    "check": cmd_check,
    "retry": steer.cmd_retry,
    "cancel": steer.cmd_cancel,
    "queue": steer.cmd_queue,
    "priority": steer.cmd_priority,
    "tiny-model": cmd_tiny_model,
    "models": cmd_models,
    "run": cmd_run,
    "serve": cmd_serve,
    "service": cmd_service,
    "rate": review.cmd_rate,
    "regenerate": review.cmd_regenerate,
}
