"""The command line and the Windows service: the only code that prints, exits or serves.

``parser`` defines the arguments, ``commands`` turns them into library calls, ``report`` and
``progress`` render what ``dropforge once`` shows, ``winservice`` is the pywin32 entry point.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from daemon.cli.commands import COMMANDS, EXIT_OK, EXIT_USAGE
from daemon.cli.parser import build_parser
from daemon.errors import DropforgeError

__all__ = ["build_parser", "main"]


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
