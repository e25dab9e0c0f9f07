"""Samplers as AUTOMATIC1111 users name them, and the diffusers schedulers that implement them.

Plain data: nothing here imports torch or diffusers, so the planner can validate a ``sampler``
key and the records can name a model's own scheduler without loading anything. The table
follows diffusers' own correspondence (docs: "Schedulers", "A1111 equivalents"); A1111 names
without a diffusers scheduler (``DPM++ 2S a``, ``DPM fast``, ``DPM adaptive``) and those that
need an extra package (``DPM++ SDE`` needs torchsde, ``LMS`` scipy) are left out.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Sampler:
    """One A1111 sampler: its name, the diffusers scheduler class and the options it needs."""

    name: str
    scheduler: str
    options: Mapping[str, Any] = field(default_factory=dict)


_KARRAS = MappingProxyType({"use_karras_sigmas": True})
_SDE = MappingProxyType({"algorithm_type": "sde-dpmsolver++"})
_SDE_KARRAS = MappingProxyType({"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True})

_TABLE = (
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler"),
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", _KARRAS),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE),
    Sampler("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", _SDE_KARRAS),
    Sampler("DPM2", "KDPM2DiscreteScheduler"),
    Sampler("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
    Sampler("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS),
    Sampler("Euler", "EulerDiscreteScheduler"),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("Heun", "HeunDiscreteScheduler"),
    Sampler("DDIM", "DDIMScheduler"),
    Sampler("PLMS", "PNDMScheduler"),
    Sampler("UniPC", "UniPCMultistepScheduler"),
    Sampler("LCM", "LCMScheduler"),
)

SAMPLERS: Mapping[str, Sampler] = MappingProxyType({s.name: s for s in _TABLE})
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# The options a scheduler config may carry that change which A1111 sampler it is.
_DISTINGUISHING = ("use_karras_sigmas", "algorithm_type")
_DEFAULT_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {"use_karras_sigmas": False, "algorithm_type": "dpmsolver++"}
)


def _folded(name: str) -> str:
    return " ".join(name.split()).casefold()


_BY_FOLDED = {_folded(s.name): s for s in _TABLE}


def find_sampler(name: str) -> Sampler | None:
    """The sampler called ``name`` (case and spacing ignored: ``euler A`` is ``Euler a``)."""
    return _BY_FOLDED.get(_folded(name))


def closest_sampler(name: str) -> str | None:
    """The known sampler name closest to a misspelt one, if any is close."""
    folded = _folded(name)
    close = difflib.get_close_matches(folded, list(_BY_FOLDED), n=1, cutoff=0.6)
    return _BY_FOLDED[close[0]].name if close else None


def sampler_for_scheduler(class_name: str, config: Mapping[str, Any]) -> Sampler | None:
    """The A1111 sampler a diffusers scheduler class and config amount to (a model's own)."""
    for sampler in _TABLE:
        if sampler.scheduler != class_name:
            continue
        wanted = {**_DEFAULT_OPTIONS, **sampler.options}
        if all(
            config.get(key, _DEFAULT_OPTIONS[key]) == wanted[key]
            for key in _DISTINGUISHING
            if key in config or key in sampler.options
        ):
            return sampler
    return None
