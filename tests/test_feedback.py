"""What a user sees: the report and status lines, quiet libraries, a prompt back at once after a
stop, a waiting job looking again for its model within a minute, /tmp under PrivateTmp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import load_config
from daemon.errors import ModelUnavailable
from daemon.intake.candidates import candidate_for
from daemon.runtime.worker import LOOK_AGAIN_S, Outcome, Worker
from daemon.store.sqlite import SqliteJournal
from daemon.survey.survey import survey
from daemon.values import JobState
from tests.fakes import SolidGenerator
from tests.helpers import noise_image, write_config

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    """The environment of a dropforge subprocess running this checkout."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_report_and_status_say_what_happened_in_plain_lines(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quality lists the presets used, Texture the meshes' setting, a waiting job is counted as
    waiting (not processed), "1 output", and no failure line names its file twice."""
    config = write_config(
        tmp_path,
        str(tiny_models / "sd"),
        models={"mesh": str(tiny_models / "mesh"), "gone": str(tmp_path / "no-such-model")},
    )
    inbox = tmp_path / "inbox"
    noise_image(inbox / "cat.png")
    noise_image(inbox / "chair.png", seed=1)
    (inbox / "chair.toml").write_text(
        'task = "mesh"\npreset = "draft"\nsteps = 2\nmesh_resolution = 64\ntexture = true\n',
        encoding="utf-8",
    )
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    noise_image(inbox / "owl.png", seed=2)
    (inbox / "owl.toml").write_text('model = "gone"\n', encoding="utf-8")
    assert main(["once", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    head = out[: out.index("Results")]
    assert head.splitlines()[2:] == [
        "Folder: inbox",
        "Quality: standard, draft",
        "Texture: Enabled",
        "",
        "Inputs Found: 4",
        "Skipped (existing): 0",
        "Processed: 3",
        "Waiting: 1",
        "",
    ]
    lines = out.splitlines()
    assert any(line.startswith("[SUCCESS] cat.png -> outbox/cat (1 output, ") for line in lines)
    (broken,) = [line for line in lines if line.startswith("[FAILED]  broken.png")]
    assert broken.startswith("[FAILED]  broken.png -> Error: not a readable image (")
    (owl,) = [line for line in lines if line.startswith("[WAITING] owl.png")]
    assert "owl.png -> model" in owl and "owl.png: " not in owl
    assert "Successful: 2\nFailed: 1\nWaiting: 1\n" in out

    assert main(["status", "-c", str(config)]) == 0
    status = capsys.readouterr().out
    assert "  [failed] broken.png: not a readable image (" in status
    assert "broken.png: broken.png" not in status


def test_once_on_a_missing_inbox_folder_says_folder_not_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's check: a missing folder is `Error: Folder not found: …` and exit 1."""
    config = write_config(tmp_path, "./models/sd")
    (tmp_path / "inbox").rmdir()
    assert main(["once", "-c", str(config)]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "Error: Folder not found: inbox\n")


def test_a_missing_inbox_beside_a_present_one_still_reports_the_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With two inboxes, the present one is processed and reported; the missing one is named."""
    config = write_config(tmp_path, str(tmp_path / "no-model"))
    config.write_text(
        config.read_text(encoding="utf-8")
        + '\n[[inbox]]\npath = "elsewhere"\noutput = "outbox2"\n',
        encoding="utf-8",
    )
    assert main(["once", "-c", str(config)]) == 1
    captured = capsys.readouterr()
    assert "Folder: inbox\nFolder: elsewhere\n" in captured.out
    assert captured.err == "Error: Folder not found: elsewhere\n"


def test_a_job_waiting_for_its_model_looks_again_within_a_minute(tmp_path: Path) -> None:
    """However often a job found its model missing, it is tried again at most 60 s later,
    so a model fetched or copied meanwhile is used within a minute (not after up to 1 h)."""
    settings = load_config(write_config(tmp_path, str(tmp_path / "no-model")))
    noise_image(tmp_path / "inbox" / "cat.png")
    now = [1000.0]
    generator = SolidGenerator()
    with SqliteJournal(settings.journal_path, clock=lambda: now[0]) as journal:
        candidate = candidate_for(settings.inboxes[0], tmp_path / "inbox" / "cat.png")
        assert candidate is not None
        survey(settings, journal, candidate)
        worker = Worker(settings, journal, lambda: generator, owner="test", clock=lambda: now[0])
        for _ in range(10):  # a plain backoff would have reached its 1 h ceiling
            generator.fail_with = ModelUnavailable('model "default" is not on this machine')
            job = journal.claim("test", 600)
            assert job is not None
            assert worker.run(job).outcome is Outcome.waiting
            row = journal.get(job.id)
            assert row.state is JobState.waiting
            assert row.not_before is not None and row.not_before - now[0] <= LOOK_AGAIN_S
            now[0] = row.not_before
        job = journal.claim("test", 600)
        assert job is not None and worker.run(job).outcome is Outcome.done


@pytest.mark.slow
def test_tiny_model_and_jobs_with_two_loras_print_no_library_warnings(
    tmp_path: Path,
) -> None:
    """`tiny-model`, then a run loading two LoRAs print nothing on stderr: no torchvision
    fallback notes from transformers, no peft note on a second adapter (Python's default
    warning filters, as a user runs them)."""
    models = tmp_path / "models"
    made = subprocess.run(
        [sys.executable, "-m", "daemon", "tiny-model", str(models)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=600,
        check=False,
    )
    assert (made.returncode, made.stderr) == (0, "")
    lora = str(models / "lora.safetensors")
    config = write_config(tmp_path, str(models / "sd"), loras={"ink": lora, "wash": lora})
    for n, alias in enumerate(("ink", "wash")):
        noise_image(tmp_path / "inbox" / f"{alias}.png", seed=n)
        (tmp_path / "inbox" / f"{alias}.toml").write_text(f'lora = "{alias}"\n', encoding="utf-8")
    ran = subprocess.run(
        [sys.executable, "-m", "daemon", "once", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=600,
        check=False,
    )
    assert (ran.returncode, ran.stderr) == (0, "")
    assert "Successful: 2" in ran.stdout


def test_run_ends_the_process_at_once_after_service_stopped(tmp_path: Path) -> None:
    """After a graceful stop `dropforge run` exits without the interpreter's teardown (which
    took seconds with torch loaded): exit 0, service.stopped logged, no atexit hook run."""
    config = write_config(tmp_path, str(tmp_path / "no-model"))
    marker = tmp_path / "atexit-ran"
    script = textwrap.dedent(
        f"""
        import atexit, sys
        atexit.register(lambda: open({str(marker)!r}, "w").close())
        from daemon.cli import main
        sys.exit(main(["run", "-c", {str(config)!r}]))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=env()
    )
    try:
        assert proc.stderr is not None
        events = []
        for line in proc.stderr:
            if line.startswith("{"):
                events.append(json.loads(line)["event"])
            if "service.ready" in events:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.stderr.read()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    events += [json.loads(line)["event"] for line in rest.splitlines() if line.startswith("{")]
    assert code == 0
    assert events[-1] == "service.stopped"
    assert not marker.exists()
