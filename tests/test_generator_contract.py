"""The Generator contract: every implementation of the protocol passes these tests.

The ``backend`` fixture is parametrised over the implementations (as huey's ``StorageTests``
and APScheduler 4's ``raw_datastore`` fixture do): the diffusers backend on the tiny models,
and ``SolidGenerator``, the fake that watch-mode tests run on. A new backend joins by adding a
case to ``BACKENDS``, not by writing new tests.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import trimesh
from PIL import Image

from daemon.errors import Interrupted
from daemon.generators import (
    GenerationEvents,
    Generator,
    ImageRequest,
    ImageSpec,
    MeshFormat,
    MeshRequest,
    TweenRequest,
)
from daemon.values import ModelSource, Task
from tests.fakes import SolidGenerator

WIDTH, HEIGHT = 96, 64  # not square, so that swapping the two shows


@dataclass(frozen=True)
class Backend:
    """One implementation under test, with the model sources its requests name."""

    generator: Generator
    images: ModelSource
    mesh: ModelSource


def _diffusers(request: pytest.FixtureRequest) -> Backend:
    return Backend(
        request.getfixturevalue("generator"),
        request.getfixturevalue("tiny_sd"),
        request.getfixturevalue("tiny_mesh"),
    )


def _fake(request: pytest.FixtureRequest) -> Backend:
    return Backend(
        SolidGenerator(),
        ModelSource("default", "folder", "/models/solid"),
        ModelSource("mesh", "folder", "/models/solid-mesh"),
    )


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Backend]] = {
    "diffusers": _diffusers,
    "fake": _fake,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each implementation of the Generator protocol in turn."""
    return BACKENDS[request.param](request)


@dataclass
class Reports:
    """What a generator reports through GenerationEvents, in order; ``stop_when`` asks to stop."""

    stop_when: Callable[[Reports], bool] = lambda reports: False
    images: list[tuple[int, Image.Image]] = field(default_factory=list)
    frames: list[tuple[float, Image.Image]] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)  # steps reported when on_ready came

    def events(self) -> GenerationEvents:
        return GenerationEvents(
            on_image=lambda index, image: self.images.append((index, image)),
            on_step=lambda done, total: self.steps.append((done, total)),
            should_stop=lambda: self.stop_when(self),
            on_frame=lambda t, image: self.frames.append((t, image)),
            on_ready=lambda: self.ready.append(len(self.steps)),
        )

    def indices(self) -> list[int]:
        return [index for index, _ in self.images]

    def times(self) -> list[float]:
        return [t for t, _ in self.frames]


def image_request(
    model: ModelSource,
    indices: tuple[int, ...] = (0, 1),
    *,
    task: Task = Task.text2image,
    steps: int = 2,
    max_batch: int = 8,
    init_image: Image.Image | None = None,
) -> ImageRequest:
    """Build a 96x64 request with one image per index, seeded 10 + index."""
    specs = tuple(ImageSpec(i, "a watercolor fox", "", 10 + i, steps, 7.5, 0.5) for i in indices)
    return ImageRequest(
        task, model, WIDTH, HEIGHT, specs, init_image=init_image, max_batch=max_batch
    )


def tween_request(
    model: ModelSource,
    depth: int,
    needed: tuple[float, ...],
    existing: Mapping[float, Image.Image] | None = None,
) -> TweenRequest:
    """Build a 96x64 tween between a red and a blue square of other sizes."""
    start = Image.new("RGB", (64, 64), (220, 40, 40))
    end = Image.new("RGB", (80, 80), (30, 60, 230))
    prompt = "a watercolor fox"
    return TweenRequest(
        model, start, end, WIDTH, HEIGHT, depth, prompt, "", 2, 7.5, 0.5, 42, needed, existing or {}
    )


def mesh_request(model: ModelSource, formats: tuple[MeshFormat, ...] = ("glb",)) -> MeshRequest:
    """Build a 2-step mesh request at the coarsest grid for a red picture."""
    picture = Image.new("RGB", (48, 40), (180, 60, 40))
    return MeshRequest(model, picture, "fox.png", 2, 3.0, 1, 64, formats)


