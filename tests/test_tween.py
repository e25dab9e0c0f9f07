"""Tween sequences: subdivision arithmetic, and the backend's batched frames on the tiny model."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from daemon.errors import InputError, Interrupted, OutOfMemory
from daemon.generators import GenerationEvents, TweenRequest
from daemon.generators.diffusers_backend import DiffusersGenerator
from daemon.generators.subdivision import (
    frame_seed,
    level,
    neighbours,
    plan_levels,
    snap,
    tween_times,
)
from daemon.generators.tiny import TINY_LORA_FILE
from daemon.generators.tween import slerp
from daemon.values import LoraSource, ModelSource
from tests.fakes import EVERY_CALL, OUT_OF_MEMORY, PipelineCalls

START = Image.new("RGB", (64, 64), (220, 40, 40))
END = Image.new("RGB", (80, 80), (30, 60, 230))  # resized to the tween's size


def tween_request(
    model: ModelSource,
    depth: int,
    needed: tuple[float, ...],
    *,
    existing: Mapping[float, Image.Image] | None = None,
    seed: int = 42,
    steps: int = 2,
    strength: float = 0.5,
    max_batch: int = 8,
    lora: LoraSource | None = None,
) -> TweenRequest:
    """Build a 64x64 tween between a red and a blue square."""
    return TweenRequest(
        model,
        START,
        END,
        64,
        64,
        depth,
        "a watercolor cat",
        "",
        steps,
        7.5,
        strength,
        seed,
        needed,
        existing or {},
        lora=lora,
        max_batch=max_batch,
    )


@dataclass
class Frames:
    """Collects frames and steps reported through GenerationEvents, in order and by call."""

    stop_after_steps: int | None = None
    calls: PipelineCalls = field(default_factory=PipelineCalls)
    frames: dict[float, Image.Image] = field(default_factory=dict)
    order: list[float] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)

    def on_frame(self, t: float, image: Image.Image) -> None:
        self.calls.deliver(t)
        self.frames[t] = image
        self.order.append(t)

    def on_step(self, done: int, total: int) -> None:
        self.steps.append((done, total))
        self.calls.step()

    def events(self) -> GenerationEvents:
        return GenerationEvents(
            on_image=lambda index, image: None,
            on_frame=self.on_frame,
            on_step=self.on_step,
            should_stop=lambda: (
                self.stop_after_steps is not None and len(self.steps) >= self.stop_after_steps
            ),
        )


def run(
    generator: DiffusersGenerator, request: TweenRequest, out_of_memory: Container[int] = ()
) -> Frames:
    """Run ``request`` and return what was reported; the calls numbered in ``out_of_memory``
    (from 1) run out of memory at their first step."""
    frames = Frames(calls=PipelineCalls(out_of_memory))
    generator.generate_tween(request, frames.events())
    return frames


def pixels(image: Image.Image) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Return the image as signed integers, so differences do not wrap around."""
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- subdivision arithmetic ------------------------------------------------------------------------


def test_times_levels_and_neighbours() -> None:
    """Depth 2 has five frames; 0.5 is level 1 between the ends, 0.25 level 2 between 0 and 0.5."""
    assert tween_times(2) == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert len(tween_times(6)) == 65
    assert [level(t, 3) for t in tween_times(3)] == [0, 3, 2, 3, 1, 3, 2, 3, 0]
    assert neighbours(0.5, 3) == (0.0, 1.0)
    assert neighbours(0.75, 2) == (0.5, 1.0)
    assert neighbours(0.375, 3) == (0.25, 0.5)


def test_plan_adds_missing_neighbours_level_by_level() -> None:
    """An eighth needs its quarter and the half first, unless they exist."""
    assert plan_levels(3, [0.125]) == [(0.5,), (0.25,), (0.125,)]
    assert plan_levels(3, [0.125], existing=[0.25]) == [(0.125,)]
    assert plan_levels(2, [0.25, 0.5, 0.75]) == [(0.5,), (0.25, 0.75)]
    assert plan_levels(2, [0.0, 1.0]) == []
    assert plan_levels(2, [0.5], existing=[0.5]) == [(0.5,)]  # asked for: made again
    assert plan_levels(2, [0.25], existing=[0.125]) == [(0.5,), (0.25,)]  # another depth's


