"""Folder marks: a restart skips the folders whose inputs were all found done and that did not
change since, without classifying or surveying their inputs, and still sees every change.

The runs go through ``run_once`` (scan, survey, worker) with the fast fake generator. A
restart's work is observed by counting the inputs it classifies (``intake._candidate``)
and surveys (``SurveyPass.survey``): zero for a fully marked inbox.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from structlog.testing import capture_logs

from daemon.config import Settings, load_config
from daemon.intake import candidates, scan
from daemon.runtime.once import OnceReport, run_once
from daemon.runtime.worker import Outcome
from daemon.store.rows import FolderMark
from daemon.store.sqlite import SqliteJournal
from daemon.survey.survey import SurveyPass
from tests.fakes import Launch, SolidGenerator, wait_until
from tests.helpers import mask_image, noise_image, write_config

PROMPTS = 70  # in a/: more than BULK_FROM, so the first restart takes the bulk path


@dataclass
class Counts:
    """Inputs classified and surveyed since the last reset."""

    classified: int = 0
    surveyed: int = 0


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    found = Counts()
    classify, survey = candidates.make_candidate, SurveyPass.survey

    def counting_candidate(*args: Any, **kwargs: Any) -> Any:
        found.classified += 1
        return classify(*args, **kwargs)

    def counting_survey(self: SurveyPass, candidate: Any) -> Any:
        found.surveyed += 1
        return survey(self, candidate)

    # Both places that classify a file: a scan, and one look-up (candidate_for).
    monkeypatch.setattr(scan, "make_candidate", counting_candidate)
    monkeypatch.setattr(candidates, "make_candidate", counting_candidate)
    monkeypatch.setattr(SurveyPass, "survey", counting_survey)
    yield found


def _tree(tmp_path: Path, steps: int = 2, extra_daemon: str = "") -> Path:
    """inbox/r.txt; a/ with 70 prompts (p005 has a sidecar); b/ two images, cat with a mask
    in b/masks/."""
    model = str(tmp_path / "no-model-needed")
    config = write_config(tmp_path, model, steps=steps, extra_daemon=extra_daemon)
    inbox = tmp_path / "inbox"
    (inbox / "r.txt").write_text("a root prompt\n", encoding="utf-8")
    (inbox / "a").mkdir()
    for i in range(PROMPTS):
        (inbox / "a" / f"p{i:03}.txt").write_text(f"prompt number {i}\n", encoding="utf-8")
    (inbox / "a" / "p005.toml").write_text("count = 2\n", encoding="utf-8")
    noise_image(inbox / "b" / "cat.png", seed=1)
    noise_image(inbox / "b" / "dog.png", seed=2)
    (inbox / "b" / "masks").mkdir()
    mask_image(inbox / "b" / "masks" / "cat.png")
    (inbox / "b" / "cat.toml").write_text('mask = "masks/cat.png"\n', encoding="utf-8")
    return config


INPUTS = 1 + PROMPTS + 2  # r.txt, a/*.txt, b/cat.png, b/dog.png (b/masks/cat.png: a part)


def _marked(tmp_path: Path, extra_daemon: str = "") -> Settings:
    """Process the tree, then restart once so that every folder gets its mark."""
    settings = load_config(_tree(tmp_path, extra_daemon=extra_daemon))
    first = run_once(settings, SolidGenerator)
    assert len(first.results) == INPUTS and not first.failed
    second = run_once(settings, SolidGenerator)
    assert second.results == [] and second.skipped == INPUTS
    assert set(_marks(settings)) == {"", "a/", "b/", "b/masks/"}
    return settings


def _marks(settings: Settings) -> dict[str, FolderMark]:
    with SqliteJournal(settings.journal_path) as journal:
        return journal.folder_marks(str(settings.inboxes[0].path))


def _processed(report: OnceReport) -> list[str]:
    return sorted(r.rel for r in report.results)


def test_a_restart_over_marked_folders_classifies_and_surveys_nothing(
    tmp_path: Path, counts: Counts
) -> None:
    settings = _marked(tmp_path)
    marks = _marks(settings)
    assert (marks["a/"].inputs, marks["b/"].inputs, marks[""].inputs) == (PROMPTS, 2, 1)
    assert marks["b/masks/"].inputs == 0  # its image is a part, not an input
    counts.classified = counts.surveyed = 0
    report = run_once(settings, SolidGenerator)
    assert report.results == [] and report.refused == []
    assert (report.found, report.skipped) == (INPUTS, INPUTS)
    assert (counts.classified, counts.surveyed) == (0, 0)


def _outbox(settings: Settings) -> Path:
    return settings.inboxes[0].output


def _delete_output(settings: Settings) -> None:
    next((_outbox(settings) / "a" / "p003").glob("p003-*.png")).unlink()


def _replace_output(settings: Settings) -> None:
    folder = _outbox(settings) / "a" / "p004"
    (folder / ".incoming").write_bytes(b"not a png any more")
    os.replace(folder / ".incoming", next(folder.glob("p004-*.png")))


def _edit_prompt(settings: Settings) -> None:
    (settings.inboxes[0].path / "a" / "p006.txt").write_text("changed\n", encoding="utf-8")


def _edit_sidecar_in_place(settings: Settings) -> None:
    path = settings.inboxes[0].path / "a" / "p005.toml"
    inode = path.stat().st_ino
    with open(path, "r+", encoding="utf-8") as handle:
        handle.write("count = 3\n")
    assert path.stat().st_ino == inode


def _new_input(settings: Settings) -> None:
    (settings.inboxes[0].path / "a" / "new.txt").write_text("a new prompt\n", encoding="utf-8")


def _outside_mask(settings: Settings) -> None:
    path = settings.inboxes[0].path / "b" / "masks" / "cat.png"
    Image.new("L", (64, 64), 255).save(path)  # same size, every pixel repainted


def _defaults_above(settings: Settings) -> None:
    (settings.inboxes[0].path / "_defaults.toml").write_text("seed = 5\n", encoding="utf-8")


def _defaults_in_a(settings: Settings) -> None:
    (settings.inboxes[0].path / "a" / "_defaults.toml").write_text("seed = 9\n", encoding="utf-8")


def _dog_named_as_a_mask(settings: Settings) -> None:
    inbox = settings.inboxes[0].path
    noise_image(inbox / "room.png", seed=3)
    (inbox / "room.toml").write_text('mask = "b/dog.png"\n', encoding="utf-8")


def _output_folder_removed(settings: Settings) -> None:
    folder = _outbox(settings) / "b" / "dog"
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


A_INPUTS = [f"a/p{i:03}.txt" for i in range(PROMPTS)]
CHANGES: dict[str, tuple[Callable[[Settings], None], list[str], int]] = {
    # name: (change, inputs that must run, inputs found afterwards)
    "output deleted (a discard)": (_delete_output, [], INPUTS),
    "output replaced by a rename": (_replace_output, ["a/p004.txt"], INPUTS),
    "output folder removed": (_output_folder_removed, ["b/dog.png"], INPUTS),
    "prompt edited": (_edit_prompt, ["a/p006.txt"], INPUTS),
    "sidecar edited in place": (_edit_sidecar_in_place, ["a/p005.txt"], INPUTS),
    "new input": (_new_input, ["a/new.txt"], INPUTS + 1),
    "mask in another folder edited": (_outside_mask, ["b/cat.png"], INPUTS),
    "_defaults.toml added above": (
        _defaults_above,
        sorted(["r.txt", *A_INPUTS, "b/cat.png", "b/dog.png"]),
        INPUTS,
    ),
    "_defaults.toml added in a/": (_defaults_in_a, A_INPUTS, INPUTS),
    # room.png is new; dog.png becomes room's mask, so it is no longer an input.
    "image named as a mask from elsewhere": (_dog_named_as_a_mask, ["room.png"], INPUTS),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_each_change_under_a_marked_folder_is_seen(
    tmp_path: Path, counts: Counts, name: str
) -> None:
    change, expected, found = CHANGES[name]
    settings = _marked(tmp_path)
    change(settings)
    report = run_once(settings, SolidGenerator)
    assert _processed(report) == expected and not report.failed
    assert report.found == found
    assert report.skipped == found - len(expected)
    # The next restart verifies the changed folders and marks them again; the one after
    # that skips everything without classifying anything.
    again = run_once(settings, SolidGenerator)
    assert again.results == [] and again.skipped == found
    counts.classified = counts.surveyed = 0
    last = run_once(settings, SolidGenerator)
    assert last.results == [] and (last.found, last.skipped) == (found, found)
    assert (counts.classified, counts.surveyed) == (0, 0)


def test_a_settings_change_reruns_every_input(tmp_path: Path) -> None:
    _marked(tmp_path)
    settings = load_config(write_config(tmp_path, str(tmp_path / "no-model-needed"), steps=3))
    report = run_once(settings, SolidGenerator)
    assert len(report.results) == INPUTS and not report.failed


def test_a_retried_job_unmarks_its_folder_and_runs(tmp_path: Path, counts: Counts) -> None:
    settings = _marked(tmp_path)
    inbox = str(settings.inboxes[0].path)
    with SqliteJournal(settings.journal_path) as journal:
        assert journal.retry(inputs=[(inbox, "a/p010.txt")], force=True) == 1
    assert set(_marks(settings)) == {"", "b/", "b/masks/"}
    counts.classified = 0
    report = run_once(settings, SolidGenerator)
    assert _processed(report) == ["a/p010.txt"]
    assert counts.classified == PROMPTS + 1  # a/ only (p005.toml's count is a sidecar)


def test_a_folder_with_a_symlink_is_never_marked(tmp_path: Path) -> None:
    """A symlink's target can change without the folder's listing changing."""
    settings = load_config(_tree(tmp_path))
    inbox = settings.inboxes[0].path
    (inbox / "c").mkdir()
    (inbox / "_store").mkdir()
    (inbox / "_store" / "kept.txt").write_text("kept\n", encoding="utf-8")
    (inbox / "c" / "q.txt").write_text("a prompt in c\n", encoding="utf-8")
    os.symlink(inbox / "_store" / "kept.txt", inbox / "c" / "linked.txt")
    assert len(run_once(settings, SolidGenerator).results) == INPUTS + 2
    assert run_once(settings, SolidGenerator).results == []
    assert "c/" not in _marks(settings) and "a/" in _marks(settings)
    (inbox / "_store" / "kept.txt").write_text("changed through the link\n", encoding="utf-8")
    assert _processed(run_once(settings, SolidGenerator)) == ["c/linked.txt"]


def _mark(folder: str) -> FolderMark:
    return FolderMark(folder, "listing", "", "", "watched", "[[],[]]", 1)


def _job(journal: SqliteJournal, inbox: str, rel: str) -> int:
    job, _ = journal.upsert_job(
        inbox=inbox, input=rel, kind="prompt", fingerprint="fp", job_key="k", out_dir="/o/" + rel
    )
    journal.mark_done(job.id, seconds=0.0)
    return job.id


def test_any_change_to_a_job_forgets_exactly_its_folders_mark(tmp_path: Path) -> None:
    with SqliteJournal(tmp_path / "journal.sqlite3") as journal:
        ids = {rel: _job(journal, "/in", rel) for rel in ("x.txt", "a/y.txt", "a/b/z.txt")}
        _job(journal, "/other", "a/y.txt")

        def mark_all() -> None:
            rows: list[tuple[str, FolderMark, dict[str, str]]] = [
                ("/in", _mark(f), {}) for f in ("", "a/", "a/b/", "ab/")
            ]
            journal.set_folder_marks([*rows, ("/other", _mark("a/"), {})])

        mark_all()
        journal.requeue(ids["a/y.txt"])
        assert set(journal.folder_marks("/in")) == {"", "a/b/", "ab/"}
        assert set(journal.folder_marks("/other")) == {"a/"}
        mark_all()
        journal.delete(ids["x.txt"])
        assert set(journal.folder_marks("/in")) == {"a/", "a/b/", "ab/"}
        mark_all()
        _job(journal, "/in", "a/b/new.txt")
        assert set(journal.folder_marks("/in")) == {"", "a/", "ab/"}
        mark_all()
        journal.set_progress(ids["a/y.txt"], 1, 2)  # progress alone changes nothing
        assert set(journal.folder_marks("/in")) == {"", "a/", "a/b/", "ab/"}


def test_a_mark_is_not_recorded_when_a_job_changed_since_it_was_verified(tmp_path: Path) -> None:
    with SqliteJournal(tmp_path / "journal.sqlite3") as journal:
        job_id = _job(journal, "/in", "a/y.txt")
        journal.set_folder_marks([("/in", _mark("a/"), {"a/y.txt": "another fingerprint"})])
        assert journal.folder_marks("/in") == {}
        journal.requeue(job_id)
        journal.set_folder_marks([("/in", _mark("a/"), {"a/y.txt": "fp"})])
        assert journal.folder_marks("/in") == {}
        journal.mark_done(job_id, seconds=0.0)
        journal.set_folder_marks([("/in", _mark("a/"), {"a/y.txt": "fp"})])
        assert set(journal.folder_marks("/in")) == {"a/"}


def test_watch_mode_scans_skip_marked_folders_and_mark_them_again(
    tmp_path: Path, counts: Counts, launch: Launch
) -> None:
    settings = _marked(tmp_path, extra_daemon="settle_seconds = 0.4\nrescan_interval = 3600")
    counts.classified = 0
    with capture_logs() as logs:
        running = launch(settings.config_path)
        wait_until(lambda: any(e["event"] == "scan.finished" for e in logs), message="scan")
    scan = next(e for e in logs if e["event"] == "scan.finished")
    assert (scan["found"], scan["done"], scan["queued"]) == (INPUTS, INPUTS, 0)
    assert counts.classified == 0
    _edit_prompt(settings)
    wait_until(lambda: running.results, message="the edited prompt")
    assert "a/" not in _marks(settings)
    scan = running.rescan()
    assert (scan["found"], scan["done"], scan["queued"]) == (INPUTS, INPUTS, 0)
    running.stop()
    assert running.outcomes() == [("a/p006.txt", Outcome.done)]
    assert set(_marks(settings)) == {"", "a/", "b/", "b/masks/"}


def test_pruning_keeps_the_rows_of_inputs_still_there_and_their_marks(
    tmp_path: Path, counts: Counts
) -> None:
    """Marked folders' rescans touch no row; pruning still keeps every job and cache row of
    an input that is there, so the marks hold and nothing is read again."""
    settings = _marked(tmp_path)
    (settings.inboxes[0].path / "a" / "p001.txt").unlink()
    with SqliteJournal(settings.journal_path) as journal:
        assert journal.prune(older_than=0) == 2  # p001.txt's job and its cache row
        cached = {r[0] for r in journal._query("SELECT path FROM files")}
    assert str(settings.inboxes[0].path / "a" / "p000.txt") in cached
    assert set(_marks(settings)) == {"", "b/", "b/masks/"}  # a/ lost a job
    counts.classified = 0
    report = run_once(settings, SolidGenerator)
    assert report.results == [] and report.skipped == INPUTS - 1
    assert counts.classified == PROMPTS - 1  # a/ only
