"""Tween frames in latent space: encode neighbours, slerp between them, refine by img2img.

Every neighbour's latent is encoded from its image, also for frames made moments ago, so that
a frame made alone later (after its file was deleted) starts from exactly the same latent as
when the whole sequence was made. torch is imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from daemon.generators import TweenRequest
from daemon.generators.conditioning import prompt_kwargs
from daemon.generators.subdivision import frame_seed, neighbours, snap

if TYPE_CHECKING:
    import torch
    from PIL import Image

# Above this cosine between two latents slerp would divide by almost zero; lerp is as good.
_PARALLEL_DOT = 0.9995


def known_frames(request: TweenRequest, remade: Sequence[float]) -> dict[float, Image.Image]:
    """Return the frames usable as neighbours: the endpoints and the existing frames not remade.

    Existing frames off this depth's grid are of no use here and are left out.
    """
    from PIL import Image

    size = (request.width, request.height)
    frames: dict[float, Image.Image] = {}
    for t, image in request.existing.items():
        try:
            frames[snap(t, request.depth)] = image
        except ValueError:
            continue
    frames = {t: image for t, image in frames.items() if t not in remade}
    frames[0.0], frames[1.0] = request.start, request.end
    return {
        t: image
        if image.size == size
        else image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        for t, image in frames.items()
    }


def encode(pipe: Any, image: Image.Image) -> torch.Tensor:
    """Return the scaled VAE latent (1 x C x h x w) of ``image``: the mean, not a sample."""
    import torch

    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image.convert("RGB"))
    pixels = pixels.to(device=pipe._execution_device, dtype=vae.dtype)
    with torch.no_grad():
        latent: torch.Tensor = vae.encode(pixels).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scaled: torch.Tensor = (latent - shift) * vae.config.scaling_factor
    return scaled


def slerp(a: torch.Tensor, b: torch.Tensor, fraction: float) -> torch.Tensor:
    """Interpolate spherically between two latents (keeps the norm a diffusion model expects)."""
    import torch

    flat_a, flat_b = a.flatten().float(), b.flatten().float()
    dot = torch.dot(flat_a / flat_a.norm(), flat_b / flat_b.norm()).clamp(-1.0, 1.0)
    if dot.abs() > _PARALLEL_DOT:
        mixed = (1 - fraction) * a.float() + fraction * b.float()
    else:
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        mixed = (torch.sin((1 - fraction) * theta) / sin_theta) * a.float() + (
            torch.sin(fraction * theta) / sin_theta
        ) * b.float()
    return mixed.to(a.dtype)


class LatentCache:
    """Latents of the frames known so far, each encoded once and only when first needed."""

    def __init__(self, frames: Mapping[float, Image.Image]) -> None:
        self._frames = dict(frames)
        self._latents: dict[float, torch.Tensor] = {}

    def add(self, t: float, image: Image.Image) -> None:
        """Make a newly made frame available as a neighbour."""
        self._frames[t] = image

    def latent(self, pipe: Any, t: float) -> torch.Tensor:
        """Return the latent of frame ``t``, encoding its image with ``pipe`` on first use."""
        if t not in self._latents:
            self._latents[t] = encode(pipe, self._frames[t])
        return self._latents[t]

    def starting_point(self, pipe: Any, t: float, depth: int) -> torch.Tensor:
        """Return the slerp midpoint of the two neighbours of frame ``t``."""
        before, after = neighbours(t, depth)
        return slerp(self.latent(pipe, before), self.latent(pipe, after), 0.5)


def batch_kwargs(
    request: TweenRequest,
    frames: Sequence[float],
    cache: LatentCache,
    pipe: Any,
    on_step_end: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """Return the img2img call that refines ``frames`` (one level of the tween) in one batch."""
    import torch

    count = len(frames)
    return {
        **prompt_kwargs(pipe, [request.prompt] * count, [request.negative_prompt] * count),
        # A latent-channel tensor is taken as the initial latents, not encoded again.
        "image": torch.cat([cache.starting_point(pipe, t, request.depth) for t in frames]),
        "strength": request.strength,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "generator": [
            torch.Generator("cpu").manual_seed(frame_seed(request.seed, t)) for t in frames
        ],
        "callback_on_step_end": on_step_end,
    }
