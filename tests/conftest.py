"""Shared fixtures: the tiny offline models and one resident generator for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.generators.diffusers_backend import DiffusersGenerator
from daemon.generators.tiny import TINY_MESH_SUBDIR, TINY_SD_SUBDIR, write_tiny_models
from daemon.values import ModelSource
from tests.fakes import Launch, launch_services
from tests.helpers import TEST_DEVICE
from tests.pg_server import PgServer, server_fixture, url_fixture

# Tests never reach the network: with this set, huggingface_hub fails at once instead of
# waiting on timeouts. It is read once, when huggingface_hub is first imported: later than
# this, since the imports above load it lazily.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder holding the tiny models: ``sd/``, ``mesh/`` and ``lora.safetensors``."""
    folder = tmp_path_factory.mktemp("tiny-models")
    write_tiny_models(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd(tiny_models: Path) -> ModelSource:
    """Return the tiny Stable Diffusion folder as the ``default`` model alias."""
    return ModelSource(alias="default", kind="folder", ref=str(tiny_models / TINY_SD_SUBDIR))


@pytest.fixture(scope="session")
def tiny_mesh(tiny_models: Path) -> ModelSource:
    """Return the tiny Shap-E image-to-3D folder as the ``mesh`` model alias."""
    return ModelSource(alias="mesh", kind="folder", ref=str(tiny_models / TINY_MESH_SUBDIR))


@pytest.fixture(scope="session")
def generator() -> DiffusersGenerator:
    """Return one generator shared by the session, so the tiny model is loaded once.

    It runs on the CPU unless ``DROPFORGE_TEST_DEVICE`` names another device.

    One thread: torch's thread count is process-wide, and pinning it keeps pixel equality
    between runs independent of what other tests did.
    """
    return DiffusersGenerator(device=TEST_DEVICE, threads=1)


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Start watch-mode services on a fake generator (``launch(config, **options)``); every one
    is stopped after the test."""
    yield from launch_services()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session (skipped, with the reason, where it cannot run)."""
    yield from server_fixture()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of the test database; every dropforge table is emptied after the test."""
    yield from url_fixture(pg_server)