def test_off_grid_time_is_refused() -> None:
    """A time that is no k / 2**depth is a caller's mistake."""
    assert snap(0.2500000001, 2) == 0.25
    with pytest.raises(ValueError) as caught:
        plan_levels(2, [0.3])
    assert str(caught.value) == "0.3 is not a frame time of a depth-2 tween"


def test_frame_seeds_follow_t() -> None:
    """Frame t's seed is the job seed plus t in thousandths, distinct at depth 6."""
    assert frame_seed(42, 0.25) == 292
    assert len({frame_seed(0, t) for t in tween_times(6)}) == 65


def test_slerp_keeps_the_norm_between_orthogonal_latents() -> None:
    """Halfway between two orthogonal unit vectors lies a unit vector; parallel ones lerp."""
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp(a, b, 0.5), torch.tensor([0.5**0.5, 0.5**0.5]))
    assert torch.allclose(slerp(a, 2 * a, 0.5), torch.tensor([1.5, 0.0]))


# -- frames on the tiny model ----------------------------------------------------------------------


def test_depth_two_makes_three_frames_in_one_call_per_depth(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Depth 2 reports 0.5, then 0.25 and 0.75, from one pipeline call per depth."""
    result = run(generator, tween_request(tiny_sd, 2, (0.25, 0.5, 0.75)))
    assert result.calls.calls == [[0.5], [0.25, 0.75]]
    assert result.order == [0.5, 0.25, 0.75]
    assert {(im.size, im.mode) for im in result.frames.values()} == {((64, 64), "RGB")}
    assert np.abs(pixels(result.frames[0.25]) - pixels(result.frames[0.75])).max() > 10
    assert result.steps == [(1, 2), (2, 2)]  # 2 steps at strength 0.5: one per call


def test_depth_three_makes_seven_frames(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Depth 3 gives the seven inner frames in batches of 1, 2 and 4."""
    needed = tween_times(3)[1:-1]
    result = run(generator, tween_request(tiny_sd, 3, needed))
    assert result.calls.calls == [[0.5], [0.25, 0.75], [0.125, 0.375, 0.625, 0.875]]
    assert sorted(result.frames) == list(needed)


def test_neighbours_not_asked_for_are_made_and_reported(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Asking for 0.125 alone makes 0.5 and 0.25 first, reporting them too."""
    result = run(generator, tween_request(tiny_sd, 3, (0.125,)))
    assert result.order == [0.5, 0.25, 0.125]
    assert result.calls.calls == [[0.5], [0.25], [0.125]]


def test_existing_frames_are_used_not_made_again(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Given 0.25 and 0.75, only 0.5 is made, and it matches the frame of the full run."""
    full = run(generator, tween_request(tiny_sd, 2, (0.25, 0.5, 0.75))).frames
    existing = {0.25: full[0.25], 0.75: full[0.75]}
    again = run(generator, tween_request(tiny_sd, 2, (0.5,), existing=existing))
    assert again.calls.calls == [[0.5]]
    assert list(again.frames) == [0.5]
    assert np.array_equal(pixels(again.frames[0.5]), pixels(full[0.5]))


def test_a_frame_made_alone_matches_it_made_in_a_batch(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """0.75 made alone from the existing 0.5 is 0.75 of the batched run within two levels."""
    full = run(generator, tween_request(tiny_sd, 2, (0.25, 0.5, 0.75))).frames
    alone = run(generator, tween_request(tiny_sd, 2, (0.75,), existing={0.5: full[0.5]})).frames
    assert list(alone) == [0.75]
    assert np.abs(pixels(alone[0.75]) - pixels(full[0.75])).max() <= 2


def test_same_seed_gives_the_same_frames(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """The same request twice gives identical frames; another seed gives other ones."""
    first = run(generator, tween_request(tiny_sd, 1, (0.5,))).frames[0.5]
    again = run(generator, tween_request(tiny_sd, 1, (0.5,))).frames[0.5]
    other = run(generator, tween_request(tiny_sd, 1, (0.5,), seed=43)).frames[0.5]
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).max() > 10


def test_max_batch_splits_a_depth(generator: DiffusersGenerator, tiny_sd: ModelSource) -> None:
    """With max_batch 1 each frame of a depth gets its own call."""
    result = run(generator, tween_request(tiny_sd, 2, (0.25, 0.5, 0.75), max_batch=1))
    assert result.calls.calls == [[0.5], [0.25], [0.75]]


def test_lora_applies_to_tween_frames(
    generator: DiffusersGenerator, tiny_sd: ModelSource, tiny_models: Path
) -> None:
    """A LoRA changes the frames, and they are back to plain without it."""
    lora = LoraSource("tiny", str(tiny_models / TINY_LORA_FILE), 1.0)
    plain = run(generator, tween_request(tiny_sd, 1, (0.5,))).frames[0.5]
    styled = run(generator, tween_request(tiny_sd, 1, (0.5,), lora=lora)).frames[0.5]
    plain_again = run(generator, tween_request(tiny_sd, 1, (0.5,))).frames[0.5]
    assert np.abs(pixels(styled) - pixels(plain)).max() > 10
    assert np.array_equal(pixels(plain_again), pixels(plain))


def test_nothing_needed_loads_nothing(tiny_sd: ModelSource) -> None:
    """A tween whose frames all exist returns at once without loading a model."""
    generator = DiffusersGenerator("cpu", threads=1)
    assert run(generator, tween_request(tiny_sd, 2, ())).frames == {}
    assert generator.loaded_models() == {}


# -- failures --------------------------------------------------------------------------------------


def test_out_of_memory_on_a_depth_retries_frame_by_frame(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """A depth that runs out of memory as a batch is made again one frame at a time."""
    request = tween_request(tiny_sd, 2, (0.25, 0.5, 0.75))
    alone = run(generator, tween_request(tiny_sd, 2, (0.25, 0.5, 0.75), max_batch=1)).frames
    result = run(generator, request, out_of_memory={2})
    assert result.calls.calls == [[0.5], OUT_OF_MEMORY, [0.25], [0.75]]
    assert result.order == [0.5, 0.25, 0.75]
    for t in (0.25, 0.5, 0.75):
        assert np.array_equal(pixels(result.frames[t]), pixels(alone[t]))


def test_out_of_memory_every_time_raises_out_of_memory(tiny_sd: ModelSource) -> None:
    """Out of memory even for one frame with every saver on ends in OutOfMemory."""
    generator = DiffusersGenerator("cpu", threads=1)
    frames = Frames(calls=PipelineCalls(EVERY_CALL))
    with pytest.raises(OutOfMemory) as caught:
        generator.generate_tween(tween_request(tiny_sd, 1, (0.5,)), frames.events())
    assert str(caught.value) == (
        "out of memory on cpu for one 64x64 tween frame, even with every memory saver on"
    )
    assert frames.calls.calls == [OUT_OF_MEMORY, OUT_OF_MEMORY]  # the frame, then with savers
    assert frames.frames == {}


def test_stop_request_interrupts_a_tween(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """A stop during the second depth raises Interrupted after the first depth's frame."""
    frames = Frames(stop_after_steps=2)
    with pytest.raises(Interrupted):
        generator.generate_tween(tween_request(tiny_sd, 2, (0.25, 0.5, 0.75)), frames.events())
    assert frames.order == [0.5]
    assert frames.steps == [(1, 2), (2, 2)]


def test_strength_too_low_is_an_input_error(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """A strength that leaves no denoising step is refused with the rule."""
    with pytest.raises(InputError) as caught:
        run(generator, tween_request(tiny_sd, 1, (0.5,), strength=0.4))
    assert str(caught.value) == (
        "parameters: strength must be at least 1/steps (0.5 with 2 steps) for tweens, got 0.4"
    )


def test_depth_out_of_range_is_an_input_error(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """Depth 7 is refused with the rule."""
    with pytest.raises(InputError) as caught:
        run(generator, tween_request(tiny_sd, 7, (0.5,)))
    assert str(caught.value) == "parameters: depth must be 1..6, got 7"
