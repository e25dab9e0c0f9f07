"""Tiny random-weight pipelines, so the whole path runs offline in tests, demos and benchmarks.

``write_tiny_models(DIR)`` writes ``DIR/sd``: a complete Stable Diffusion folder (UNet, VAE,
CLIP text encoder and tokenizer, DDIM scheduler) at the sizes diffusers' own tests use. It
serves text2image, img2img and inpaint through the ordinary ``from_pretrained`` path, and
``DIR/lora.safetensors`` is a random LoRA for it (for ``[loras]``). Their pictures are noise.

``DIR/mesh`` is a tiny Shap-E image-to-3D pipeline (prior, CLIP image encoder, Heun scheduler,
renderer) that really yields a mesh: a random renderer has empty marching-cubes tables and a
surface function that never crosses zero, so the tables are filled (``cubes``) and the
renderer's own weights are set so that its surface function is a blob about the origin,
deformed a little by the image and the seed.
"""

from __future__ import annotations

import importlib
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from daemon.generators.loading import diffusers_module

TINY_SD_SUBDIR = "sd"
TINY_MESH_SUBDIR = "mesh"  # the tiny Shap-E image-to-3D model
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
    diffusers: Any = diffusers_module()

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
    _save_quietly(pipe, folder)
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


# The tiny renderer: an MLP of width 8 whose first four weight matrices come from the latent
# (32 vectors of 32 values). Unit 0 of every layer carries SCALE * (cos x + cos y + cos z),
# kept in the range where SiLU is the identity; the last layer puts the surface at LEVEL,
# a blob of radius about 0.8 in Shap-E's [-1, 1] box.
_MESH_WIDTH = 8
_MESH_LATENT = 32
_MESH_SCALE = 10.0
_MESH_LEVEL = 2.7
# Positional-encoding channels of the renderer's 93 inputs that vary slowly: the position and
# sin/cos at the two lowest frequencies. Only these shape the blob, so that it stays smooth.
_SMOOTH_CHANNELS = [*range(0, 9), *range(48, 54)]
_COS_CHANNELS = [48, 49, 50]  # cos x, cos y, cos z


def _shape_renderer(renderer: Any) -> None:
    """Fill the marching-cubes tables and set the weights that make a smooth closed surface."""
    import torch

    from daemon.generators.cubes import case_tables

    cases, masks = case_tables()
    width = _MESH_WIDTH
    smooth = torch.zeros(93, dtype=torch.bool)
    smooth[_SMOOTH_CHANNELS] = True
    with torch.no_grad():
        renderer.mesh_decoder.cases.copy_(torch.tensor(cases))
        renderer.mesh_decoder.masks.copy_(torch.tensor(masks))
        shapes = renderer.config.param_shapes
        for layer, (name, (rows, cols)) in enumerate(
            zip(renderer.config.param_names, shapes, strict=True)
        ):
            projection = renderer.params_proj.projections[name.replace(".", "__")]
            # A projected weight is LayerNorm(latent part) * gain + bias: the bias is the
            # fixed design, the gain how much the image and seed bend it.
            weight = torch.randn(rows, cols) * 0.5
            gain = torch.full((cols,), 0.05)
            if layer == 0:
                weight[:, ~smooth] = 0
                gain = torch.where(smooth, 0.4, 0.0)
                weight[0] = 0
                weight[0, _COS_CHANNELS] = _MESH_SCALE
            else:
                weight[:, 0] = 0
                weight[0] = 0
                weight[0, 0] = 1
                gain[0] = 0  # unit 0 is large: any gain on it would swamp the shape
            projection.proj.bias.copy_(weight.reshape(-1))
            projection.norm.weight.copy_(gain)
            projection.norm.bias.zero_()
        mlp = renderer.mlp.mlp
        for linear in mlp:
            linear.bias.zero_()
        for linear in (mlp[4], mlp[5]):  # the renderer's own hidden layers pass unit 0 on
            linear.weight.copy_(torch.randn_like(linear.weight))
            linear.weight[:, 0] = 0
            linear.weight[0] = 0
            linear.weight[0, 0] = 1
        last = mlp[-1]
        last.weight[:, 0] = 0
        last.weight[0] = 0
        last.weight[0, 0] = 1  # output 0 is the signed distance, positive inside
        last.bias[0] = -_MESH_SCALE * _MESH_LEVEL
        last.weight[3:6, 1:] = torch.randn(3, width - 1) * 2  # outputs 3-5: vertex colours


