"""Prompts → text embeddings with compel: A1111 weighting and prompts past 77 tokens.

Stable Diffusion and SDXL pipelines are handed ``prompt_embeds`` (and, for SDXL, the pooled
embeddings) that compel built from the weighted fragments of ``weighting.parse_weights``. A
prompt longer than the text encoder's window is encoded in 77-token chunks, each with its own
start and end markers, and the chunks are concatenated, so nothing is cut; positive and negative
prompts of a batch are padded with the empty prompt's embedding to one length. Other pipelines
get the prompt text as it is. torch and compel are imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from daemon.generators.weighting import parse_weights, plain_text

# The pipeline families whose CLIP text encoders compel knows how to drive.
_SD = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
)
_SDXL = (
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
)


def weighs_prompts(pipe: Any) -> bool:
    """Whether ``pipe`` gets compel's embeddings (Stable Diffusion 1.x/2.x and SDXL)."""
    return type(pipe).__name__ in _SD + _SDXL


def prompt_kwargs(pipe: Any, prompts: Sequence[str], negatives: Sequence[str]) -> dict[str, Any]:
    """The prompt arguments of one pipeline call for a batch of prompts and negative prompts."""
    if not weighs_prompts(pipe):
        return {"prompt": list(prompts), "negative_prompt": list(negatives)}
    import torch

    with torch.no_grad():
        if type(pipe).__name__ in _SDXL:
            return _sdxl_kwargs(pipe, prompts, negatives)
        return _sd_kwargs(pipe, prompts, negatives)


def _compel(pipe: Any, tokenizer: Any, text_encoder: Any, *, sdxl: bool, pooled: bool) -> Any:
    from compel import Compel, ReturnedEmbeddingsType

    kind = (
        ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        if sdxl
        else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
    )
    dtype = text_encoder.dtype
    return Compel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        truncate_long_prompts=False,
        returned_embeddings_type=kind,
        requires_pooled=pooled,
        device=str(pipe._execution_device),
        dtype_for_device_getter=lambda device: dtype,
    )


def _encode(compel: Any, text: str) -> Any:
    """The embedding (1 x tokens x dim) of one A1111 prompt, in as many chunks as it needs."""
    from compel.prompt_parser import FlattenedPrompt, Fragment

    prompt = FlattenedPrompt([Fragment(piece, weight) for piece, weight in parse_weights(text)])
    (conditioning, _tokens), _options = compel.build_conditioning_tensor_for_prompt_object(prompt)
    return conditioning if conditioning.dim() == 3 else conditioning.unsqueeze(0)


def _sd_kwargs(pipe: Any, prompts: Sequence[str], negatives: Sequence[str]) -> dict[str, Any]:
    import torch

    compel = _compel(pipe, pipe.tokenizer, pipe.text_encoder, sdxl=False, pooled=False)
    embeds = compel.pad_conditioning_tensors_to_same_length(
        [_encode(compel, t) for t in [*prompts, *negatives]]
    )
    count = len(prompts)
    return {
        "prompt_embeds": torch.cat(embeds[:count]),
        "negative_prompt_embeds": torch.cat(embeds[count:]),
    }


def _sdxl_kwargs(pipe: Any, prompts: Sequence[str], negatives: Sequence[str]) -> dict[str, Any]:
    import torch

    first = _compel(pipe, pipe.tokenizer, pipe.text_encoder, sdxl=True, pooled=False)
    second = _compel(pipe, pipe.tokenizer_2, pipe.text_encoder_2, sdxl=True, pooled=True)
    texts = [*prompts, *negatives]
    left = [_encode(first, t) for t in texts]
    right = [_encode(second, t) for t in texts]
    # The two encoders' embeddings side by side, each padded with its own empty prompt.
    tokens = max(e.shape[1] for e in left + right)
    left, right = _pad(first, left, tokens), _pad(second, right, tokens)
    embeds = [torch.cat([a, b], dim=-1) for a, b in zip(left, right, strict=True)]
    provider = second.conditioning_provider
    pooled = [provider.get_pooled_embeddings([plain_text(t)], device=second.device) for t in texts]
    count = len(prompts)
    return {
        "prompt_embeds": torch.cat(embeds[:count]),
        "negative_prompt_embeds": torch.cat(embeds[count:]),
        "pooled_prompt_embeds": torch.cat(pooled[:count]),
        "negative_pooled_prompt_embeds": torch.cat(pooled[count:]),
    }


def _pad(compel: Any, embeds: list[Any], tokens: int) -> list[Any]:
    """``embeds`` padded to ``tokens`` (a multiple of the window) with the empty prompt's."""
    import torch
    from compel import Compel

    empty = compel.conditioning_provider.empty_z
    empty = empty if empty.dim() == 3 else empty.unsqueeze(0)
    target = torch.cat([empty] * (tokens // empty.shape[1]), dim=1)
    padded: list[Any] = Compel._pad_conditioning_tensors_to_same_length([*embeds, target], empty)
    return padded[:-1]
