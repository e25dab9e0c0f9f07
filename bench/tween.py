"""Benchmark: tween frames made in one batched call per depth against one call per frame.

Runs the real diffusers backend on the tiny offline model (written to a temporary folder unless
``--models`` names one) and prints the median seconds of ``--runs`` runs of each way, per
depth. Not a test: nothing is asserted. Example::

    python bench/tween.py --depths 2 3 4 --runs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout without installing: the package lives one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image

from daemon.generators import GenerationEvents, TweenRequest
from daemon.generators.diffusers_backend import DiffusersGenerator
from daemon.generators.subdivision import tween_times
from daemon.generators.tiny import TINY_SD_SUBDIR, write_tiny_models
from daemon.values import ModelSource


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per cell (median)")
    parser.add_argument("--size", type=int, default=64, help="frame width and height")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--max-batch", type=int, default=32, help="batch cap of the batched way")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--models", type=Path, default=None, help="tiny models folder")
    return parser.parse_args(argv)


def make_tween(
    generator: DiffusersGenerator,
    model: ModelSource,
    depth: int,
    max_batch: int,
    args: argparse.Namespace,
) -> float:
    """Make every inner frame of a depth-``depth`` tween; return the seconds it took."""
    request = TweenRequest(
        model=model,
        start=Image.new("RGB", (args.size, args.size), (220, 40, 40)),
        end=Image.new("RGB", (args.size, args.size), (30, 60, 230)),
        width=args.size,
        height=args.size,
        depth=depth,
        prompt="a watercolor cat walking",
        negative_prompt="",
        steps=args.steps,
        guidance=7.5,
        strength=args.strength,
        seed=42,
        times_needed=tween_times(depth)[1:-1],
        max_batch=max_batch,
    )
    started = time.perf_counter()
    generator.generate_tween(request, GenerationEvents(on_image=lambda index, image: None))
    return time.perf_counter() - started


def machine(generator: DiffusersGenerator) -> str:
    """Describe the machine the numbers come from."""
    import torch
    from perf import cpu_name  # bench/perf.py, beside this script

    cpu = cpu_name()
    return (
        f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} on {generator.device_name()} "
        f"with {torch.get_num_threads()} threads"
    )


def main(argv: list[str] | None = None) -> None:
    """Time both ways for each depth and print a table."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.models or Path(scratch)
        if args.models is None:
            write_tiny_models(folder)
        model = ModelSource("default", "folder", str(folder / TINY_SD_SUBDIR))
        generator = DiffusersGenerator(args.device, threads=args.threads)
        make_tween(generator, model, 1, 1, args)  # loads the model; not timed
        print(f"machine: {machine(generator)}")
        print(
            f"tiny model, {args.size}x{args.size}, {args.steps} steps at strength "
            f"{args.strength}, median of {args.runs} runs"
        )
        print()
        columns = ("depth", 5), ("frames", 6), ("per frame (s)", 14), ("per depth (s)", 14)
        header = " ".join(f"{name:>{width}}" for name, width in columns) + f" {'speed-up':>9}"
        print(header)
        print("-" * len(header))
        for depth in args.depths:
            per_frame = statistics.median(
                make_tween(generator, model, depth, 1, args) for _ in range(args.runs)
            )
            per_depth = statistics.median(
                make_tween(generator, model, depth, args.max_batch, args) for _ in range(args.runs)
            )
            frames = 2**depth - 1
            print(
                f"{depth:>5} {frames:>6} {per_frame:>14.3f} {per_depth:>14.3f} "
                f"{per_frame / per_depth:>8.2f}x"
            )


if __name__ == "__main__":
    main()
