"""End to end: `dropforge once` over a real inbox with the tiny diffusers pipeline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from daemon.cli import main
from tests.helpers import TEST_DEVICE, manifest, mask_image, noise_image, snapshot, write_config

pytestmark = pytest.mark.slow

MANIFEST_KEYS = {
    "schema",
    "status",
    "job_key",
    "task",
    "input",
    "sidecars",
    "params",
    "model",
    "outputs",
    "timings",
    "versions",
    "device",
    "warnings",
}

STORY = """\
# Chapter one

The lighthouse keeper climbs the stairs at dusk.

* * *

A storm breaks over the harbour; boats strain at their ropes.

* * *

## CRAFT NOTES

Remember to foreshadow the storm.
"""


def build_inbox(root: Path, tiny_models: Path) -> Path:
    """The inbox of the core issue: scenes, a batch, an inpainting and two bad inputs."""
    config = write_config(root, str(tiny_models / "sd"))
    inbox = root / "inbox"
    (inbox / "story.md").write_text(STORY, encoding="utf-8")
    (inbox / "story.toml").write_text(
        'count = 2\nseed = 7\nexclude_sections = ["CRAFT NOTES"]\n', encoding="utf-8"
    )
    noise_image(inbox / "cat.png", seed=1)
    (inbox / "cat.toml").write_text(
        'count = 3\nseed = 100\nprompt = "a watercolor cat"\n', encoding="utf-8"
    )
    noise_image(inbox / "room.png", seed=2)
    mask_image(inbox / "room.mask.png")
    (inbox / "room.toml").write_text('task = "inpaint"\nprompt = "a window"\n', encoding="utf-8")
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    noise_image(inbox / "dog.png", seed=3)
    (inbox / "dog.toml").write_text("cuont = 2\n", encoding="utf-8")
    return config


def run_once(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `dropforge once -c config` in-process; return (exit code, stdout)."""
    code = main(["once", "-c", str(config)])
    return code, capsys.readouterr().out


