"""The review commands: ``rate`` (favorite, discard or clear, in XMP sidecars) and
``regenerate`` (a new input pinned to one output's parameters)."""

from __future__ import annotations

import argparse
import sys

from daemon.cli.exits import EXIT_FAILED, EXIT_OK
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
