"""Prompt weighting as A1111 writes it and prompts past 77 tokens, encoded by compel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.cli import main
from daemon.generators import GenerationEvents, ImageRequest, ImageSpec
from daemon.generators.diffusers_backend import DiffusersGenerator
from daemon.generators.weighting import parse_weights, plain_text
from daemon.outputs.png import read_png_chunks
from daemon.values import ModelSource, Task
from tests.helpers import manifest, write_config


def test_a1111_weights_nest_multiply_and_merge() -> None:
    """(x) is ×1.1, [x] ÷1.1, (x:w) ×w, nesting multiplies, escapes stay literal."""
    assert parse_weights("a (red:1.3) cat") == [("a ", 1.0), ("red", 1.3), (" cat", 1.0)]
    assert parse_weights("[blurry]") == [("blurry", pytest.approx(1 / 1.1))]
    assert parse_weights("((big)) dog") == [("big", pytest.approx(1.21)), (" dog", 1.0)]
    assert parse_weights("(a [b]:2)") == [("a ", 2.0), ("b", pytest.approx(2 / 1.1))]
    assert parse_weights(r"smile \(happy\)") == [("smile (happy)", 1.0)]
    assert parse_weights("open (bracket") == [("open ", 1.0), ("bracket", pytest.approx(1.1))]
    assert parse_weights("time: 10:30") == [("time: 10:30", 1.0)]
    assert parse_weights("") == [("", 1.0)]
    assert plain_text("a (red:1.3) [cat]") == "a red cat"


@pytest.fixture
def encoder_inputs(generator: DiffusersGenerator, tiny_sd: ModelSource) -> Iterator[list[Any]]:
    """Every input_ids tensor the tiny model's text encoder is called with during the test."""
    model = generator._models.image_model(tiny_sd)  # loaded once: the hook needs the encoder
    seen: list[Any] = []

    def record(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(args[0] if args else kwargs["input_ids"])

    handle = model.base.text_encoder.register_forward_pre_hook(record, with_kwargs=True)
    yield seen
    handle.remove()


def _make(
    generator: DiffusersGenerator, model: ModelSource, prompt: str, negative: str = ""
) -> Any:
    images: list[Image.Image] = []
    warnings: list[str] = []
    request = ImageRequest(
        task=Task.text2image,
        model=model,
        width=64,
        height=64,
        images=(ImageSpec(0, prompt, negative, 11, 2, 7.5, 1.0),),
    )
    events = GenerationEvents(on_image=lambda i, im: images.append(im), on_warning=warnings.append)
    generator.generate_images(request, events)
    assert warnings == []
    return images[0]


@pytest.mark.slow
def test_a_120_token_prompt_reaches_the_text_encoder_whole(
    generator: DiffusersGenerator, tiny_sd: ModelSource, encoder_inputs: list[Any]
) -> None:
    """Every token of a 120-token prompt and of a long negative prompt is encoded, in order."""
    tokenizer = generator._models.image_model(tiny_sd).base.tokenizer
    # One token per word in the tiny vocabulary; the last words would be cut at 77 tokens.
    words = [
        "a",
        "red",
        "fox",
        "in",
        "the",
        "snow",
        "with",
        "a",
        "dark",
        "cat",
        "and",
        "a",
        "dog",
        "of",
        "light",
    ]
    prompt = " ".join(words[i % len(words)] for i in range(116)) + " over the blurry dog"
    negative = "blurry " * 90
    wanted = tokenizer(prompt).input_ids[1:-1]
    assert len(wanted) == 120
    _make(generator, tiny_sd, prompt, negative)
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    streams = []
    for ids in encoder_inputs:
        for row in ids.tolist():
            streams.append([t for t in row if t not in special])
    # Chunks of one prompt arrive one after another: join consecutive chunks and look for it.
    joined = [t for stream in streams for t in stream]
    text = " ".join(map(str, joined))
    assert " ".join(map(str, wanted)) in text
    assert " ".join(map(str, tokenizer(negative).input_ids[1:-1])) in text


@pytest.mark.slow
def test_weights_change_the_picture_and_weight_one_does_not(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """(red:1.0) gives the same pixels as red; (red:1.6) and [red] give other pixels."""
    plain = _make(generator, tiny_sd, "a red fox").tobytes()
    assert _make(generator, tiny_sd, "a (red:1.0) fox").tobytes() == plain
    assert _make(generator, tiny_sd, "a (red:1.6) fox").tobytes() != plain
    assert _make(generator, tiny_sd, "a [red] fox").tobytes() != plain


@pytest.mark.slow
def test_the_prompt_is_recorded_as_written(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PNG parameters and the manifest keep the weighting syntax; no truncation warning."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    prompt = "a (red:1.3) fox, [blurry] " + "snow " * 100
    (tmp_path / "inbox" / "fox.txt").write_text(prompt, encoding="utf-8")
    (tmp_path / "inbox" / "fox.toml").write_text(
        'seed = 1\nnegative_prompt = "(ugly:1.2)"\n', encoding="utf-8"
    )
    assert main(["once", "-c", str(config)]) == 0, capsys.readouterr().out
    out = tmp_path / "outbox" / "fox"
    text = read_png_chunks(out / "fox-1.png")["parameters"]
    assert text.startswith(prompt.strip() + "\nNegative prompt: (ugly:1.2)\n")
    recorded = manifest(out)
    assert recorded["outputs"][0]["prompt"] == prompt.strip()
    assert recorded["warnings"] == []


@pytest.mark.slow
def test_sdxl_gets_both_encoders_long_prompts_and_pooled_embeddings(tiny_models: Path) -> None:
    """On a tiny SDXL pipeline, a 146-token prompt becomes two chunks side by side from both
    encoders, with pooled embeddings, and the pipeline runs on them."""
    import diffusers
    import torch
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from daemon.generators.conditioning import prompt_kwargs

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_models / "sd" / "tokenizer"))
    torch.manual_seed(0)
    text = CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), projection_dim=32,
    )  # fmt: skip
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
    )  # fmt: skip
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text),
        text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    long = " ".join(["a red fox in the snow"] * 24)
    kwargs = prompt_kwargs(pipe, [long, "a (red:1.3) cat"], ["", "blurry"])
    assert {k: tuple(v.shape) for k, v in kwargs.items()} == {
        "prompt_embeds": (2, 154, 64),
        "negative_prompt_embeds": (2, 154, 64),
        "pooled_prompt_embeds": (2, 32),
        "negative_pooled_prompt_embeds": (2, 32),
    }
    images = pipe(**kwargs, num_inference_steps=1, height=64, width=64).images
    assert [im.size for im in images] == [(64, 64), (64, 64)]
