"""Benchmark on CUDA: images per second through dropforge against plain diffusers, and memory.

For each batch size (``--batches``, default 1 4 8) it makes ``count`` images of one prompt

* with plain diffusers: ``StableDiffusionPipeline.from_pretrained(..., fp16)`` called once per
  batch, the images saved as PNG (what a plain script does), and
* through dropforge: a prompt file with ``count = N`` dropped into an inbox and processed by
  ``run_once`` with the generator kept resident (the path of ``dropforge once`` and of the
  daemon: scan, plan, journal, generation, PNGs with their text chunks, contact sheet,
  manifest),

and reports the median images per second of ``--runs`` runs of each, their ratio, and the peak
GPU memory of each. ``--checks`` adds the CUDA path's memory features: the fp16 weights,
``cpu_offload = true``, and a job whose batch does not fit (the memory cap is set between the
peaks of batch 1 and batch 8), which must still finish through dropforge's out-of-memory
fallback. Not a test: nothing is asserted; ``--json`` writes every figure.

The model is ``--model`` (a local diffusers folder), else the config's ``[models] default``
from the local Hugging Face cache. Where the hub cannot be reached, ``--random-weights DIR``
writes a pipeline of Stable Diffusion 1.5's architecture and sizes (860M-parameter UNet,
CLIP ViT-L/14 text encoder, 4-level VAE) with random weights: its speed and memory are the real
model's, its pictures are noise. Examples::

    python bench/gpu.py --runs 3 --checks
    python bench/gpu.py --random-weights /tmp/sd15-random --runs 3 --checks --json gpu.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run from a checkout without installing: the package lives one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from daemon.app import generator_factory
from daemon.config import load_config
from daemon.runtime.logs import configure_logging
from daemon.runtime.once import run_once
from daemon.runtime.worker import Outcome

PROMPT = "a watercolor fox in a misty forest, morning light, highly detailed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a local diffusers folder")
    parser.add_argument("--config", type=Path, default=Path("config.toml"))
    parser.add_argument(
        "--random-weights",
        type=Path,
        default=None,
        metavar="DIR",
        help="write (or reuse) an SD 1.5-sized random-weight pipeline in DIR and use it",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per cell (median)")
    parser.add_argument("--size", type=int, default=512, help="image width and height")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--checks", action="store_true", help="fp16, cpu_offload, OOM fallback")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    return parser.parse_args(argv)


# -- the model -------------------------------------------------------------------------------


def write_random_sd15(folder: Path, device: str) -> None:
    """Write a pipeline with Stable Diffusion 1.5's architecture and random weights."""
    if (folder / "model_index.json").is_file():
        return
    diffusers: Any = importlib.import_module("diffusers")
    transformers: Any = importlib.import_module("transformers")
    tiny: Any = importlib.import_module("daemon.generators.tiny")
    tiny._write_tokenizer(folder / "tokenizer")  # a small offline BPE; ids fit any vocab
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1.1B parameters is far faster on the GPU
        unet = diffusers.UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = diffusers.AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text_encoder = transformers.CLIPTextModel(
            transformers.CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = diffusers.PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.to(dtype),
        text_encoder=text_encoder.to(dtype),
        tokenizer=tokenizer,
        unet=unet.to(dtype),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    del pipe, unet, vae, text_encoder
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def model_folder(args: argparse.Namespace) -> tuple[Path, str]:
    """Return the diffusers folder to measure and a description of it."""
    if args.random_weights is not None:
        write_random_sd15(args.random_weights, args.device)
        return args.random_weights, "Stable Diffusion 1.5 architecture, random weights"
    if args.model is not None:
        return args.model, str(args.model)
    ref = load_config(args.config).model_source("default").ref
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, local_files_only=True)), ref
    except Exception as exc:
        sys.exit(
            f"{ref} is not in the local Hugging Face cache ({type(exc).__name__}): run "
            "`dropforge models fetch` where the hub is reachable, or pass --model DIR or "
            "--random-weights DIR"
        )


