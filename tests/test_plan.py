"""Planning: tasks, seeds, output names, variation ranges and job keys (pure functions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.config import InboxConfig
from daemon.errors import InputError
from daemon.intake.candidates import Candidate
from daemon.intake.names import FileKind
from daemon.planning.keys import resolve_seeds
from daemon.planning.model import Dependency, PlanInput, Scene, output_dir
from daemon.planning.params import FALLBACKS, Params
from daemon.tasks.context import Draft
from daemon.tasks.prepare import plan_job
from daemon.values import ModelSource

INBOX = InboxConfig(path=Path("/in"), output=Path("/out"))
MODEL = ModelSource(alias="default", kind="folder", ref="/models/sd")
SHA = "ab" * 32


def params(**overrides: Any) -> Params:
    """Effective parameters as daemon.planning.params resolves them, with overrides."""
    return Params.from_mapping({**FALLBACKS, "vary": {}, **overrides})


class NoHashing:
    """Image and mesh planners hash nothing; a tween's would."""

    def hash_file(self, path: Path) -> str:
        raise AssertionError(f"unexpected hash of {path}")


def plan_for(rel: str = "a/cat.png", kind: str = "image", **kw: Any) -> Any:
    """Build a plan for one input with the given parameter overrides."""
    scene_texts = kw.pop("scene_texts", ())
    mask = kw.pop("mask", None)
    image_size = kw.pop("image_size", None)
    set_by_sidecars = kw.pop("set_by_sidecars", frozenset())
    sidecars = kw.pop("sidecars", ())
    kinds = {"image": FileKind.image, "prompt": FileKind.prompt, "job": FileKind.job}
    candidate = Candidate(INBOX, INBOX.path / rel, rel, kinds[kind], None, (), None)
    return plan_job(
        Draft(
            NoHashing(),
            candidate,
            [],
            rel,
            PlanInput(
                inbox=INBOX,
                rel=rel,
                kind=kind,
                input_sha256=SHA,
                input_bytes=10,
                params=params(**kw),
                model=MODEL,
                scenes=tuple(scene_texts),
                scene_plans=tuple(
                    Scene(n, text, text, text, {}) for n, text in enumerate(scene_texts, 1)
                ),
                mask=mask,
                image_size=image_size,
                set_by_sidecars=set_by_sidecars,
                sidecars=sidecars,
            ),
        )
    )


def test_seed_and_count_give_consecutive_seeds_and_names() -> None:
    """count = 3, seed = 100 makes cat-100.png, cat-101.png and cat-102.png."""
    plan = plan_for(count=3, seed=100)
    assert [o.file for o in plan.outputs] == ["cat-100.png", "cat-101.png", "cat-102.png"]
    assert plan.record["seeds"] == [100, 101, 102]
    assert plan.out_dir == Path("/out/a/cat")
    assert plan.wants_contact_sheet


def test_seeds_without_seed_come_from_the_content_hash() -> None:
    """Without seed or seeds, seeds derive from the input hash and are stable."""
    first = resolve_seeds(params(count=2), SHA)
    assert first == resolve_seeds(params(count=2), SHA)
    assert first[1] == first[0] + 1
    assert first != resolve_seeds(params(count=2), "cd" * 32)


def test_seeds_wrap_inside_the_seed_space() -> None:
    """seed + i never leaves 0..4294967295."""
    assert resolve_seeds(params(count=2, seed=4294967295), SHA) == [4294967295, 0]


def test_prompt_file_scenes_are_named_by_scene_and_seed() -> None:
    """Two scenes × seeds 7 and 8 give story-s01-7.png … story-s02-8.png."""
    plan = plan_for("story.md", "prompt", count=2, seed=7, scene_texts=("one", "two"))
    assert [o.file for o in plan.outputs] == [
        "story-s01-7.png",
        "story-s01-8.png",
        "story-s02-7.png",
        "story-s02-8.png",
    ]
    assert [o.prompt for o in plan.outputs] == ["one", "one", "two", "two"]
    assert plan.task == "text2image"


def test_prompt_variations_multiply_with_seeds() -> None:
    """prompts × seeds, named -p01-/-p02-."""
    plan = plan_for(prompts=("red", "blue"), seeds=(5, 9), count=2)
    assert [o.file for o in plan.outputs] == [
        "cat-p01-5.png",
        "cat-p01-9.png",
        "cat-p02-5.png",
        "cat-p02-9.png",
    ]


