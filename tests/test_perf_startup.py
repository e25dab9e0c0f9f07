"""Start-up cost: the commands that never generate must not import torch, diffusers or transformers.

Timing is measured by ``bench/perf.py startup``; this only checks the cause of a slow start,
which is deterministic: which modules a fresh interpreter has loaded after the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_config

ROOT = Path(__file__).resolve().parent.parent
PROBE = """\
import json, sys
from daemon.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}))
"""


def loaded_after(argv: list[str], cwd: Path) -> dict[str, object]:
    """Run ``dropforge ARGV`` in a fresh interpreter; return its exit code and heavy modules."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["check", "-c", "config.toml", "inbox/cat.txt"],
        ["status", "-c", "config.toml"],
        ["once", "-c", "config.toml", "--dry-run"],
        ["queue", "-c", "config.toml"],
        ["cancel", "-c", "config.toml", "--all"],
    ],
    ids=["help", "check", "status", "dry-run", "queue", "cancel"],
)
def test_command_imports_no_model_library(tmp_path: Path, argv: list[str]) -> None:
    """--help, check, status, a dry run, queue and cancel finish without importing torch or
    diffusers."""
    write_config(tmp_path, "org/model")
    (tmp_path / "inbox" / "cat.txt").write_text("a watercolor cat\n", encoding="utf-8")
    result = loaded_after(argv, tmp_path)
    assert result == {"code": 0, "heavy": []}
