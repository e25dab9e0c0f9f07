"""`once --dry-run` says what a run would really do with each input, and why, writing nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from daemon.cli import main
from tests.helpers import manifest, noise_image, snapshot, write_config

pytestmark = pytest.mark.slow


def digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summary(out: str) -> str:
    """The last line of a dry run."""
    return out.splitlines()[-1]


def verdicts(out: str) -> dict[str, str]:
    """input → its headline (``skip (done)``, ``remake (…)``, ``fail: …``) in a dry run."""
    found = {}
    for line in out.splitlines()[:-1]:
        if not line.startswith(" "):
            name, _, rest = line.partition(": ")
            found[name] = rest
    return found


def test_a_finished_inbox_is_all_skipped_and_nothing_is_written(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a run, the dry run skips every input, exits 0 and leaves journal and logs as they
    were; then each change gets its reason, and the real run does just that."""
    config = write_config(tmp_path, str(tiny_models / "sd"))
    inbox = tmp_path / "inbox"
    for n, name in enumerate(("cat", "dog", "owl", "fox")):
        noise_image(inbox / f"{name}.png", seed=n)
        (inbox / f"{name}.toml").write_text(f"count = 2\nseed = {10 * n}\n", encoding="utf-8")
    (inbox / "bad.toml").write_text("cuont = 2\n", encoding="utf-8")
    noise_image(inbox / "bad.png", seed=9)
    assert main(["once", "-c", str(config)]) == 1
    capsys.readouterr()

    journal = tmp_path / "state" / "journal.sqlite3"
    log = tmp_path / "state" / "logs" / "dropforge.log"
    state = (digest(journal), digest(log))
    outputs = snapshot(tmp_path / "outbox")
    assert main(["once", "--dry-run", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert verdicts(out) == {
        "bad.png": "fail: unchanged since it failed: "
        "bad.toml: cuont: unknown key, did you mean count?",
        "cat.png": "skip (done)",
        "dog.png": "skip (done)",
        "fox.png": "skip (done)",
        "owl.png": "skip (done)",
    }
    assert (
        summary(out)
        == "5 inputs: 0 make, 0 remake, 4 skip, 1 fail, 0 later (dry run: nothing generated)"
    )
    assert (digest(journal), digest(log)) == state
    assert snapshot(tmp_path / "outbox") == outputs

    damaged = tmp_path / "outbox" / "cat" / "cat-1.png"
    damaged.write_bytes(damaged.read_bytes()[:50])
    (tmp_path / "outbox" / "cat" / "cat-0.png").unlink()  # a discard: neither remade nor listed
    outputs = snapshot(tmp_path / "outbox")
    (inbox / "dog.toml").write_text("count = 2\nseed = 10\nsteps = 3\n", encoding="utf-8")
    (inbox / "owl.toml").write_text("count = 2\nseed = 20\nforce = true\n", encoding="utf-8")
    noise_image(inbox / "fox.png", seed=99)
    noise_image(inbox / "new.png", seed=5)
    (inbox / "new.toml").write_text("count = 2\nsteps = 0\n", encoding="utf-8")
    (inbox / "late.png").write_bytes(b"")
    assert main(["once", "--dry-run", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert verdicts(out) == {
        "bad.png": "fail: unchanged since it failed: "
        "bad.toml: cuont: unknown key, did you mean count?",
        "cat.png": "remake (outputs missing: cat-1.png)",
        "dog.png": "remake (sidecar changed: dog.toml; settings changed: steps 2 → 3)",
        "fox.png": "remake (input changed)",
        "late.png": "later (empty file, still arriving)",
        "new.png": "fail: new.toml: steps must be 1..150, got 0",
        "owl.png": "remake (forced (force = true or dropforge retry --force))",
    }
    assert (digest(journal), digest(log)) == state
    assert snapshot(tmp_path / "outbox") == outputs  # no discard recorded by a dry run
    assert (
        summary(out)
        == "7 inputs: 0 make, 4 remake, 0 skip, 2 fail, 1 later (dry run: nothing generated)"
    )
    assert (digest(journal), digest(log)) == state

    assert main(["once", "-c", str(config)]) == 1
    report = capsys.readouterr().out
    made = sorted(line.split()[1] for line in report.splitlines() if line.startswith("[SUCCESS]"))
    assert made == ["cat.png", "dog.png", "fox.png", "owl.png"]
    assert not (tmp_path / "outbox" / "cat" / "cat-0.png").exists()  # deleted: discarded
    assert (tmp_path / "outbox" / "cat" / "cat-0.png.xmp").is_file()
    assert manifest(tmp_path / "outbox" / "cat")["outputs"][0]["file"] == "cat-0.png"
    assert "[FAILED]  new.png -> Error: new.toml: steps must be 1..150, got 0" in report


def test_a_dry_run_of_a_new_inbox_creates_no_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before any run, the dry run plans every input (make (new)) and creates no state folder."""
    config = write_config(tmp_path, "./models/sd")
    noise_image(tmp_path / "inbox" / "cat.png")
    assert main(["once", "--dry-run", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert verdicts(out) == {"cat.png": "make (new)"}
    assert not (tmp_path / "state").exists()
