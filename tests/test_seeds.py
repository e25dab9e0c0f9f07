"""Seeds 001 and 002: random seeds and seed ranges, recorded like any other (tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from daemon.cli import main
from tests.helpers import manifest, noise_image, snapshot, write_config

pytestmark = pytest.mark.slow


def seeds_of(folder: Path) -> list[int]:
    """The seeds a manifest records for its images."""
    return [o["seed"] for o in manifest(folder)["outputs"] if o["seed"] is not None]


def test_random_seeds_are_recorded_kept_on_rerun_and_drawn_anew_for_a_new_version(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """seed = "random" draws seeds, records them in manifest and PNGs; a rerun keeps every file;
    an edited sidecar draws new ones."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    inbox = tmp_path / "inbox"
    noise_image(inbox / "cat.png")
    (inbox / "cat.toml").write_text('seed = "random"\ncount = 2\n', encoding="utf-8")
    assert main(["once", "-c", str(config)]) == 0
    out_dir = tmp_path / "outbox" / "cat"
    first = seeds_of(out_dir)
    assert len(set(first)) == 2 and all(0 <= s <= 4294967295 for s in first)
    assert manifest(out_dir)["params"]["seeds"] == first
    for seed in first:
        with Image.open(out_dir / f"cat-{seed}.png") as image:
            assert f"Seed: {seed}," in image.text["parameters"]
    before = snapshot(tmp_path / "outbox")
    capsys.readouterr()

    assert main(["once", "-c", str(config)]) == 0
    assert "Skipped (existing): 1\nProcessed: 0\n" in capsys.readouterr().out
    assert snapshot(tmp_path / "outbox") == before

    (inbox / "cat.toml").write_text(
        '# another draw\nseed = "random"\ncount = 2\n', encoding="utf-8"
    )
    assert main(["once", "-c", str(config)]) == 0
    second = seeds_of(out_dir)
    assert len(second) == 2 and not set(second) & set(first)
    assert sorted(p.name for p in out_dir.glob("cat-*.png")) == sorted(
        f"cat-{s}.png" for s in second
    )


def test_seed_range_picks_count_seeds_inside_the_range(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """seed_range = [100, 105] with count = 3 makes three images with seeds in 100..105."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    inbox = tmp_path / "inbox"
    noise_image(inbox / "cat.png")
    (inbox / "cat.toml").write_text("seed_range = [100, 105]\ncount = 3\n", encoding="utf-8")
    assert main(["check", "-c", str(config), str(inbox / "cat.png")]) == 0
    shown = capsys.readouterr().out
    assert main(["once", "-c", str(config)]) == 0
    seeds = seeds_of(tmp_path / "outbox" / "cat")
    assert len(set(seeds)) == 3 and all(100 <= s <= 105 for s in seeds)
    assert all(f"  cat-{s}.png  seed {s}" in shown for s in seeds)
