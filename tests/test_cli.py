"""The command line: exit codes, user-facing messages, documentation, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.cli.parser import build_parser
from tests.helpers import noise_image, write_config

ROOT = Path(__file__).resolve().parent.parent


def commands() -> list[str]:
    """Every subcommand the parser knows."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


def test_every_command_is_documented_in_the_readme() -> None:
    """The README's command table names every command."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in commands():
        assert f"`dropforge {name}" in readme, name


def test_every_config_key_is_documented_in_the_readme() -> None:
    """Each [daemon] and [[inbox]] key of config.toml appears in the README."""
    import tomllib

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    config = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    for table in ("daemon", "inbox"):
        section = config[table][0] if table == "inbox" else config[table]
        for key in section:
            assert f"`{key}`" in readme or f"]] {key}`" in readme or f"] {key}`" in readme, key


def test_shipped_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """config.toml at the top of the repository loads and validates."""
    from daemon.config import load_config
    from daemon.planning.params import check_settings

    settings = load_config(ROOT / "config.toml")
    check_settings(settings)
    assert settings.presets["draft"]["steps"] == 20
    assert settings.presets["high"]["mesh_resolution"] == 384


def test_configuration_errors_exit_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad config value is reported as `Error: …` on stderr with exit code 2."""
    config = write_config(tmp_path, "x", extra_daemon="settle_seconds = -1")
    assert main(["status", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == ("Error: config.toml [daemon]: settle_seconds must be a number ≥ 0, got -1.0\n")


def test_a_generator_that_cannot_be_used_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[daemon] generator must name a factory as package.module:factory that imports."""
    config = write_config(tmp_path, "x", extra_daemon='generator = "my backend"')
    assert main(["status", "-c", str(config)]) == 2
    assert capsys.readouterr().err == (
        'Error: config.toml [daemon]: generator must be "diffusers" or '
        '"package.module:factory", got "my backend"\n'
    )
    for factory, why in [
        ("tests.no_such_module:make", "cannot import tests.no_such_module"),
        ("tests.soak.backends:nothing", "tests.soak.backends has no nothing"),
    ]:
        config = write_config(tmp_path, "x", extra_daemon=f'generator = "{factory}"')
        assert main(["once", "-c", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"Error: config.toml [daemon]: generator {factory}: {why}"), err


def test_missing_config_file_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a config file the message says how to name one."""
    assert main(["status", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found (pass -c PATH or set DROPFORGE_CONFIG)" in (
        capsys.readouterr().err
    )


def test_bad_preset_value_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A preset with an out-of-range value stops every command with exit 2."""
    config = write_config(tmp_path, "x", steps=0)
    assert main(["status", "-c", str(config)]) == 2
    assert capsys.readouterr().err == (
        "Error: config.toml [presets.standard]: steps must be 1..150, got 0\n"
    )


def test_check_prints_parameters_and_planned_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check shows the sidecar stack, effective parameters and output names."""
    config = write_config(tmp_path, "./models/sd")
    inbox = tmp_path / "inbox"
    (inbox / "_defaults.toml").write_text("guidance = 9\n", encoding="utf-8")
    noise_image(inbox / "cat.png")
    (inbox / "cat.toml").write_text("count = 2\nseed = 100\n", encoding="utf-8")
    assert main(["check", "-c", str(config), str(inbox / "cat.toml")]) == 0
    out = capsys.readouterr().out
    assert "Input: cat.png (image)" in out
    assert "Sidecars: _defaults.toml, cat.toml" in out
    assert "Task: variations" in out
    assert "  guidance = 9.0" in out
    assert "  cat-100.png  seed 100" in out and "  cat-101.png  seed 101" in out
    assert "  contact.png" in out


def test_check_reports_an_invalid_sidecar_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid sidecar is shown with file, key, rule and value."""
    config = write_config(tmp_path, "./models/sd")
    noise_image(tmp_path / "inbox" / "cat.png")
    (tmp_path / "inbox" / "cat.toml").write_text("count = 50\n", encoding="utf-8")
    assert main(["check", "-c", str(config), str(tmp_path / "inbox" / "cat.png")]) == 1
    assert "Error: cat.toml: count must be 1..20, got 50" in capsys.readouterr().out


def test_check_outside_every_inbox_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path outside the inboxes exits 2 and names the inboxes."""
    config = write_config(tmp_path, "./models/sd")
    stray = noise_image(tmp_path / "elsewhere.png")
    assert main(["check", "-c", str(config), str(stray)]) == 2
    assert "elsewhere.png: not inside any inbox" in capsys.readouterr().err


def test_dry_run_lists_outputs_and_generates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run prints planned files and prompts and leaves no output or queued job."""
    config = write_config(tmp_path, "./models/sd")
    inbox = tmp_path / "inbox"
    (inbox / "story.txt").write_text("one\n* * *\ntwo\n", encoding="utf-8")
    (inbox / "story.toml").write_text("seed = 7\n", encoding="utf-8")
    assert main(["once", "--dry-run", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert '  story-s01-7.png  seed 7  prompt "one"' in out
    assert '  story-s02-7.png  seed 7  prompt "two"' in out
    assert not (tmp_path / "outbox").exists()
    assert main(["status", "--json", "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["queued"] == 0


def test_retry_requeues_failed_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """retry --failed puts failed jobs back in the queue; unknown paths are named."""
    config = write_config(tmp_path, "./models/sd")
    inbox = tmp_path / "inbox"
    (inbox / "bad.png").write_bytes(b"garbage")
    assert main(["once", "-c", str(config)]) == 1
    capsys.readouterr()
    assert main(["retry", "--failed", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "requeued 1 job\n"
    noise_image(inbox / "new.png")
    assert main(["retry", "-c", str(config), str(inbox / "new.png")]) == 1
    assert "new.png: not in the journal yet (run dropforge once)" in capsys.readouterr().err


def test_retry_without_target_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """retry with nothing to retry exits 2."""
    config = write_config(tmp_path, "./models/sd")
    assert main(["retry", "-c", str(config)]) == 2
    assert (
        capsys.readouterr().err
        == "Error: retry needs PATH…, --failed, --quarantined or --canceled\n"
    )


def test_tiny_model_writes_a_loadable_pipeline_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tiny-model writes DIR/sd with safetensors weights and prints the config lines."""
    assert main(["tiny-model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert f'default = "{tmp_path / "m" / "sd"}"' in out
    assert (tmp_path / "m" / "sd" / "model_index.json").is_file()
    assert list((tmp_path / "m" / "sd").rglob("*.safetensors"))
    assert not list((tmp_path / "m" / "sd").rglob("*.bin"))


def test_fast_commands_do_not_import_torch(tmp_path: Path) -> None:
    """--help, check and status never import torch or diffusers."""
    config = write_config(tmp_path, "./models/sd")
    noise_image(tmp_path / "inbox" / "cat.png")
    script = (
        "import sys\n"
        "from daemon.cli import main\n"
        f"main(['check', '-c', {str(config)!r}, {str(tmp_path / 'inbox' / 'cat.png')!r}])\n"
        f"main(['status', '-c', {str(config)!r}])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers') "
        "if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "daemon", "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "once" in helped.stdout


def test_status_names_a_missing_inbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An inbox folder that is gone (an unmounted share) is named by status, text and JSON."""
    config = write_config(tmp_path, "./models/sd")
    (tmp_path / "inbox").rmdir()
    assert main(["status", "-c", str(config)]) == 0
    assert "Inbox missing: inbox (unmounted or removed; its files wait for it)" in (
        capsys.readouterr().out
    )
    (tmp_path / "inbox").mkdir()
    assert main(["status", "--json", "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["missing_inboxes"] == []