def assert_sized(images: list[Image.Image]) -> None:
    """Every image is RGB at the requested width and height."""
    assert [(im.mode, im.size) for im in images] == [("RGB", (WIDTH, HEIGHT))] * len(images)


def assert_rising(steps: list[tuple[int, int]]) -> None:
    """Steps were reported, each done above the last and within its total; the last completes."""
    assert steps, "no step was reported"
    dones = [done for done, _ in steps]
    assert dones == sorted(set(dones)), steps
    assert all(1 <= done <= total for done, total in steps), steps
    assert steps[-1][0] == steps[-1][1], steps


# -- images --------------------------------------------------------------------------------------


def test_text2image_reports_each_index_once_at_the_requested_size(backend: Backend) -> None:
    """Each requested index, gaps and all, arrives exactly once as an RGB image of the size."""
    reports = Reports()
    request = image_request(backend.images, (0, 2, 3), max_batch=2)
    backend.generator.generate_images(request, reports.events())
    assert sorted(reports.indices()) == [0, 2, 3]
    assert_sized([image for _, image in reports.images])


def test_variations_report_each_index_once_at_the_requested_size(backend: Backend) -> None:
    """Variations of an init image of another size arrive once per index at the requested size."""
    reports = Reports()
    init = Image.new("RGB", (100, 80), (200, 40, 40))
    request = image_request(backend.images, task=Task.variations, init_image=init)
    backend.generator.generate_images(request, reports.events())
    assert sorted(reports.indices()) == [0, 1]
    assert_sized([image for _, image in reports.images])


def test_image_steps_rise_to_their_total(backend: Backend) -> None:
    """Step reports over a request of several calls rise, never pass the total and complete."""
    reports = Reports()
    backend.generator.generate_images(image_request(backend.images, max_batch=1), reports.events())
    assert_rising(reports.steps)


def test_stop_during_an_image_raises_interrupted_before_any_image(backend: Backend) -> None:
    """should_stop turning True after the first step raises Interrupted at the next one."""
    reports = Reports(stop_when=lambda reports: len(reports.steps) >= 1)
    with pytest.raises(Interrupted):
        backend.generator.generate_images(image_request(backend.images, steps=3), reports.events())
    assert (len(reports.steps), reports.images) == (1, [])


def test_stop_between_images_reports_no_further_image(backend: Backend) -> None:
    """should_stop turning True once an image arrived raises Interrupted with no second image."""
    reports = Reports(stop_when=lambda reports: len(reports.images) >= 1)
    request = image_request(backend.images, (0, 1, 2), max_batch=1)
    with pytest.raises(Interrupted):
        backend.generator.generate_images(request, reports.events())
    assert len(reports.images) == 1


# -- tweens --------------------------------------------------------------------------------------


def test_tween_reports_each_needed_time_once_at_the_requested_size(backend: Backend) -> None:
    """Every needed time of a depth-2 tween arrives once, RGB at the size, with rising steps."""
    reports = Reports()
    request = tween_request(backend.images, 2, (0.25, 0.5, 0.75))
    backend.generator.generate_tween(request, reports.events())
    assert sorted(reports.times()) == [0.25, 0.5, 0.75]
    assert_sized([image for _, image in reports.frames])
    assert_rising(reports.steps)


def test_tween_makes_and_reports_the_neighbours_a_time_needs(backend: Backend) -> None:
    """Asking for 0.125 alone makes and reports 0.5 and 0.25 too, each once."""
    reports = Reports()
    backend.generator.generate_tween(tween_request(backend.images, 3, (0.125,)), reports.events())
    assert sorted(reports.times()) == [0.125, 0.25, 0.5]


def test_tween_uses_existing_frames_instead_of_making_them(backend: Backend) -> None:
    """With 0.25 existing, asking for 0.125 makes 0.125 alone."""
    reports = Reports()
    existing = {0.25: Image.new("RGB", (WIDTH, HEIGHT), (120, 50, 140))}
    request = tween_request(backend.images, 3, (0.125,), existing)
    backend.generator.generate_tween(request, reports.events())
    assert reports.times() == [0.125]


