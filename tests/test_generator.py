"""The diffusers backend on the tiny offline models: loading, batches, seeds, fallbacks, errors."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from huggingface_hub.utils import filter_repo_objects
from PIL import Image

from daemon.errors import ConfigError, InputError, Interrupted, ModelUnavailable, OutOfMemory
from daemon.generators import GenerationEvents, ImageRequest, ImageSpec
from daemon.generators.diffusers_backend import DiffusersGenerator
from daemon.generators.fetch import ALLOW_PATTERNS, IGNORE_PATTERNS, fetch_models
from daemon.generators.loading import backend_versions, is_out_of_memory
from daemon.generators.tiny import (
    TINY_LORA_FILE,
    TINY_MESH_SUBDIR,
    TINY_SD_SUBDIR,
    write_tiny_models,
)
from daemon.values import LoraSource, ModelSource, Task
from tests.fakes import EVERY_CALL, OUT_OF_MEMORY, PipelineCalls


def make_request(
    model: ModelSource,
    seeds: tuple[int, ...] = (1,),
    *,
    task: Task | str = Task.text2image,
    prompt: str = "a watercolor cat",
    steps: int = 2,
    guidance: float = 7.5,
    strength: float = 0.6,
    max_batch: int = 8,
    init_image: Image.Image | None = None,
    mask_image: Image.Image | None = None,
    lora: LoraSource | None = None,
) -> ImageRequest:
    """Build a 64x64 request with one image per seed, all with the same sampler values."""
    specs = tuple(
        ImageSpec(index, prompt, "", seed, steps, guidance, strength)
        for index, seed in enumerate(seeds)
    )
    return ImageRequest(
        Task(task), model, 64, 64, specs, init_image, mask_image, lora=lora, max_batch=max_batch
    )


@dataclass
class Recorder:
    """Collects what a backend reports through GenerationEvents, grouped into pipeline calls."""

    stop_after_steps: int | None = None
    calls: PipelineCalls = field(default_factory=PipelineCalls)
    images: dict[int, Image.Image] = field(default_factory=dict)
    steps: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def on_image(self, index: int, image: Image.Image) -> None:
        self.calls.deliver(index)
        self.images[index] = image

    def on_step(self, done: int, total: int) -> None:
        self.steps.append((done, total))
        self.calls.step()

    def events(self) -> GenerationEvents:
        return GenerationEvents(
            on_image=self.on_image,
            on_step=self.on_step,
            should_stop=lambda: (
                self.stop_after_steps is not None and len(self.steps) >= self.stop_after_steps
            ),
            on_warning=self.warnings.append,
        )


def generate(
    generator: DiffusersGenerator, request: ImageRequest, out_of_memory: Container[int] = ()
) -> Recorder:
    """Run ``request`` and return what was reported; the calls numbered in ``out_of_memory``
    (from 1) run out of memory at their first step."""
    recorder = Recorder(calls=PipelineCalls(out_of_memory))
    generator.generate_images(request, recorder.events())
    return recorder


def pixels(image: Image.Image) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Return the image as signed integers, so differences do not wrap around."""
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- the tiny models ---------------------------------------------------------------------