# -- measuring -------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that the clock measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    """Start a new peak-memory measurement."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    """Peak GPU memory allocated since the last reset, in GiB (None off CUDA)."""
    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def timed(device: str, work: Callable[[], None]) -> float:
    """Seconds ``work`` took, GPU work included."""
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def plain_diffusers(folder: Path, args: argparse.Namespace, out: Path) -> dict[int, dict[str, Any]]:
    """Images per second of a plain diffusers script, per batch size."""
    diffusers: Any = importlib.import_module("diffusers")
    diffusers.utils.logging.disable_progress_bar()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    reset_peak(args.device)
    started = time.perf_counter()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(folder), dtype=dtype, use_safetensors=True, safety_checker=None
    ).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    load_seconds = time.perf_counter() - started
    results: dict[int, dict[str, Any]] = {}
    for batch in args.batches:

        def call(run: int, batch: int = batch) -> None:
            generators = [
                torch.Generator(args.device).manual_seed(1000 * run + i) for i in range(batch)
            ]
            images = pipe(
                prompt=PROMPT,
                num_images_per_prompt=batch,
                num_inference_steps=args.steps,
                width=args.size,
                height=args.size,
                guidance_scale=7.5,
                generator=generators,
            ).images
            for i, image in enumerate(images):
                image.save(out / f"plain-{batch}-{run}-{i}.png")

        call(-1)  # warm-up at this batch shape
        reset_peak(args.device)
        seconds = [timed(args.device, lambda r=run: call(r)) for run in range(args.runs)]
        results[batch] = {
            "seconds": statistics.median(seconds),
            "images_per_second": batch / statistics.median(seconds),
            "peak_gib": peak_gib(args.device),
        }
        print(f"plain diffusers, batch {batch}: {results[batch]}", flush=True)
    results[0] = {"load_seconds": load_seconds, "dtype": str(pipe.unet.dtype)}
    pipe.to("cpu")  # leave the GPU to the dropforge runs
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return results


def write_config(root: Path, folder: Path, args: argparse.Namespace, extra: str = "") -> Path:
    """A dropforge config for an inbox under ``root`` using ``folder`` as the default model."""
    path = root / "config.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [daemon]
            state_dir = "state"
            device = "{args.device}"
            min_free_mb = 0
            max_batch = {max(args.batches)}
            log_format = "json"
            {extra}

            [[inbox]]
            path = "inbox"
            output = "outbox"

            [models]
            default = "{folder}"

            [defaults]
            preset = "bench"
            width = {args.size}
            height = {args.size}
            guidance = 7.5

            [presets.bench]
            steps = {args.steps}
            """
        ),
        encoding="utf-8",
    )
    (root / "inbox").mkdir(exist_ok=True)
    return path


class Dropforge:
    """One inbox and one generator; ``queue`` drops prompt files and processes them in one run.

    Within one run the pipelines stay resident from job to job, as in the daemon; the first
    job of a run loads them (``run_once`` unloads at its end, as ``dropforge once`` does).
    """

    def __init__(self, root: Path, folder: Path, args: argparse.Namespace, extra: str = "") -> None:
        self.root = root
        self.settings = load_config(write_config(root, folder, args, extra))
        self.generator = generator_factory(self.settings)()
        self.device = args.device

    def queue(self, jobs: list[tuple[str, int, int]]) -> list[Any]:
        """Drop each (name, count, seed) and process them; return the results in run order."""
        inbox = self.root / "inbox"
        for name, count, seed in jobs:
            (inbox / f"{name}.toml").write_text(f"count = {count}\nseed = {seed}\n", "utf-8")
            (inbox / f"{name}.txt").write_text(PROMPT + "\n", encoding="utf-8")
        report = run_once(self.settings, lambda: self.generator)
        by_name = {r.rel.removesuffix(".txt"): r for r in report.results}
        for name, count, _ in jobs:
            result = by_name.get(name)
            if result is None or result.outcome is not Outcome.done:
                raise SystemExit(f"dropforge job {name} did not finish: {result}")
            made = list((self.root / "outbox" / name).glob(f"{name}-*.png"))
            if len(made) != count:
                raise SystemExit(f"dropforge job {name} made {len(made)} images, not {count}")
        return list(report.results)


def through_dropforge(folder: Path, args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Images per second through dropforge's once path, per batch size.

    Per batch size, one run of ``runs + 1`` jobs of ``count = batch``: the first loads the
    model and warms up; the median of the others' job seconds (from the journal: plan,
    generation, PNG and manifest writes) is the figure.
    """
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dropforge-gpu-") as tmp:
        forge = Dropforge(Path(tmp), folder, args)
        for batch in args.batches:
            jobs = [(f"b{batch}-r{run}", batch, 1000 * run) for run in range(args.runs + 1)]
            reset_peak(args.device)
            done = forge.queue(jobs)
            seconds = statistics.median(r.seconds for r in done[1:])
            results[batch] = {
                "seconds": seconds,
                "images_per_second": batch / seconds,
                "first_job_seconds": done[0].seconds,
                "peak_gib": peak_gib(args.device),
            }
            print(f"dropforge, batch {batch}: {results[batch]}", flush=True)
    return results