def _write_mesh(folder: Path) -> None:
    """Write the tiny Shap-E image-to-3D pipeline folder (safetensors only)."""
    import torch

    diffusers: Any = diffusers_module()
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    shap_e: Any = diffusers_module("pipelines.shap_e")
    transformers_logging: Any = importlib.import_module("transformers.utils.logging")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        prior = diffusers.PriorTransformer(
            num_attention_heads=2,
            attention_head_dim=16,
            embedding_dim=_MESH_LATENT,
            num_embeddings=4 * _MESH_WIDTH,
            embedding_proj_dim=32,
            time_embed_dim=128,
            num_layers=1,
            clip_embed_dim=2 * _MESH_LATENT,
            additional_embeddings=0,
            time_embed_act_fn="gelu",
            norm_in_type="layer",
            embedding_proj_norm_type="layer",
            encoder_hid_proj_type=None,
            added_emb_type=None,
        )
        torch.manual_seed(0)
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=32,
                image_size=32,
                patch_size=4,
                projection_dim=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_channels=3,
                num_hidden_layers=2,
            )
        )
        torch.manual_seed(0)
        renderer = shap_e.ShapERenderer(
            param_shapes=((_MESH_WIDTH, 93), *[(_MESH_WIDTH, _MESH_WIDTH)] * 3),
            d_latent=_MESH_LATENT,
            d_hidden=_MESH_WIDTH,
            n_output=12,
            background=(255.0, 255.0, 255.0),
        )
        _shape_renderer(renderer)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # a note that torchvision is not installed
    try:
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            do_center_crop=True,
            do_normalize=True,
            do_resize=True,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
            resample=3,
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    # The scheduler of openai/shap-e-img2img.
    scheduler = diffusers.HeunDiscreteScheduler(
        beta_schedule="exp",
        num_train_timesteps=1024,
        prediction_type="sample",
        use_karras_sigmas=True,
        clip_sample=True,
        clip_sample_range=1.0,
    )
    pipe = diffusers.ShapEImg2ImgPipeline(
        prior=prior,
        image_encoder=image_encoder,
        image_processor=image_processor,
        scheduler=scheduler,
        shap_e_renderer=renderer,
    )
    _save_quietly(pipe, folder)
    # Without torchvision, transformers builds a CLIPImageProcessorPil and the index says so;
    # name the class the real model names, so the folder is the same on every machine.
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8"))
    index["image_processor"] = ["transformers", "CLIPImageProcessor"]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_quietly(pipe: Any, folder: Path) -> None:
    """Save ``pipe`` as safetensors without a progress bar per (tiny) file."""
    bars = importlib.import_module("transformers.utils.logging")
    was_showing = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        pipe.save_pretrained(str(folder), safe_serialization=True)
    finally:
        if was_showing:
            bars.enable_progress_bar()


def write_tiny_models(target: Path) -> dict[str, Path]:
    """Write the tiny offline models under ``target``; return model kind → folder.

    The kinds are ``sd`` (for ``[models] default``) and ``mesh`` (for ``[models] mesh``).
    ``target / TINY_LORA_FILE``, a LoRA for the ``sd`` model, is written too; it is not in the
    returned mapping, whose entries are pipelines for ``config.toml [models]``.
    """
    target.mkdir(parents=True, exist_ok=True)
    sd = target / TINY_SD_SUBDIR
    _write_sd(sd, target / TINY_LORA_FILE)
    mesh = target / TINY_MESH_SUBDIR
    _write_mesh(mesh)
    return {TINY_SD_SUBDIR: sd, TINY_MESH_SUBDIR: mesh}
