"""The review commands: ``rate`` (favorite, discard or clear, in XMP sidecars) and
``regenerate`` (a new input pinned to one output's parameters)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.app import load_settings
from daemon.cli.exits import EXIT_FAILED, EXIT_OK
from daemon.config import Settings
from daemon.errors import DropforgeError
from daemon.outputs.ratings import Rating, write_rating

RATED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".glb", ".ply", ".obj"})


def cmd_rate(args: argparse.Namespace) -> int:
    """`dropforge rate FILE… --favorite | --discard | --clear`."""
    chosen = [r for r, on in ((Rating.favorite, args.favorite), (Rating.discard, args.discard),
                              (Rating.none, args.clear)) if on]  # fmt: skip
    if len(chosen) != 1:
        raise DropforgeError("rate needs exactly one of --favorite, --discard or --clear")
    rating = chosen[0]
    failed = False
    for path in args.files:
        if path.suffix.lower() not in RATED_SUFFIXES:
            print(f"{path}: not an image or mesh, not rated", file=sys.stderr)
            failed = True
            continue
        if not path.is_file():
            print(f"{path}: no such file, not rated", file=sys.stderr)
            failed = True
            continue
        written = write_rating(path, rating)
        where = f" ({written.name})" if written is not None else ""
        print(f"{path}: {'unrated' if rating is Rating.none else rating.value}{where}")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_regenerate(args: argparse.Namespace) -> int:
    """`dropforge regenerate OUTPUT [--seed N] [--set KEY=VALUE…]`."""
    from daemon.config import display_path
    from daemon.runtime.regenerate import parse_sets, regenerate

    settings = load_settings(args.config)
    made = regenerate(settings, args.output, seed=args.seed, sets=parse_sets(args.sets))
    print(f"wrote {display_path(made.input, settings)} and {made.sidecar.name} (seed {made.seed})")
    return EXIT_OK


def outbox_settings(args: argparse.Namespace) -> Settings:
    """`serve --outbox DIR [--inbox DIR] [-c CONFIG]`: settings for the review pages of a
    synced output folder on a machine without the journal (a laptop). With ``-c`` (a copy of
    the generating machine's config.toml) regenerate checks against its models, [defaults]
    and presets; without, against the aliases ``default`` and ``mesh``."""
    import dataclasses
    import os

    from daemon.config import settings_from_mapping

    outbox = args.outbox.expanduser().absolute()
    if not outbox.is_dir():
        raise DropforgeError(f"{args.outbox}: no such folder")
    inbox = (args.inbox or outbox.parent / "inbox").expanduser().absolute()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dropforge-outbox"
    listen = args.listen or "127.0.0.1:8650"
    table = {
        "daemon": {"state_dir": str(cache)},
        "inbox": [{"path": str(inbox), "output": str(outbox)}],
        "models": {"default": "generating-machine/default", "mesh": "generating-machine/mesh"},
        "ui": {"listen": listen},
    }
    settings = settings_from_mapping(table, outbox / "config.toml")
    if args.config is not None:
        base = load_settings(args.config)
        settings = dataclasses.replace(
            base, inboxes=settings.inboxes, state_dir=settings.state_dir, ui=settings.ui
        )
    return settings