def test_vary_spreads_values_evenly_and_records_them() -> None:
    """guidance = [5, 9] over count 3 gives 5, 7, 9 on the outputs."""
    plan = plan_for(count=3, seed=1, vary={"guidance": (5.0, 9.0), "steps": (10.0, 20.0)})
    assert [o.guidance for o in plan.outputs] == [5.0, 7.0, 9.0]
    assert [o.steps for o in plan.outputs] == [10, 15, 20]
    assert plan.outputs[1].varied == {"guidance": 7.0, "steps": 15}


def test_job_key_changes_with_parameters_and_input_only() -> None:
    """The key is stable for the same plan and changes with a parameter."""
    a = plan_for(count=2, seed=1)
    assert a.job_key == plan_for(count=2, seed=1).job_key
    assert a.job_key != plan_for(count=2, seed=2).job_key
    assert a.job_key != plan_for(count=2, seed=1, guidance=8.0).job_key


def test_force_does_not_change_the_key() -> None:
    """force asks for regeneration; it is not a different job."""
    assert plan_for(force=True).job_key == plan_for(force=False).job_key


def test_task_must_suit_the_input() -> None:
    """A prompt file cannot be img2img'd."""
    with pytest.raises(InputError) as err:
        plan_for("notes.txt", "prompt", task="variations", scene_texts=("x",))
    assert str(err.value) == (
        'notes.txt: task must be one of text2image for a prompt file, got "variations"'
    )


def test_inpaint_without_mask_names_the_fix() -> None:
    """Inpainting needs a mask and the message says how to give one."""
    with pytest.raises(InputError) as err:
        plan_for("room.png", task="inpaint")
    assert str(err.value) == (
        "room.png: inpaint needs a mask: add room.mask.png beside it or set mask in room.toml"
    )
    ok = plan_for("room.png", task="inpaint", mask=Dependency("room.mask.png", SHA))
    assert ok.task == "inpaint"


def test_strength_too_low_for_the_steps_is_refused() -> None:
    """img2img with steps × strength below one step would do nothing."""
    with pytest.raises(InputError) as err:
        plan_for(steps=2, strength=0.4)
    assert str(err.value) == (
        "a/cat.png: strength must be at least 1/steps (0.5 with 2 steps) for variations, got 0.4"
    )


def test_mesh_plan_has_one_seed_and_a_file_per_format() -> None:
    """task = "mesh" plans cat.glb (+ cat.ply) from one seed with the preset's resolution."""
    plan = plan_for(task="mesh", seed=5, formats=("glb", "ply"), mesh_resolution=64)
    assert [o.file for o in plan.outputs] == ["cat.glb", "cat.ply"]
    assert {o.seed for o in plan.outputs} == {5}
    assert plan.record["mesh_resolution"] == 64 and "count" not in plan.record
    assert not plan.wants_contact_sheet


def test_output_dir_sanitises_names_for_every_os() -> None:
    """Reserved Windows names and odd characters become safe folder names."""
    assert output_dir(INBOX, "x/CON.png") == Path("/out/x/CON_")
    assert output_dir(INBOX, "a:b/c?.png") == Path("/out/a_b/c_")
    assert output_dir(INBOX, "t/walk.job.toml") == Path("/out/t/walk")


def test_auto_task_inpaints_an_image_with_a_mask_and_varies_one_without() -> None:
    """task = "auto": a mask makes an image an inpainting; no mask, a variation."""
    mask = Dependency("a/cat.mask.png", "cd" * 32)
    assert plan_for(mask=mask).task.value == "inpaint"
    assert plan_for().task.value == "variations"
    assert plan_for(mask=mask, task="variations").task.value == "variations"


def test_image_size_is_fitted_in_the_box_with_its_aspect_ratio() -> None:
    """A 640x480 input in a 512x512 box plans 512x384 with a note; the key covers the size."""
    wide = plan_for(image_size=(640, 480))
    assert (wide.params.width, wide.params.height) == (512, 384)
    assert wide.record["width"] == 512 and wide.record["height"] == 384
    assert wide.notes == (
        "a/cat.png: 640x480 input generated at 512x384 (fitted within 512x512, aspect ratio "
        "kept; width and height in a sidecar force a size)",
    )
    square = plan_for(image_size=(512, 512))
    assert (square.params.width, square.params.height, square.notes) == (512, 512, ())
    assert wide.job_key != square.job_key