def test_once_produces_every_output_and_actionable_failures(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One run makes scenes, a seeded batch, an inpainting and two failed manifests."""
    config = build_inbox(tmp_path, tiny_models)
    code, out = run_once(config, capsys)
    assert code == 1, out
    outbox = tmp_path / "outbox"

    story = outbox / "story"
    names = {p.name for p in story.iterdir()}
    assert {"story-s01-7.png", "story-s01-8.png", "story-s02-7.png", "story-s02-8.png"} <= names
    story_manifest = manifest(story)
    assert story_manifest["status"] == "done"
    assert [o["seed"] for o in story_manifest["outputs"] if o["seed"] is not None] == [7, 8, 7, 8]
    assert all("CRAFT" not in (o["prompt"] or "") for o in story_manifest["outputs"])
    with Image.open(story / "contact.png") as sheet:  # each tile labelled with scene and seed
        assert sheet.text["parameters"] == (
            "contact sheet of story.md: scene 1 seed 7; scene 1 seed 8; scene 2 seed 7; "
            "scene 2 seed 8"
        )

    cat = outbox / "cat"
    for name in ("cat-100.png", "cat-101.png", "cat-102.png", "contact.png", "manifest.json"):
        assert (cat / name).is_file(), name
    cat_manifest = manifest(cat)
    assert set(cat_manifest) >= MANIFEST_KEYS
    assert cat_manifest["schema"] == "dropforge/manifest@1"
    assert cat_manifest["task"] == "variations"
    assert cat_manifest["input"]["path"] == "cat.png"
    assert cat_manifest["input"]["bytes"] == (tmp_path / "inbox" / "cat.png").stat().st_size
    assert cat_manifest["params"]["seeds"] == [100, 101, 102]
    assert cat_manifest["model"]["alias"] == "default"
    assert [s["path"] for s in cat_manifest["sidecars"]] == ["cat.toml"]
    assert set(cat_manifest["versions"]) == {"dropforge", "diffusers", "torch"}
    assert cat_manifest["device"].startswith(TEST_DEVICE)
    with Image.open(cat / "cat-100.png") as image:
        assert image.size == (64, 64)
        assert "Seed: 100" in image.text["parameters"]
        assert cat_manifest["job_key"] in image.text["dropforge"]

    room = manifest(outbox / "room")
    assert room["status"] == "done" and room["task"] == "inpaint"
    assert room["mask"]["path"] == "room.mask.png"
    assert len([o for o in room["outputs"] if o["seed"] is not None]) == 1

    broken = manifest(outbox / "broken")
    assert broken["status"] == "failed"
    assert broken["error"].startswith("broken.png: not a readable image")
    dog = manifest(outbox / "dog")
    assert dog["status"] == "failed"
    assert dog["error"] == "dog.toml: cuont: unknown key, did you mean count?"

    assert "[SUCCESS] story.md" in out and "[SUCCESS] cat.png" in out
    assert "[FAILED]  dog.png -> Error: dog.toml: cuont: unknown key, did you mean count?" in out
    assert "Successful: 3" in out and "Failed: 2" in out


def test_second_run_skips_everything_and_reads_no_input(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun generates and rewrites nothing and never opens an input file."""
    config = build_inbox(tmp_path, tiny_models)
    run_once(config, capsys)
    before = snapshot(tmp_path / "outbox")
    inbox = str(tmp_path / "inbox")
    opened: list[str] = []

    def audit(event: str, args: tuple[object, ...]) -> None:
        if event == "open" and isinstance(args[0], str) and args[0].startswith(inbox):
            opened.append(args[0])

    sys.addaudithook(audit)  # hooks cannot be removed; it only records paths under this tmp
    code, out = run_once(config, capsys)
    recorded = list(opened)
    opened.clear()
    inbox = "/nonexistent-after-test"
    assert code == 0, out
    assert recorded == []
    assert snapshot(tmp_path / "outbox") == before
    assert "Inputs Found: 5" in out
    assert "Skipped (existing): 5" in out
    assert "Processed: 0" in out


def test_changed_sidecar_reruns_exactly_that_input(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Editing cat.toml re-runs cat.png alone and removes outputs the new plan drops."""
    config = build_inbox(tmp_path, tiny_models)
    run_once(config, capsys)
    story_before = snapshot(tmp_path / "outbox" / "story")
    (tmp_path / "inbox" / "cat.toml").write_text("count = 2\nseed = 200\n", encoding="utf-8")
    code, out = run_once(config, capsys)
    assert "Processed: 1" in out and "[SUCCESS] cat.png" in out
    cat = tmp_path / "outbox" / "cat"
    assert sorted(p.name for p in cat.glob("cat-*.png")) == ["cat-200.png", "cat-201.png"]
    assert snapshot(tmp_path / "outbox" / "story") == story_before
    assert code == 0


def test_kill_9_mid_batch_resumes_only_missing_outputs(tmp_path: Path, tiny_models: Path) -> None:
    """A `kill -9` during a batch loses nothing: the rerun generates only the missing images."""
    config = write_config(tmp_path, str(tiny_models / "sd"), extra_daemon="max_batch = 1")
    noise_image(tmp_path / "inbox" / "big.png")
    (tmp_path / "inbox" / "big.toml").write_text("count = 10\nseed = 1\n", encoding="utf-8")
    out_dir = tmp_path / "outbox" / "big"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "daemon", "once", "-c", str(config)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(out_dir.glob("big-*.png"))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    survivors = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out_dir.glob("big-*.png")}
    assert 3 <= len(survivors) < 10
    assert not (out_dir / "manifest.json").exists()

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    final = manifest(out_dir)
    assert final["status"] == "done"
    assert len([o for o in final["outputs"] if o["seed"] is not None]) == 10
    for name, stamp in survivors.items():
        path = out_dir / name
        assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp, f"{name} was regenerated"
    assert not list(out_dir.glob(".*dropforge-tmp*"))


def test_missing_model_waits_then_runs_when_it_appears(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the model, jobs wait with a message saying what to do; nothing is marked failed."""
    import shutil

    model_dir = tmp_path / "models" / "sd"
    config = write_config(tmp_path, "./models/sd")
    noise_image(tmp_path / "inbox" / "cat.png")
    code, out = run_once(config, capsys)
    assert code == 0, out
    assert '[WAITING] cat.png -> model "default" (' in out
    assert "models/sd" in out
    assert not (tmp_path / "outbox" / "cat" / "manifest.json").exists()
    assert main(["status", "-c", str(config)]) == 0
    status = capsys.readouterr().out
    assert "1 waiting" in status and "0 failed" in status

    shutil.copytree(tiny_models / "sd", model_dir)
    code, out = run_once(config, capsys)
    assert code == 0, out
    assert "[SUCCESS] cat.png" in out
    assert manifest(tmp_path / "outbox" / "cat")["status"] == "done"


def test_missing_hub_model_message_names_fetch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id absent from the local cache waits with a message to run `dropforge models fetch`."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = write_config(tmp_path, "example-org/not-cached")
    noise_image(tmp_path / "inbox" / "cat.png")
    code, out = run_once(config, capsys)
    assert code == 0, out
    assert "[WAITING] cat.png" in out
    assert "dropforge models fetch" in out


def test_after_move_files_inputs_into_done_and_failed(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With after = "move", finished inputs go to _done/ and failed ones to _failed/."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    text = config.read_text(encoding="utf-8").replace(
        'output = "outbox"', 'output = "outbox"\nafter = "move"'
    )
    config.write_text(text, encoding="utf-8")
    inbox = tmp_path / "inbox"
    noise_image(inbox / "sub" / "cat.png")
    (inbox / "sub" / "cat.toml").write_text("seed = 1\n", encoding="utf-8")
    (inbox / "bad.png").write_bytes(b"nope")
    code, out = run_once(config, capsys)
    assert code == 1, out
    assert (inbox / "_done" / "sub" / "cat.png").is_file()
    assert (inbox / "_done" / "sub" / "cat.toml").is_file()
    assert (inbox / "_failed" / "bad.png").is_file()
    assert not (inbox / "sub" / "cat.png").exists()
    assert manifest(tmp_path / "outbox" / "sub" / "cat")["status"] == "done"
    code, out = run_once(config, capsys)
    assert code == 0 and "Inputs Found: 0" in out
