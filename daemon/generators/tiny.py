"""Tiny random-weight pipelines, so the whole path runs offline in tests, demos and benchmarks.

``write_tiny_models(DIR)`` writes ``DIR/sd``: a complete Stable Diffusion folder (UNet, VAE,
CLIP text encoder and tokenizer, DDIM scheduler) at the sizes diffusers' own tests use. It
serves text2image, img2img and inpaint through the ordinary ``from_pretrained`` path, and
``DIR/lora.safetensors`` is a random LoRA for it (for ``[loras]``). Their pictures are noise.
``DIR/mesh`` is reserved for a tiny Shap-E model.
"""

from __future__ import annotations

import importlib
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

TINY_SD_SUBDIR = "sd"
TINY_MESH_SUBDIR = "mesh"  # reserved for the tiny Shap-E model
TINY_LORA_FILE = "lora.safetensors"  # a LoRA for the sd model, for [loras]

_VOCAB_SIZE = 1000
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"

# Words the BPE merges are learnt from, so that typical prompts take about one token per
# word, as with the real CLIP tokenizer (and the 77-token limit bites at a realistic length).
_CORPUS = """
a an the of and with in on at by for from to into over under through beside behind near
photo photograph painting drawing sketch illustration render portrait landscape still life
cat dog bird horse fox owl fish dragon robot knight castle city street forest mountain river
lake sea ocean beach sky cloud clouds sun moon star stars night day morning evening sunset
sunrise winter summer autumn spring rain snow fog mist light shadow shadows dark bright
red orange yellow green blue purple pink white black grey gold silver brown colorful
watercolor oil ink pencil charcoal digital art artwork style styled detailed highly
beautiful cinematic dramatic soft sharp focus lighting studio high quality resolution
realistic photorealistic fantasy science fiction graphic novel panel comic anime cartoon
close up wide angle view scene character face eyes hair hands standing sitting walking
flying running small large old young ancient modern futuristic tiny giant happy sad
blurry lowres worst low bad anatomy deformed ugly text watermark signature frame border
house tree trees flower flowers garden field grass stone wood wooden glass metal water fire
"""


def _bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character, the table byte-level BPE (GPT-2, CLIP) uses."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _learn_bpe(words: list[str], vocab_size: int) -> tuple[dict[str, int], list[str]]:
    """Learn CLIP-style BPE merges (``</w>`` ends a word) on ``words``, deterministically."""
    byte_chars = _bytes_to_unicode()
    alphabet = [byte_chars[b] for b in range(256)]
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab[token] = len(vocab)
    counts = Counter(words)
    split = {
        word: [*(byte_chars[b] for b in word.encode()[:-1]), byte_chars[word.encode()[-1]] + "</w>"]
        for word in counts
    }
    pairs: Counter[tuple[str, str]] = Counter()
    for word, parts in split.items():
        for pair in itertools.pairwise(parts):
            pairs[pair] += counts[word]
    merges: list[str] = []
    while len(vocab) < vocab_size - 2 and pairs:
        # Ties broken by the pair itself so the same files come out every time.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(f"{best[0]} {best[1]}")
        vocab[merged] = len(vocab)
        for word, parts in split.items():
            if best[0] not in parts or best[1] not in parts:
                continue
            for pair in itertools.pairwise(parts):
                pairs[pair] -= counts[word]
            i, out = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            split[word] = out
            for pair in itertools.pairwise(out):
                pairs[pair] += counts[word]
        pairs = +pairs  # drop pairs no word has any more
    vocab[_BOS] = len(vocab)
    vocab[_EOS] = len(vocab)
    return vocab, merges


def _write_tokenizer(folder: Path) -> None:
    """Write a CLIPTokenizer (vocab.json, merges.txt, tokenizer_config.json) with no hub access."""
    vocab, merges = _learn_bpe(re.findall(r"[a-z]+", _CORPUS), _VOCAB_SIZE)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8"
    )
    config: dict[str, Any] = {
        "tokenizer_class": "CLIPTokenizer",
        # Without it the tokenizer claims an unbounded length and the text encoder overflows.
        "model_max_length": 77,
        "bos_token": _BOS,
        "eos_token": _EOS,
        "unk_token": _EOS,
        "pad_token": _EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _write_sd(folder: Path, lora_file: Path) -> None:
    """Write the tiny Stable Diffusion pipeline folder and a LoRA for it (safetensors only)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # diffusers is only partly typed; going through the module keeps its classes untyped (Any).
    diffusers: Any = importlib.import_module("diffusers")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        torch.manual_seed(0)
        vae = diffusers.AutoencoderKL(
            block_out_channels=(32, 64),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
        )
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=_VOCAB_SIZE - 2,
                eos_token_id=_VOCAB_SIZE - 1,
                pad_token_id=_VOCAB_SIZE - 1,
                hidden_size=32,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=5,
                vocab_size=_VOCAB_SIZE,
                max_position_embeddings=77,
            )
        )
    # DDIM handles any step count, including the single step img2img takes at 2 steps x 0.6.
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    _write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    bars = importlib.import_module("transformers.utils.logging")
    was_showing = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # a bar per 300 kB file is noise
    try:
        pipe.save_pretrained(str(folder), safe_serialization=True)
    finally:
        if was_showing:
            bars.enable_progress_bar()
    _write_lora(unet, lora_file, diffusers)


def _write_lora(unet: Any, lora_file: Path, diffusers: Any) -> None:
    """Attach random LoRA layers to ``unet`` (after it was saved) and write them alone."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # Random A and B (not the usual zero B), so that the LoRA visibly changes the output.
        config = LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
        unet.add_adapter(config)
    layers = diffusers.utils.convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    diffusers.StableDiffusionPipeline.save_lora_weights(
        str(lora_file.parent), unet_lora_layers=layers, weight_name=lora_file.name
    )


def write_tiny_models(target: Path) -> dict[str, Path]:
    """Write the tiny offline models under ``target``; return model kind → folder (``sd``).

    ``target / TINY_LORA_FILE``, a LoRA for the ``sd`` model, is written too; it is not in the
    returned mapping, whose entries are pipelines for ``config.toml [models]``.
    """
    target.mkdir(parents=True, exist_ok=True)
    sd = target / TINY_SD_SUBDIR
    _write_sd(sd, target / TINY_LORA_FILE)
    return {TINY_SD_SUBDIR: sd}
