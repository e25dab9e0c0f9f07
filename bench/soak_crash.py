"""Soak: `dropforge run` on the tiny model SIGKILLed hundreds of times, then verified.

The same crash loop as tests/test_crash_loop.py (tests/soak/crash_harness.py), longer: each
life is killed at a seeded random trigger (start-up, first scan, a job started, an output
written, a job done, a temporary output on disk), new inputs are dropped whenever the work
runs out, and at the end every input must have exactly one ``done`` manifest, every output
must exist, decode and match its sha256, no temporary may remain, no output may have been
generated more often than the kills explain, and — with the default ``max_attempts`` — no job
may have been quarantined. Prints a summary, with how the crash-loop guard judged the claims
the kills ended; exits 1 on any violation. Not a test: run it by hand, e.g. ::

    python bench/soak_crash.py --kills 200 --inputs 40
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

# Run from a checkout without installing: the package lives one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from daemon.generators.tiny import TINY_SD_SUBDIR, write_tiny_models
from tests.soak.crash_harness import run_crash_loop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs before the final run")
    parser.add_argument("--inputs", type=int, default=40, help="inputs dropped at the start")
    parser.add_argument("--seed", type=int, default=1, help="seeds the triggers and inputs")
    parser.add_argument("--scratch", type=Path, help="keep the run here (default: a temp dir)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; return 0 when nothing was lost or duplicated, 1 otherwise."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dropforge-soak-") as temporary:
        root = args.scratch or Path(temporary)
        root.mkdir(parents=True, exist_ok=True)
        models = root / "models"
        if not (models / TINY_SD_SUBDIR).is_dir():
            write_tiny_models(models)
        work = root / "run"
        if work.exists():
            print(f"{work} exists: pass an empty --scratch folder", file=sys.stderr)
            return 2
        work.mkdir()
        say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
        summary = run_crash_loop(
            work,
            models / TINY_SD_SUBDIR,
            kills=args.kills,
            inputs=args.inputs,
            seed=args.seed,
            say=say,
        )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"seed: {args.seed}")
    print("\n".join(summary.lines()))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
