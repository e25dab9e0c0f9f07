"""Settings changes: finished jobs stay finished unless the change reaches them (tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main
from tests.helpers import manifest, noise_image, snapshot, write_config

pytestmark = pytest.mark.slow


def test_removing_an_unused_lora_alias_leaves_done_and_failed_jobs_alone(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Removing a LoRA alias no input names changes no output and rewrites no manifest."""
    lora = str(tiny_models / "lora.safetensors")
    config = write_config(tmp_path, str(tiny_models / "sd"), loras={"tiny": lora, "old": lora})
    inbox = tmp_path / "inbox"
    noise_image(inbox / "cat.png")
    (inbox / "cat.toml").write_text('count = 2\nseed = 100\nlora = "tiny"\n', encoding="utf-8")
    noise_image(inbox / "dog.png", seed=1)
    (inbox / "dog.toml").write_text("cuont = 2\n", encoding="utf-8")
    assert main(["once", "-c", str(config)]) == 1
    capsys.readouterr()
    before = snapshot(tmp_path / "outbox")

    config.write_text(config.read_text(encoding="utf-8").replace(f'old = "{lora}"\n', ""))
    assert main(["once", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Skipped (existing): 2\nProcessed: 0\n" in out
    assert "[FAILED]  dog.png -> Error: dog.toml: cuont: unknown key, did you mean count?" in out
    assert snapshot(tmp_path / "outbox") == before


def test_changing_a_setting_the_job_uses_remakes_it(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pointing the LoRA alias a job names at another file remakes that job."""
    lora = str(tiny_models / "lora.safetensors")
    config = write_config(tmp_path, str(tiny_models / "sd"), loras={"tiny": lora})
    inbox = tmp_path / "inbox"
    noise_image(inbox / "cat.png")
    (inbox / "cat.toml").write_text('seed = 100\nlora = "tiny"\n', encoding="utf-8")
    assert main(["once", "-c", str(config)]) == 0
    first = manifest(tmp_path / "outbox" / "cat")["job_key"]
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(Path(lora).read_bytes())
    config.write_text(config.read_text(encoding="utf-8").replace(lora, str(copy)))
    capsys.readouterr()
    assert main(["once", "-c", str(config)]) == 0
    assert "[SUCCESS] cat.png" in capsys.readouterr().out
    assert manifest(tmp_path / "outbox" / "cat")["job_key"] != first