def test_sidecar_width_or_height_force_the_size() -> None:
    """Both set by a sidecar: used as given; one set: the other follows the aspect ratio."""
    both = plan_for(image_size=(640, 480), set_by_sidecars=frozenset({"width", "height"}))
    assert (both.params.width, both.params.height) == (512, 512)
    one = plan_for(image_size=(640, 480), width=768, set_by_sidecars=frozenset({"width"}))
    assert (one.params.width, one.params.height) == (768, 576)


def test_text2image_ignores_image_sizes() -> None:
    """A prompt file is drawn at the configured size."""
    plan = plan_for("story.txt", kind="prompt", scene_texts=("a fox",))
    assert (plan.params.width, plan.params.height) == (512, 512)


@pytest.mark.parametrize(
    ("source", "box", "expected"),
    [
        ((640, 480), (512, 512), (512, 384)),
        ((480, 640), (512, 512), (384, 512)),
        ((96, 64), (192, 192), (192, 128)),
        ((64, 64), (512, 512), (512, 512)),
        ((5472, 3648), (512, 512), (512, 344)),
        ((3000, 100), (512, 512), (512, 64)),
        ((100, 3000), (2048, 2048), (72, 2048)),
    ],
)
def test_choose_size_rounds_to_multiples_of_8_within_64_to_2048(
    source: tuple[int, int], box: tuple[int, int], expected: tuple[int, int]
) -> None:
    """Fitted sizes are multiples of 8, kept in 64..2048, touching the box on one side."""
    from daemon.planning.sizes import choose_size

    chosen = choose_size("x.png", source, box)
    assert (chosen.width, chosen.height) == expected


def test_random_seeds_are_drawn_once_per_version_of_the_input() -> None:
    """seed = "random": distinct seeds, the same for the same version, new for a new sidecar,
    unlike the content-derived default (which keeps its seeds when only a sidecar changes)."""
    sidecar = (Dependency("a/cat.toml", "11" * 32),)
    edited = (Dependency("a/cat.toml", "22" * 32),)
    first = plan_for(seed="random", count=4, sidecars=sidecar)
    seeds = first.record["seeds"]
    assert len(set(seeds)) == 4 and all(0 <= s < 2**32 for s in seeds)
    assert plan_for(seed="random", count=4, sidecars=sidecar).record["seeds"] == seeds
    assert plan_for(seed="random", count=4, sidecars=edited).record["seeds"] != seeds
    assert plan_for(seed="random", count=5, sidecars=sidecar).record["seeds"][:4] == seeds
    assert plan_for("a/dog.png", seed="random", count=4, sidecars=sidecar).record["seeds"] != seeds
    default = plan_for(count=4, sidecars=sidecar).record["seeds"]
    assert plan_for(count=4, sidecars=edited).record["seeds"] == default != seeds
    assert first.record["seed"] == seeds[0]


def test_seed_range_picks_count_distinct_seeds_inside_it() -> None:
    """seed_range = [10, 20] with count = 5 gives five distinct seeds in 10..20; a range of
    exactly count seeds gives all of them; a smaller one is an error naming the sidecar."""
    seeds = plan_for(seed_range=(10, 20), count=5).record["seeds"]
    assert len(set(seeds)) == 5 and all(10 <= s <= 20 for s in seeds)
    assert plan_for(seed_range=(7, 9), count=3).record["seeds"] == [7, 8, 9]
    with pytest.raises(InputError) as caught:
        plan_for(seed_range=(7, 8), count=3)
    assert (
        str(caught.value) == "a/cat.png: seed_range must hold at least count (3) seeds, got [7, 8]"
    )


def test_random_seeds_of_a_scene_survive_an_edit_of_another_scene() -> None:
    """seed = "random" in a multi-scene file: editing scene 2 redraws only scene 2's seeds."""
    before = plan_for("story.txt", kind="prompt", scene_texts=("a fox", "a owl"), seed="random")
    after = plan_for("story.txt", kind="prompt", scene_texts=("a fox", "an owl"), seed="random")
    seeds = {(o.scene, o.seed) for o in before.outputs}, {(o.scene, o.seed) for o in after.outputs}
    scene_1 = [{s for n, s in found if n == 1} for found in seeds]
    scene_2 = [{s for n, s in found if n == 2} for found in seeds]
    assert scene_1[0] == scene_1[1] and scene_2[0] != scene_2[1]
    default = plan_for("story.txt", kind="prompt", scene_texts=("a fox", "a owl"))
    assert {o.seed for o in default.outputs} != {o.seed for o in before.outputs}
