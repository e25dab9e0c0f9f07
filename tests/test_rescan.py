"""Rescans of many finished inputs: the bulk survey path still finds every change.

A pass over at least ``BULK_FROM`` candidates reads the journal in bulk and trusts a done job
whose output folder kept its stamp; these tests run enough inputs to take that path.
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config import load_config
from daemon.runtime.once import OnceReport, run_once
from daemon.store.rows import folder_stamp
from daemon.store.sqlite import SqliteJournal
from daemon.survey.survey import BULK_FROM
from tests.fakes import SolidGenerator
from tests.helpers import write_config

COUNT = BULK_FROM + 6


def _inbox(tmp_path: Path) -> Path:
    config = write_config(tmp_path, str(tmp_path / "no-model-needed"))
    inbox = tmp_path / "inbox"
    for i in range(COUNT):
        (inbox / f"p{i:03}.txt").write_text(f"prompt number {i}\n", encoding="utf-8")
    (inbox / "p005.toml").write_text("count = 2\n", encoding="utf-8")
    return config


def _processed(report: OnceReport) -> list[str]:
    return sorted(r.rel for r in report.results)


def test_bulk_rescan_skips_unchanged_and_finds_each_change(tmp_path: Path) -> None:
    """Deleted or replaced outputs, an edited sidecar and a changed prompt rerun; a file of
    the user's own in an output folder does not."""
    settings = load_config(_inbox(tmp_path))
    first = run_once(settings, SolidGenerator)
    assert len(first.results) == COUNT and not first.failed

    # Every done folder got its stamp when the job was marked done.
    with SqliteJournal(settings.journal_path) as journal:
        stamps = journal.output_stamps()
    outbox = tmp_path / "outbox"
    assert len(stamps) == COUNT
    assert stamps[str(outbox / "p001")][1] == folder_stamp(outbox / "p001")

    again = run_once(settings, SolidGenerator)
    assert again.results == [] and again.skipped == COUNT
    # That pass verified every input and recorded its signature: the next one only stats.
    with SqliteJournal(settings.journal_path) as journal:
        signatures = journal.verified_signatures(str(tmp_path / "inbox"))
    assert len(signatures) == COUNT

    inbox = tmp_path / "inbox"
    deleted = next((outbox / "p003").glob("p003-*.png"))
    deleted.unlink()  # a discard: recorded, not made again
    # Replaced by a sync tool or an editor: written beside it, then renamed over it.
    (outbox / "p004" / ".incoming").write_bytes(b"not a png any more")
    os.replace(outbox / "p004" / ".incoming", next((outbox / "p004").glob("p004-*.png")))
    (inbox / "p005.toml").write_text("count = 3\n", encoding="utf-8")  # edited in place
    (inbox / "p006.txt").write_text("a different prompt\n", encoding="utf-8")
    (outbox / "p007" / "notes.txt").write_text("mine\n", encoding="utf-8")  # not ours

    third = run_once(settings, SolidGenerator)
    assert _processed(third) == ["p004.txt", "p005.txt", "p006.txt"]
    assert third.skipped == COUNT - 3
    assert not deleted.is_file() and deleted.with_name(deleted.name + ".xmp").is_file()
    assert len(list((outbox / "p005").glob("p005-*.png"))) == 3
    assert (outbox / "p007" / "notes.txt").read_text(encoding="utf-8") == "mine\n"

    fourth = run_once(settings, SolidGenerator)
    assert fourth.results == [] and fourth.skipped == COUNT


def test_bulk_rescan_after_a_lost_journal_trusts_complete_outputs(tmp_path: Path) -> None:
    """With the state folder wiped, finished outputs are recognised from their manifests."""
    settings = load_config(_inbox(tmp_path))
    assert len(run_once(settings, SolidGenerator).results) == COUNT
    settings.journal_path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{settings.journal_path}{suffix}").unlink(missing_ok=True)
    again = run_once(settings, SolidGenerator)
    assert again.results == [] and again.skipped == COUNT
    third = run_once(settings, SolidGenerator)
    assert third.results == [] and third.skipped == COUNT


def test_retry_force_regenerates_a_done_input_whose_outputs_are_complete(tmp_path: Path) -> None:
    """`dropforge retry --force` then a run: the forced job is made again, not taken as done."""
    settings = load_config(_inbox(tmp_path))
    assert len(run_once(settings, SolidGenerator).results) == COUNT
    png = next((tmp_path / "outbox" / "p010").glob("p010-*.png"))
    before = png.stat().st_ino
    with SqliteJournal(settings.journal_path) as journal:
        assert journal.retry(inputs=[(str(tmp_path / "inbox"), "p010.txt")], force=True) == 1
    again = run_once(settings, SolidGenerator)
    assert _processed(again) == ["p010.txt"] and again.skipped == COUNT - 1
    assert png.stat().st_ino != before  # written anew
    with SqliteJournal(settings.journal_path) as journal:
        assert not journal.get_job(str(tmp_path / "inbox"), "p010.txt").force  # spent
