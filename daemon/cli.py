"""Command line: arguments → library calls. The only place that prints or exits."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.config import Settings, display_path, load_config
from daemon.errors import DropforgeError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="config file (default: $DROPFORGE_CONFIG, else ./config.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command."""
    parser = argparse.ArgumentParser(
        prog="dropforge",
        description="A hot folder for generative models: drop files into an inbox, "
        "get images, meshes and tweens with manifests.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("once", help="process everything pending, print the report, exit")
    _add_config(p)
    p.add_argument(
        "--dry-run", action="store_true", help="list planned outputs and prompts; load no model"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to the terminal")

    p = sub.add_parser("status", help="journal summary and progress")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("check", help="validate an input and show its parameters and outputs")
    _add_config(p)
    p.add_argument("path", type=Path, help="an input (or its sidecar) inside an inbox")

    p = sub.add_parser("retry", help="requeue failed, quarantined or named jobs")
    _add_config(p)
    p.add_argument("paths", nargs="*", type=Path, help="inputs to requeue")
    p.add_argument("--failed", action="store_true", help="requeue every failed job")
    p.add_argument("--quarantined", action="store_true", help="requeue every quarantined job")
    p.add_argument("--force", action="store_true", help="regenerate even existing outputs")

    p = sub.add_parser("tiny-model", help="write small random-weight pipelines for offline use")
    _add_config(p)
    p.add_argument("dir", type=Path, help="folder to write (DIR/sd)")

    p = sub.add_parser("models", help="manage the configured models")
    _add_config(p)
    models_sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    fetch = models_sub.add_parser("fetch", help="download the configured hub models")
    _add_config(fetch)
    _add_run_and_service(sub)
    return parser


# --- `run` and `service` (watch mode) ---------------------------------------------------


def _add_run_and_service(sub: Any) -> None:
    p = sub.add_parser("run", help="watch the inboxes and generate until stopped")
    _add_config(p)

    p = sub.add_parser("service", help="install or remove the systemd unit or Windows service")
    _add_config(p)
    actions = p.add_subparsers(dest="service_command", metavar="ACTION")
    for action, text in (
        ("install", "install, enable and start the service for this config"),
        ("uninstall", "stop, disable and remove the service"),
    ):
        a = actions.add_parser(action, help=text)
        # SUPPRESS: `service -c X install` keeps X instead of this parser's default.
        a.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, help="config file")
        a.add_argument("--user", action="store_true", help="a systemd user service (Linux)")
        a.add_argument("--dry-run", action="store_true", help="show what would be done")
        if action == "install":
            a.add_argument(
                "--run-as",
                metavar="USER",
                help="account of the system service (default: sudo's caller)",
            )


def cmd_run(args: argparse.Namespace) -> int:
    """`dropforge run`."""
    from daemon.logs import configure_logging
    from daemon.service import Service

    settings = _settings(args)
    configure_logging(
        settings.log_format,
        level=logging.INFO,
        logfile=settings.state_dir / "logs" / "dropforge.log",
    )
    return Service(settings, _generator_factory(settings)).run()


def cmd_service(args: argparse.Namespace) -> int:
    """`dropforge service install/uninstall`."""
    if args.service_command not in ("install", "uninstall"):
        raise DropforgeError("service needs an action: install or uninstall")
    install = args.service_command == "install"
    if sys.platform == "win32":
        from daemon import winservice

        if args.user:
            raise DropforgeError("--user is for systemd; a Windows service is system-wide")
        if install:
            lines = winservice.install(_settings(args), dry_run=args.dry_run)
        else:
            lines = winservice.uninstall(dry_run=args.dry_run)
    else:
        from daemon import units

        if install:
            run_as = args.run_as or (None if args.user else os.environ.get("SUDO_USER"))
            options = units.unit_options(_settings(args), user=args.user, run_as=run_as)
            lines = units.install(options, dry_run=args.dry_run)
        else:
            lines = units.uninstall(user=args.user, dry_run=args.dry_run)
    for line in lines:
        print(line)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dropforge` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(f"dropforge {version('dropforge')}")
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except DropforgeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


def _settings(args: argparse.Namespace) -> Settings:
    from daemon.params import check_settings

    settings = load_config(args.config)
    check_settings(settings)
    return settings


def _generator_factory(settings: Settings) -> Any:
    def make() -> Any:
        from daemon.generators.diffusers_backend import DiffusersGenerator

        return DiffusersGenerator(
            settings.device,
            cpu_offload=settings.cpu_offload,
            vae_slicing=settings.vae_slicing,
            vae_tiling=settings.vae_tiling,
            attention_slicing=settings.attention_slicing,
        )

    return make


def cmd_once(args: argparse.Namespace) -> int:
    """`dropforge once`."""
    from daemon.logs import configure_logging

    settings = _settings(args)
    configure_logging(
        settings.log_format,
        # The report lists failures and waits; the terminal gets log lines only with -v.
        level=logging.INFO if args.verbose else logging.ERROR,
        logfile=settings.state_dir / "logs" / "dropforge.log",
    )
    if args.dry_run:
        return _print_dry_run(settings)
    from daemon.progress import ProgressDisplay
    from daemon.report import format_report
    from daemon.runner import run_once

    with ProgressDisplay() as display:
        report = run_once(
            settings,
            _generator_factory(settings),
            progress=display.callbacks(),
            on_planned=display.set_total,
        )
    print(format_report(report, settings.base_dir), end="")
    return report.exit_code


def _print_dry_run(settings: Settings) -> int:
    from daemon.runner import dry_run

    prepared = dry_run(settings)
    failed = 0
    for item in prepared:
        print(f"{item.candidate.rel}:")
        if item.plan is None:
            failed += 1
            print(f"  Error: {item.error}")
            continue
        plan = item.plan
        where = display_path(plan.out_dir, settings)
        print(f"  task {plan.task}, model {plan.model.alias} -> {where}")
        for line in plan.describe_outputs():
            print(f"  {line}")
    print(f"{len(prepared)} inputs, {failed} with errors (dry run: nothing generated)")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """`dropforge check PATH`."""
    from daemon.inspect import check_path

    settings = _settings(args)
    result = check_path(settings, args.path)
    print(result.text, end="")
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    """`dropforge status`."""
    from daemon.inspect import collect_status, format_status

    settings = _settings(args)
    status = collect_status(settings, now=time.time())
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        print(format_status(status), end="")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """`dropforge retry`."""
    from daemon.inspect import retry

    settings = _settings(args)
    if not (args.paths or args.failed or args.quarantined):
        raise DropforgeError("retry needs PATH…, --failed or --quarantined")
    count, unknown = retry(
        settings, args.paths, failed=args.failed, quarantined=args.quarantined, force=args.force
    )
    for path in unknown:
        print(f"{path}: not in the journal yet (run dropforge once)", file=sys.stderr)
    print(f"requeued {count} job{'s' if count != 1 else ''}")
    return EXIT_OK if not unknown else EXIT_FAILED


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

    settings = _settings(args)
    sources = [settings.model_source(alias) for alias in settings.models]
    for line in fetch_models(sources):
        print(line)
    return EXIT_OK


COMMANDS = {
    "once": cmd_once,
    "status": cmd_status,
    "check": cmd_check,
    "retry": cmd_retry,
    "tiny-model": cmd_tiny_model,
    "models": cmd_models,
    "run": cmd_run,
    "service": cmd_service,
}
