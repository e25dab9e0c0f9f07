"""`python -m daemon` is `dropforge`."""

import sys

from daemon.cli import main

sys.exit(main())