def test_tween_makes_a_needed_time_again_when_it_exists(backend: Backend) -> None:
    """A time both needed and existing is made again and reported."""
    reports = Reports()
    existing = {0.5: Image.new("RGB", (WIDTH, HEIGHT), (120, 50, 140))}
    backend.generator.generate_tween(
        tween_request(backend.images, 1, (0.5,), existing), reports.events()
    )
    assert reports.times() == [0.5]


def test_tween_never_makes_the_endpoints(backend: Backend) -> None:
    """Times 0 and 1 are the start and end images: nothing is made or reported for them."""
    reports = Reports()
    backend.generator.generate_tween(tween_request(backend.images, 2, (0.0, 1.0)), reports.events())
    assert reports.frames == []


def test_stop_during_a_tween_reports_no_further_frame(backend: Backend) -> None:
    """should_stop turning True once a frame arrived raises Interrupted with no second frame."""
    reports = Reports(stop_when=lambda reports: len(reports.frames) >= 1)
    with pytest.raises(Interrupted):
        backend.generator.generate_tween(
            tween_request(backend.images, 2, (0.25, 0.5, 0.75)), reports.events()
        )
    assert len(reports.frames) == 1


# -- meshes --------------------------------------------------------------------------------------


def test_mesh_returns_each_requested_format_as_a_mesh(backend: Backend) -> None:
    """glb, ply and obj come back, each a non-empty mesh to trimesh, after rising steps."""
    reports = Reports()
    files = backend.generator.generate_mesh(
        mesh_request(backend.mesh, ("glb", "ply", "obj")), reports.events()
    )
    assert sorted(files) == ["glb", "obj", "ply"]
    for fmt, data in files.items():
        mesh: Any = trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh")
        assert len(mesh.vertices) > 0, fmt
        assert len(mesh.faces) > 0, fmt
    assert_rising(reports.steps)


def test_stop_during_a_mesh_raises_interrupted(backend: Backend) -> None:
    """should_stop turning True after the first step raises Interrupted at the next one."""
    reports = Reports(stop_when=lambda reports: len(reports.steps) >= 1)
    with pytest.raises(Interrupted):
        backend.generator.generate_mesh(mesh_request(backend.mesh), reports.events())
    assert len(reports.steps) == 1


# -- device and resident models ------------------------------------------------------------------


def test_ready_is_reported_once_before_the_first_step(backend: Backend) -> None:
    """Every kind of request reports its model loaded exactly once, before any step."""
    for run in (
        lambda events: backend.generator.generate_images(image_request(backend.images), events),
        lambda events: backend.generator.generate_tween(
            tween_request(backend.images, 1, (0.5,)), events
        ),
        lambda events: backend.generator.generate_mesh(mesh_request(backend.mesh), events),
    ):
        reports = Reports()
        run(reports.events())
        assert reports.ready == [0]
        assert reports.steps


def test_device_name_is_a_non_empty_string(backend: Backend) -> None:
    """device_name() describes the device in a non-empty string."""
    name = backend.generator.device_name()
    assert isinstance(name, str)
    assert name.strip()


def test_loaded_models_name_the_alias_each_generation_used(backend: Backend) -> None:
    """After images, a tween and a mesh, loaded_models() maps each alias used to its source."""
    generator = backend.generator
    tweens = ModelSource("tweens", backend.images.kind, backend.images.ref)
    try:
        generator.generate_images(image_request(backend.images, (0,)), Reports().events())
        assert generator.loaded_models()[backend.images.alias] == backend.images.describe()
        generator.generate_tween(tween_request(tweens, 1, (0.5,)), Reports().events())
        assert generator.loaded_models()["tweens"] == tweens.describe()
        generator.generate_mesh(mesh_request(backend.mesh), Reports().events())
        assert generator.loaded_models()[backend.mesh.alias] == backend.mesh.describe()
    finally:
        generator.unload()  # the shared generator does not keep the extra alias


def test_unload_empties_loaded_models(backend: Backend) -> None:
    """After unload(), loaded_models() is empty."""
    backend.generator.generate_images(image_request(backend.images, (0,)), Reports().events())
    assert backend.generator.loaded_models() != {}
    backend.generator.unload()
    assert backend.generator.loaded_models() == {}
