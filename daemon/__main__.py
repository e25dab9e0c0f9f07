"""`python -m daemon` is `dropforge`."""

import sys

from daemon.cli import main

# Guarded: a child process started with "spawn" (the texture unwrap) imports this module again.
if __name__ == "__main__":
    sys.exit(main())