def test_tiny_models_are_written_identically_every_time(tiny_models: Path, tmp_path: Path) -> None:
    """Writing the tiny models twice gives byte-identical files, safetensors weights only."""
    written = write_tiny_models(tmp_path)
    assert written == {"sd": tmp_path / TINY_SD_SUBDIR, "mesh": tmp_path / TINY_MESH_SUBDIR}
    assert (tmp_path / TINY_LORA_FILE).is_file()
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tiny_models) for p in tiny_models.rglob("*") if p.is_file()
    )
    for name in files:
        assert (tmp_path / name).read_bytes() == (tiny_models / name).read_bytes(), name
    assert {p.suffix for p in files} == {".json", ".txt", ".safetensors"}
    tokenizer_config = json.loads((tmp_path / "sd/tokenizer/tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 77


# -- text2image and seeds -----------------------------------------------------------------


def test_text2image_makes_one_64x64_image_per_seed(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Two seeds give two 64x64 RGB images that differ, reported under their indices."""
    recorder = generate(generator, make_request(tiny_sd, (1, 2)))
    assert sorted(recorder.images) == [0, 1]
    assert [(im.size, im.mode) for im in recorder.images.values()] == [((64, 64), "RGB")] * 2
    assert np.abs(pixels(recorder.images[0]) - pixels(recorder.images[1])).max() > 10
    assert generator.loaded_models() == {"default": tiny_sd.ref}


def test_same_seed_gives_identical_pixels(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """The same seed and prompt twice give exactly the same pixels."""
    first = generate(generator, make_request(tiny_sd, (7,))).images[0]
    second = generate(generator, make_request(tiny_sd, (7,))).images[0]
    assert np.array_equal(pixels(first), pixels(second))


def test_image_of_a_batch_is_reproducible_alone(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Image k of a batch matches a call with seed k alone within two grey levels."""
    batch = generate(generator, make_request(tiny_sd, (3, 4, 5))).images
    alone = generate(generator, make_request(tiny_sd, (4,))).images[0]
    assert np.abs(pixels(batch[1]) - pixels(alone)).max() <= 2


def test_steps_are_reported_across_batches(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Step progress counts over the whole request when it runs as several batches."""
    recorder = generate(generator, make_request(tiny_sd, (1, 2), max_batch=1))
    assert recorder.steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_long_prompt_is_encoded_whole_without_a_warning(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """A prompt over 77 tokens is chunked by compel, not truncated: nothing to warn about."""
    prompt = "a red cat " * 25 + "on the moon"
    recorder = generate(generator, make_request(tiny_sd, (1, 2), prompt=prompt))
    assert recorder.warnings == []
    assert len(recorder.images) == 2


def test_short_prompt_gives_no_warning(generator: DiffusersGenerator, tiny_sd: ModelSource) -> None:
    """A prompt within the limit is not reported."""
    assert generate(generator, make_request(tiny_sd)).warnings == []


# -- variations and inpaint -----------------------------------------------------------------


def test_variations_and_inpaint_share_the_loaded_weights(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """img2img and inpaint make 64x64 images from the same UNet object, each with its scheduler."""
    init = Image.new("RGB", (100, 80), (200, 40, 40))
    mask = Image.new("RGBA", (100, 80), (0, 0, 0, 255))
    mask.paste((255, 255, 255, 255), (25, 20, 75, 60))
    generate(generator, make_request(tiny_sd))
    variations = generate(
        generator, make_request(tiny_sd, (1, 2), task="variations", init_image=init)
    )
    inpaint = generate(
        generator,
        make_request(tiny_sd, (1,), task="inpaint", init_image=init, mask_image=mask),
    )
    assert [im.size for im in variations.images.values()] == [(64, 64), (64, 64)]
    assert inpaint.images[0].size == (64, 64)
    assert variations.steps == [(1, 1)]  # 2 steps at strength 0.6 leave one
    pipes = generator._models.images.pipes if generator._models.images else {}
    assert sorted(pipes) == ["inpaint", "text2image", "variations"]
    assert len({id(pipe.unet) for pipe in pipes.values()}) == 1
    assert len({id(pipe.vae) for pipe in pipes.values()}) == 1
    assert len({id(pipe.scheduler) for pipe in pipes.values()}) == 3


def test_strength_too_low_for_one_step_is_an_input_error(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Variations whose strength leaves no denoising step are refused with the rule."""
    request = make_request(
        tiny_sd, task="variations", strength=0.4, init_image=Image.new("RGB", (64, 64))
    )
    with pytest.raises(InputError) as caught:
        generate(generator, request)
    assert str(caught.value) == (
        "parameters: strength must be at least 1/steps (0.5 with 2 steps) for variations, got 0.4"
    )


# -- LoRA ----------------------------------------------------------------------------------


def test_lora_changes_images_and_switches_off_again(
    generator: DiffusersGenerator, tiny_sd: ModelSource, tiny_models: Path
) -> None:
    """A LoRA changes the image; a later job without it gets the plain model's pixels back."""
    lora = LoraSource("tiny", str(tiny_models / TINY_LORA_FILE), 1.0)
    plain = generate(generator, make_request(tiny_sd, (9,))).images[0]
    styled = generate(generator, make_request(tiny_sd, (9,), lora=lora)).images[0]
    plain_again = generate(generator, make_request(tiny_sd, (9,))).images[0]
    assert np.abs(pixels(styled) - pixels(plain)).max() > 10
    assert np.array_equal(pixels(plain_again), pixels(plain))


def test_pickle_lora_is_refused(generator: DiffusersGenerator, tiny_sd: ModelSource) -> None:
    """A LoRA that is not a .safetensors file is never loaded."""
    lora = LoraSource("old", "/loras/old.ckpt", 1.0)
    with pytest.raises(ModelUnavailable) as caught:
        generate(generator, make_request(tiny_sd, lora=lora))
    assert str(caught.value) == (
        'LoRA "old" (/loras/old.ckpt) is not a .safetensors file '
        "(dropforge never loads .bin/.ckpt pickle files)"
    )


# -- stopping and running out of memory ------------------------------------------------------


def test_stop_request_interrupts_at_the_next_step(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """should_stop turning True after one step raises Interrupted before any image is made."""
    recorder = Recorder(stop_after_steps=1)
    with pytest.raises(Interrupted):
        generator.generate_images(make_request(tiny_sd, (1, 2), steps=3), recorder.events())
    assert recorder.steps == [(1, 3)]
    assert recorder.images == {}


def test_out_of_memory_on_a_batch_retries_one_image_at_a_time(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """A batch that runs out of memory is made again image by image, each as made alone."""
    request = make_request(tiny_sd, (1, 2, 3))
    assert generate(generator, request).calls.calls == [[0, 1, 2]]  # one call, without failures
    alone = generate(generator, make_request(tiny_sd, (1, 2, 3), max_batch=1))
    recorder = generate(generator, request, out_of_memory={1})
    assert recorder.calls.calls == [OUT_OF_MEMORY, [0], [1], [2]]
    for index in (0, 1, 2):
        assert np.array_equal(pixels(recorder.images[index]), pixels(alone.images[index]))


def test_out_of_memory_alone_retries_with_every_memory_saver(tiny_sd: ModelSource) -> None:
    """An image out of memory even alone is made with every saver on, which then stay on."""
    generator = DiffusersGenerator("cpu", threads=1)
    recorder = generate(generator, make_request(tiny_sd, (1, 2)), out_of_memory={1, 2})
    assert recorder.calls.calls == [OUT_OF_MEMORY, OUT_OF_MEMORY, [0], [1]]
    # The savers stay on: the same seeds made again give the same pixels.
    again = generate(generator, make_request(tiny_sd, (1, 2), max_batch=1))
    for index in (0, 1):
        assert np.array_equal(pixels(recorder.images[index]), pixels(again.images[index]))
    resident = generator._models.images
    assert resident is not None
    assert resident.base.vae.use_slicing
    assert resident.base.vae.use_tiling


def test_out_of_memory_every_time_raises_out_of_memory(tiny_sd: ModelSource) -> None:
    """Out of memory even alone and with every saver on ends in OutOfMemory; savers stay on."""
    generator = DiffusersGenerator("cpu", threads=1)
    recorder = Recorder(calls=PipelineCalls(EVERY_CALL))
    with pytest.raises(OutOfMemory) as caught:
        generator.generate_images(make_request(tiny_sd, (1, 2)), recorder.events())
    assert str(caught.value) == (
        "out of memory on cpu for one 64x64 image, even with every memory saver on"
    )
    assert recorder.calls.calls == [OUT_OF_MEMORY] * 3  # the batch, image 0 alone, with savers
    assert recorder.images == {}
    resident = generator._models.images
    assert resident is not None
    assert resident.base.vae.use_slicing
    assert resident.base.vae.use_tiling


def test_out_of_memory_errors_are_told_apart() -> None:
    """torch's OOM class and 'out of memory' runtime errors count; other errors do not."""
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA error"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


# -- model sources ----------------------------------------------------------------------------


def test_unload_empties_loaded_models(generator: DiffusersGenerator, tiny_sd: ModelSource) -> None:
    """unload() drops the resident pipelines."""
    generate(generator, make_request(tiny_sd))
    assert generator.loaded_models() == {"default": tiny_sd.ref}
    generator.unload()
    assert generator.loaded_models() == {}


def test_hub_model_loads_from_the_local_cache(
    tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id found in the local Hugging Face cache loads without any network."""
    repo = tmp_path / "models--dropforge--tiny-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text("0" * 40)
    shutil.copytree(tiny_models / TINY_SD_SUBDIR, repo / "snapshots" / ("0" * 40))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    source = ModelSource("default", "hub", "dropforge/tiny-sd")
    generator = DiffusersGenerator("cpu", threads=1)
    assert sorted(generate(generator, make_request(source)).images) == [0]
    assert generator.loaded_models() == {"default": "dropforge/tiny-sd"}


def test_missing_hub_model_is_unavailable(
    generator: DiffusersGenerator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id not in the local cache is never downloaded at job time."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    source = ModelSource("default", "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    with pytest.raises(ModelUnavailable) as caught:
        generate(generator, make_request(source))
    assert str(caught.value) == (
        'model "default" (stable-diffusion-v1-5/stable-diffusion-v1-5) is not in the local '
        'Hugging Face cache: run "dropforge models fetch" on a machine with network access, '
        "or point [models] default at a local diffusers folder"
    )


def test_folder_with_pickle_weights_only_is_unavailable(
    generator: DiffusersGenerator, tiny_models: Path, tmp_path: Path
) -> None:
    """A diffusers folder holding only .bin weights is refused, not unpickled."""
    (tmp_path / "unet").mkdir()
    shutil.copy(tiny_models / "sd/model_index.json", tmp_path)
    (tmp_path / "unet/diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    source = ModelSource("old", "folder", str(tmp_path))
    with pytest.raises(ModelUnavailable) as caught:
        generate(generator, make_request(source))
    assert str(caught.value) == (
        f'model "old" ({tmp_path}) has no .safetensors weights '
        "(dropforge never loads .bin/.ckpt pickle files)"
    )


def test_missing_folder_is_unavailable(generator: DiffusersGenerator, tmp_path: Path) -> None:
    """A folder alias pointing nowhere says so and what to do."""
    source = ModelSource("mine", "folder", str(tmp_path / "gone"))
    with pytest.raises(ModelUnavailable) as caught:
        generate(generator, make_request(source))
    assert str(caught.value) == (
        f'model "mine" ({tmp_path / "gone"}) is not a folder: point [models] mine at a '
        "diffusers folder"
    )


def test_single_file_without_cached_configs_is_unavailable(
    generator: DiffusersGenerator,
    tiny_models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A .safetensors checkpoint whose architecture configs are not cached is not fetched."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    checkpoint = tiny_models / "sd/unet/diffusion_pytorch_model.safetensors"
    with pytest.raises(ModelUnavailable) as caught:
        generate(generator, make_request(ModelSource("one", "file", str(checkpoint))))
    repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert str(caught.value) == (
        f'model "one" ({checkpoint}) needs the {repo} configs, which are not in the local '
        f"Hugging Face cache: run \"hf download {repo} --include '*.json' '*.txt'\" on a "
        "machine with network access, or point [models] one at a diffusers folder"
    )


def test_pickle_checkpoint_is_refused(generator: DiffusersGenerator) -> None:
    """A single-file .ckpt model is never unpickled."""
    source = ModelSource("old", "file", "/models/v1-5.ckpt")
    with pytest.raises(ModelUnavailable) as caught:
        generate(generator, make_request(source))
    assert str(caught.value) == (
        'model "old" (/models/v1-5.ckpt) is not a .safetensors file '
        "(dropforge never loads .bin/.ckpt pickle files)"
    )


# -- device and versions --------------------------------------------------------------------


def test_unavailable_device_is_a_config_error() -> None:
    """A CUDA index torch does not see, or an unknown device name, is a configuration error."""
    with pytest.raises(ConfigError) as caught:
        DiffusersGenerator("cuda:99").device_name()
    assert str(caught.value) == (
        f'device "cuda:99" is not available: torch sees {torch.cuda.device_count()} CUDA device(s)'
    )
    with pytest.raises(ConfigError) as caught:
        DiffusersGenerator("tpu").device_name()
    assert str(caught.value) == 'device must be auto, cpu, cuda, cuda:N or mps, got "tpu"'


def test_cpu_device_name(generator: DiffusersGenerator) -> None:
    """The CPU device is named plainly."""
    assert generator.device_name() == "cpu"


def test_backend_versions_come_from_package_metadata() -> None:
    """Versions are those of the installed distributions."""
    assert backend_versions() == {
        name: importlib.metadata.version(name) for name in ("diffusers", "torch", "transformers")
    }


def test_importing_the_backend_does_not_import_torch() -> None:
    """The CLI can import the backend module and stay fast: torch loads on first use."""
    code = "import sys, daemon.generators.diffusers_backend; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# -- fetching ------------------------------------------------------------------------------


def test_fetch_reports_local_sources_without_network(tmp_path: Path) -> None:
    """Folder and file aliases are local: fetch reports them and downloads nothing."""
    started: list[str] = []
    lines = fetch_models(
        [
            ModelSource("default", "folder", str(tmp_path / "sd")),
            ModelSource("one", "file", str(tmp_path / "one.safetensors")),
        ],
        on_progress=started.append,
    )
    assert lines == [
        f"default: {tmp_path / 'sd'} (local, nothing to fetch)",
        f"one: {tmp_path / 'one.safetensors'} (local, nothing to fetch)",
    ]
    assert started == []


def test_fetch_failure_is_model_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub model that cannot be downloaded (offline here) fails with the alias and id."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    started: list[str] = []
    with pytest.raises(ModelUnavailable) as caught:
        fetch_models([ModelSource("default", "hub", "org/model")], on_progress=started.append)
    assert str(caught.value).startswith('could not fetch model "default" (org/model): ')
    assert started == ["default: fetching org/model"]


def test_fetch_patterns_take_safetensors_and_configs_only() -> None:
    """Of a Stable Diffusion repo, only configs, tokenizer files and full safetensors weights."""
    repo_files = [
        "model_index.json",
        "v1-5-pruned-emaonly.safetensors",
        "v1-5-pruned.ckpt",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "text_encoder/model.safetensors",
        "text_encoder/pytorch_model.bin",
        "text_encoder/flax_model.msgpack",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "README.md",
    ]
    chosen = filter_repo_objects(
        repo_files, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS
    )
    assert list(chosen) == [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
    ]
