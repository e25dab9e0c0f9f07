"""The argument parser of every command (``dropforge --help``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


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

    p = sub.add_parser("retry", help="requeue failed, quarantined, canceled or named jobs")
    _add_config(p)
    p.add_argument("paths", nargs="*", type=Path, help="inputs (or folders) to requeue")
    p.add_argument("--failed", action="store_true", help="requeue every failed job")
    p.add_argument("--quarantined", action="store_true", help="requeue every quarantined job")
    p.add_argument("--canceled", action="store_true", help="requeue every canceled job")
    p.add_argument("--force", action="store_true", help="regenerate even existing outputs")
    _add_queue_commands(sub)

    p = sub.add_parser("tiny-model", help="write small random-weight pipelines for offline use")
    _add_config(p)
    p.add_argument("dir", type=Path, help="folder to write (DIR/sd)")

    p = sub.add_parser("models", help="manage the configured models")
    _add_config(p)
    models_sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    fetch = models_sub.add_parser("fetch", help="download the configured hub models")
    _add_config(fetch)
    _add_run_and_service(sub)
    _add_review_commands(sub)
    return parser


def _add_review_commands(sub: Any) -> None:
    p = sub.add_parser("rate", help="favorite, discard or clear outputs (XMP sidecars)")
    p.add_argument("files", nargs="+", type=Path, help="images or meshes to rate")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--favorite", action="store_true", help="xmp:Rating 5")
    group.add_argument("--discard", action="store_true", help="xmp:Rating -1 (the file stays)")
    group.add_argument("--clear", action="store_true", help="no rating")

    p = sub.add_parser("regenerate", help="drop a new input that makes an output again")
    _add_config(p)
    p.add_argument("output", type=Path, help="an image output (OUT/…/cat-7.png)")
    p.add_argument("--seed", type=int, default=None, help="another seed (default: its own)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a parameter too (TOML value), e.g. --set steps=40",
    )


def _add_queue_commands(sub: Any) -> None:
    p = sub.add_parser("queue", help="list running and queued jobs in the order they will run")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--limit", type=int, default=1000, help="list at most N queued jobs")

    p = sub.add_parser("cancel", help="cancel queued or running jobs")
    _add_config(p)
    p.add_argument("paths", nargs="*", type=Path, help="inputs (or folders) whose jobs to cancel")
    p.add_argument("--all", action="store_true", help="cancel every queued and waiting job")
    p.add_argument("--running", action="store_true", help="with --all: the running job too")

    p = sub.add_parser("priority", help="move a queued job: --top, --bottom or priority N")
    _add_config(p)
    p.add_argument("path", type=Path, help="a queued input")
    p.add_argument("value", nargs="?", type=int, help="priority (higher runs first; default 0)")
    p.add_argument("--top", action="store_true", help="make it the next job to run")
    p.add_argument("--bottom", action="store_true", help="make it the last job to run")


def _add_run_and_service(sub: Any) -> None:
    p = sub.add_parser("run", help="watch the inboxes and generate until stopped")
    _add_config(p)

    p = sub.add_parser("serve", help="serve the web UI only (no generating)")
    _add_config(p)
    p.add_argument(
        "--outbox",
        type=Path,
        default=None,
        help="serve the gallery of this (synced) output folder, without a journal",
    )
    p.add_argument(
        "--inbox", type=Path, default=None, help="with --outbox: where regenerate writes"
    )
    p.add_argument(
        "--listen", default=None, help='with --outbox: HOST:PORT (default "127.0.0.1:8650")'
    )

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
