"""Costs of issue 15's fidelity work, measured by hand (figures in docs/performance.md).

    python bench/fidelity.py texture [--runs 3]   # baking vertex colours into a texture
    python bench/fidelity.py photo [--runs 5]     # probing and shrinking a 20 MP photo
    python bench/fidelity.py stop [--runs 3]      # `dropforge run`: service.stopped → exit

Each prints the machine (CPU count, load average) and medians of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """CPU count and load average: the figures are only comparable within one machine."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}, Python {sys.version.split()[0]}"


def median_seconds(run: Callable[[], object], runs: int) -> float:
    """The median wall time of ``run()`` over ``runs`` runs."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_texture(runs: int) -> None:
    """Bake an icosphere's vertex colours at growing face counts: xatlas and the raster."""
    import numpy as np
    import trimesh

    from daemon.generators.texture import bake

    print("| faces | texture | bake (s) |")
    print("| ---: | ---: | ---: |")
    for subdivisions in (3, 4, 5, 6):
        sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
        colors = np.round((sphere.vertices * 0.5 + 0.5) * 255).astype(np.uint8)
        baked = bake(sphere.vertices, sphere.faces, colors)
        seconds = median_seconds(lambda m=sphere, c=colors: bake(m.vertices, m.faces, c), runs)
        size = baked.texture.size[0]
        print(f"| {len(sphere.faces):,} | {size}² | {seconds:.2f} |")


def bench_photo(runs: int) -> None:
    """Probe (as planning does) and load at 512x344 (as a job does) a 5472x3648 photo."""
    from PIL import Image

    from daemon.intake.images import load_input_image, probe_image

    with tempfile.TemporaryDirectory() as folder:
        photo = Image.linear_gradient("L").resize((5472, 3648)).convert("RGB")
        for fmt, name in (("JPEG", "photo.jpg"), ("PNG", "photo.png")):
            path = Path(folder) / name
            photo.save(path, format=fmt)
            probe = median_seconds(lambda p=path: probe_image(p, p.name, 89_478_485), runs)
            load = median_seconds(
                lambda p=path: load_input_image(p, p.name, 89_478_485, (512, 344)), runs
            )

            def full(p: Path = path) -> None:
                with Image.open(p) as im:
                    im.load()

            print(
                f"| {fmt} 5472x3648 | probe {probe:.3f} s | load at 512x344 {load:.3f} s "
                f"| plain full decode {median_seconds(full, runs):.3f} s |"
            )


def bench_stop(runs: int) -> None:
    """Start `dropforge run` on the tiny model, let it make one image, SIGINT it; time from
    the service.stopped line to the process's exit."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        subprocess.run(
            [sys.executable, "-m", "daemon", "tiny-model", str(root / "models")],
            check=True,
            capture_output=True,
        )
        (root / "inbox").mkdir()
        (root / "config.toml").write_text(
            textwrap.dedent(
                """\
                [daemon]
                state_dir = "state"
                device = "cpu"
                settle_seconds = 0.2
                [[inbox]]
                path = "inbox"
                output = "outbox"
                [models]
                default = "models/sd"
                [defaults]
                width = 64
                height = 64
                [presets.standard]
                steps = 2
                """
            ),
            encoding="utf-8",
        )
        (root / "inbox" / "a.txt").write_text("a lighthouse", encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for _ in range(runs):
            shutil.rmtree(root / "outbox", ignore_errors=True)
            shutil.rmtree(root / "state", ignore_errors=True)
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", "-c", str(root / "config.toml")],
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            assert proc.stderr is not None
            for line in proc.stderr:
                if '"job.done"' in line:
                    break
            proc.send_signal(signal.SIGINT)
            for line in proc.stderr:
                if '"service.stopped"' in line:
                    stopped = time.perf_counter()
                    break
            proc.stderr.read()
            proc.wait()
            results.append(time.perf_counter() - stopped)
    print(f"service.stopped → exit: median {statistics.median(results):.2f} s over {runs} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("texture", "photo", "stop"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    {"texture": bench_texture, "photo": bench_photo, "stop": bench_stop}[args.what](args.runs)


if __name__ == "__main__":
    main()
