"""Samplers as A1111 users name them: validated, mapped to schedulers, recorded by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from sd_parsers import ParserManager

from daemon.cli import main
from daemon.generators import GenerationEvents, ImageRequest, ImageSpec
from daemon.generators.diffusers_backend import DiffusersGenerator
from daemon.generators.samplers import SAMPLERS, find_sampler, sampler_for_scheduler
from daemon.values import ModelSource, Task
from tests.helpers import manifest, write_config


def test_names_are_matched_ignoring_case_and_spacing() -> None:
    """``euler A`` and ``dpm++  2m karras`` are the A1111 samplers of those names."""
    found = find_sampler("euler A")
    assert found is not None and found.name == "Euler a"
    karras = find_sampler("dpm++  2m karras")
    assert karras is not None
    assert (karras.scheduler, dict(karras.options)) == (
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True},
    )
    assert find_sampler("DPM fast") is None


def test_a_models_own_scheduler_is_named_as_a1111_does() -> None:
    """A scheduler config maps back to its A1111 name, options included."""
    assert sampler_for_scheduler("DDIMScheduler", {}) == SAMPLERS["DDIM"]
    assert sampler_for_scheduler("PNDMScheduler", {"skip_prk_steps": True}) == SAMPLERS["PLMS"]
    config = {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}
    found = sampler_for_scheduler("DPMSolverMultistepScheduler", config)
    assert found == SAMPLERS["DPM++ 2M SDE Karras"]
    assert sampler_for_scheduler("FlowMatchEulerDiscreteScheduler", {}) is None


def test_every_sampler_builds_its_scheduler_from_an_sd_config() -> None:
    """Each table entry names a diffusers scheduler that accepts its options."""
    import diffusers

    base = diffusers.DDIMScheduler().config
    for sampler in SAMPLERS.values():
        scheduler = getattr(diffusers, sampler.scheduler).from_config(base, **sampler.options)
        for key, value in sampler.options.items():
            assert scheduler.config[key] == value, sampler.name


def test_unknown_sampler_fails_check_with_a_suggestion(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt sampler is refused by `check` with the rule and the closest name."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    (tmp_path / "inbox" / "fox.txt").write_text("a red fox", encoding="utf-8")
    (tmp_path / "inbox" / "fox.toml").write_text('sampler = "DPM++ 2M Karas"\n', encoding="utf-8")
    code = main(["check", "-c", str(config), str(tmp_path / "inbox" / "fox.txt")])
    out = capsys.readouterr()
    assert code == 1
    names = ", ".join(SAMPLERS)
    assert (
        f'fox.toml: sampler must be an A1111 sampler name: {names} (or "" for the model\'s own), '
        'got "DPM++ 2M Karas", did you mean "DPM++ 2M Karras"?'
    ) in out.out + out.err


@pytest.mark.slow
def test_dpm_2m_karras_is_used_recorded_and_read_back_by_sd_parsers(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sampler = "dpm++ 2m karras"` gives a PNG whose parameters say DPM++ 2M Karras."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    inbox = tmp_path / "inbox"
    (inbox / "fox.txt").write_text("a red fox", encoding="utf-8")
    (inbox / "fox.toml").write_text('sampler = "dpm++ 2m karras"\nseed = 5\n', encoding="utf-8")
    (inbox / "owl.txt").write_text("an owl", encoding="utf-8")
    (inbox / "owl.toml").write_text("seed = 5\n", encoding="utf-8")
    assert main(["once", "-c", str(config)]) == 0, capsys.readouterr().out
    fox = tmp_path / "outbox" / "fox" / "fox-5.png"
    info = ParserManager().parse(fox)
    assert info is not None
    assert [s.name for s in info.samplers] == ["DPM++ 2M Karras"]
    assert manifest(tmp_path / "outbox" / "fox")["params"]["sampler"] == "DPM++ 2M Karras"
    # Without a sampler, the model's own scheduler (the tiny model's DDIM) by its A1111 name.
    owl = ParserManager().parse(tmp_path / "outbox" / "owl" / "owl-5.png")
    assert owl is not None and [s.name for s in owl.samplers] == ["DDIM"]
    assert "sampler" not in manifest(tmp_path / "outbox" / "owl")["params"]


@pytest.mark.slow
def test_a_jobs_sampler_does_not_leak_into_the_next_job(
    generator: DiffusersGenerator, tiny_sd: ModelSource
) -> None:
    """A job with Euler a leaves the next job on the model's own DDIM, same pixels as before."""

    def make(sampler: str) -> tuple[bytes, str]:
        images: list[Image.Image] = []
        request = ImageRequest(
            task=Task.text2image,
            model=tiny_sd,
            width=64,
            height=64,
            images=(ImageSpec(0, "a red fox", "", 3, 2, 7.5, 1.0),),
            sampler=sampler,
        )
        generator.generate_images(
            request, GenerationEvents(on_image=lambda i, im: images.append(im))
        )
        model = generator._models.images
        assert model is not None
        scheduler = type(model.pipe(Task.text2image).scheduler).__name__
        return images[0].tobytes(), scheduler

    first, first_scheduler = make("")
    euler, euler_scheduler = make("Euler a")
    again, again_scheduler = make("")
    assert (first_scheduler, euler_scheduler, again_scheduler) == (
        "DDIMScheduler",
        "EulerAncestralDiscreteScheduler",
        "DDIMScheduler",
    )
    assert first == again
    assert euler != first
