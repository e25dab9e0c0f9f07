"""Shared builders for end-to-end tests: configs, inbox files, manifests."""

from __future__ import annotations

import json
import os
import random
import textwrap
from pathlib import Path
from typing import Any

from PIL import Image

from daemon.store.protocols import JobStore
from daemon.store.rows import Job

# The device the end-to-end tests generate on: cpu here and in CI; DROPFORGE_TEST_DEVICE=cuda
# runs them through the CUDA path (fp16) on a machine with a GPU.
TEST_DEVICE = os.environ.get("DROPFORGE_TEST_DEVICE", "cpu")


def write_config(
    root: Path,
    model: str,
    *,
    extra_daemon: str = "",
    extra: str = "",
    steps: int = 2,
    size: int = 64,
    models: dict[str, str] | None = None,
    loras: dict[str, str] | None = None,
) -> Path:
    """Write a config.toml for a test inbox at root/inbox → root/outbox."""
    path = root / "config.toml"
    more_models = "".join(f'{k} = "{v}"\n' for k, v in (models or {}).items())
    lora_table = "[loras]\n" + "".join(f'{k} = "{v}"\n' for k, v in (loras or {}).items())
    path.write_text(
        textwrap.dedent(
            f"""\
            [daemon]
            state_dir = "state"
            device = "{TEST_DEVICE}"
            min_free_mb = 0
            {extra_daemon}

            [[inbox]]
            path = "inbox"
            output = "outbox"

            [models]
            default = "{model}"
            {more_models}
            {lora_table}

            [defaults]
            preset = "standard"
            width = {size}
            height = {size}

            [presets.standard]
            steps = {steps}
            {extra}
            """
        ),
        encoding="utf-8",
    )
    (root / "inbox").mkdir(exist_ok=True)
    return path


def noise_image(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """Write a deterministic random RGB image."""
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("RGB", size, data).save(path)
    return path


def mask_image(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """Write a mask whose right half is white (repaint)."""
    image = Image.new("L", size, 0)
    image.paste(255, (size[0] // 2, 0, size[0], size[1]))
    image.save(path)
    return path


def manifest(path: Path) -> dict[str, Any]:
    """Read a manifest.json."""
    data: dict[str, Any] = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    return data


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Map every file under folder to (mtime_ns, inode): proves nothing was rewritten."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


JOB_INBOX = "/srv/inbox"


class SettableClock:
    """A clock a test sets and advances by hand (for journals and job stores)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def add_job(store: JobStore, input: str = "cat.png", **kw: Any) -> tuple[Job, bool]:
    """Upsert a job of ``JOB_INBOX`` with defaults for every field not given."""
    args: dict[str, Any] = {
        "inbox": JOB_INBOX,
        "input": input,
        "kind": "image",
        "fingerprint": "fp1",
        "job_key": "key1",
        "out_dir": f"/srv/outbox/{input}",
    }
    args.update(kw)
    return store.upsert_job(**args)