# -- the CUDA path's memory features ---------------------------------------------------------


def cuda_checks(folder: Path, args: argparse.Namespace, peaks: dict[int, Any]) -> dict[str, Any]:
    """fp16 weights, cpu_offload, and a batch that runs out of memory yet finishes."""
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dropforge-gpu-") as tmp:
        forge = Dropforge(Path(tmp), folder, args)
        # The model stays loaded after the run only until run_once unloads it: read it inside.
        dtypes: list[str] = []
        resident: list[float] = []
        original = forge.generator.generate_images

        def spy(request: Any, events: Any) -> None:
            original(request, events)
            dtypes.append(str(forge.generator._models.images.base.unet.dtype))
            resident.append(torch.cuda.memory_allocated() / 2**30)

        forge.generator.generate_images = spy
        forge.queue([("dtype", 1, 1)])
        found["dtype"], found["resident_gib_after_job"] = dtypes[0], resident[0]
    print(f"weights: {found['dtype']}, {found['resident_gib_after_job']:.2f} GiB", flush=True)

    with tempfile.TemporaryDirectory(prefix="dropforge-gpu-") as tmp:
        forge = Dropforge(Path(tmp), folder, args, extra="cpu_offload = true")
        reset_peak(args.device)
        done = forge.queue([("offload-warm", 1, 1), ("offload", 1, 2)])
        found["cpu_offload"] = {"seconds": done[1].seconds, "peak_gib": peak_gib(args.device)}
    print(f"cpu_offload = true, batch 1: {found['cpu_offload']}", flush=True)

    biggest = max(args.batches)
    low, high = peaks[1]["peak_gib"], peaks[biggest]["peak_gib"]
    cap_gib = low + 0.3 * (high - low)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    with tempfile.TemporaryDirectory(prefix="dropforge-gpu-") as tmp:
        forge = Dropforge(Path(tmp), folder, args)
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap_gib / total)
        try:
            reset_peak(args.device)
            done = forge.queue([("oom", biggest, 3)])
            found["oom_fallback"] = {
                "cap_gib": cap_gib,
                "count": biggest,
                "outcome": done[0].outcome.value,
                "seconds": done[0].seconds,
                "peak_gib": peak_gib(args.device),
            }
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
    print(f"batch {biggest} under a {cap_gib:.2f} GiB cap: {found['oom_fallback']}", flush=True)
    return found


def machine(device: str) -> dict[str, str]:
    """Describe where the figures were measured."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": importlib.import_module("diffusers").__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = str(torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> int:
    """Measure and print the tables."""
    args = parse_args(argv)
    configure_logging("console", level=logging.WARNING)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark measures the CUDA path (try --device cpu)")
    folder, described = model_folder(args)
    print(f"model: {described} ({folder})", flush=True)
    with tempfile.TemporaryDirectory(prefix="dropforge-plain-") as out:
        plain = plain_diffusers(folder, args, Path(out))
    forge = through_dropforge(folder, args)
    figures: dict[str, Any] = {
        "machine": machine(args.device),
        "model": described,
        "size": args.size,
        "steps": args.steps,
        "runs": args.runs,
        "plain": plain,
        "dropforge": forge,
    }
    if args.checks and args.device.startswith("cuda") and 1 in args.batches:
        figures["checks"] = cuda_checks(folder, args, forge)
    print(
        f"\n{figures['machine']}; {described}; {args.size}x{args.size}, {args.steps} steps, "
        f"median of {args.runs}\n"
    )
    print(
        "| batch | plain diffusers (img/s) | dropforge (img/s) | dropforge / plain "
        "| peak GPU GiB plain | peak GPU GiB dropforge |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for batch in args.batches:
        p, d = plain[batch], forge[batch]
        ratio = d["images_per_second"] / p["images_per_second"]
        memory = [f"{x['peak_gib']:.2f}" if x["peak_gib"] is not None else "n/a" for x in (p, d)]
        print(
            f"| {batch} | {p['images_per_second']:.2f} | {d['images_per_second']:.2f} "
            f"| {ratio:.3f} | {memory[0]} | {memory[1]} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
