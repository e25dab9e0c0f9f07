"""The worker's side of the crash-loop rule: each claim's stage and furthest point, as the job
runs, and what the store makes of a death at each of them (logic on the fake generator; the
real process deaths are tests/test_crash_loop.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import load_config
from daemon.generators import GenerationEvents, ImageRequest
from daemon.intake.candidates import candidate_for
from daemon.runtime.attempts import model_signature
from daemon.runtime.worker import Outcome, Worker
from daemon.store.rows import Job
from daemon.store.sqlite import SqliteJournal
from daemon.survey.survey import survey
from daemon.values import AttemptEnd, AttemptStage, JobState
from tests.fakes import SolidGenerator
from tests.helpers import write_config


@dataclass
class Probe(SolidGenerator):
    """The fake generator, noting the claim's stage when called, when ready and at each step."""

    journal: SqliteJournal | None = None
    stages: list[tuple[str, AttemptStage]] = field(default_factory=list)

    def _stage(self, when: str) -> None:
        assert self.journal is not None
        (running,) = self.journal.running()
        self.stages.append((when, self.journal.attempts(running.id)[-1].stage))

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        self._stage("called")
        ready = events.on_ready

        def on_ready() -> None:
            ready()
            self._stage("ready")

        events.on_ready = on_ready
        super().generate_images(request, events)


def queue(journal: SqliteJournal, config: Path, name: str) -> Job:
    """Write a prompt file with two images and queue its job."""
    settings = load_config(config)
    inbox = settings.inboxes[0]
    (inbox.path / f"{name}.txt").write_text(f"a lighthouse {name}\n", encoding="utf-8")
    (inbox.path / f"{name}.toml").write_text("count = 2\nsteps = 3\n", encoding="utf-8")
    candidate = candidate_for(inbox, inbox.path / f"{name}.txt")
    assert candidate is not None
    survey(settings, journal, candidate)
    job = journal.get_job(str(inbox.path), f"{name}.txt")
    assert job is not None
    return job


def test_a_claim_moves_through_its_stages_to_its_furthest_point(tmp_path: Path) -> None:
    """The first job loads the model for the first time, the next one a known model; each
    ends at all its outputs, and the model is remembered by its signature."""
    config = write_config(tmp_path, "/models/solid")
    settings = load_config(config)
    with SqliteJournal(settings.journal_path) as journal:
        probe = Probe(journal=journal)
        worker = Worker(settings, journal, lambda: probe, owner="host:1")
        for name in ("first", "second"):
            queued = queue(journal, config, name)
            job = journal.claim("host:1", 60)
            assert job is not None and job.id == queued.id
            assert worker.run(job).outcome is Outcome.done
            (attempt,) = journal.attempts(job.id)
            assert (attempt.ended, attempt.stage, attempt.point, attempt.total) == (
                AttemptEnd.done,
                AttemptStage.generating,
                (2, 0),
                2,
            )
        assert probe.stages == [
            ("called", AttemptStage.first_load),
            ("ready", AttemptStage.generating),
            ("called", AttemptStage.loading),
            ("ready", AttemptStage.generating),
        ]
        model = settings.model_source("default")
        assert journal.model_loaded(model_signature(model, settings.device))


def test_deaths_at_each_stage_are_judged(tmp_path: Path) -> None:
    """A process dying while a known model loads is requeued without a count; dying while the
    job generates counts when it got no further than before, and a third such death
    quarantines."""
    config = write_config(tmp_path, "/models/solid")
    settings = load_config(config)
    with SqliteJournal(settings.journal_path) as journal:
        model = settings.model_source("default")
        journal.note_model_loaded(model_signature(model, settings.device))
        job = queue(journal, config, "crashy")
        for stage, steps in [
            (AttemptStage.loading, 0),
            (AttemptStage.generating, 2),
            (AttemptStage.loading, 0),
            (AttemptStage.generating, 2),
            (AttemptStage.generating, 1),
            (AttemptStage.generating, 1),
        ]:
            claimed = journal.claim("dead:1", 60)
            assert claimed is not None and claimed.id == job.id
            journal.set_stage(job.id, stage)
            if steps:
                journal.set_progress(job.id, 0, 2, f"step {steps}/3", steps=steps)
            journal.recover(settings.max_attempts)
        history = journal.attempts(job.id)
        assert [a.counted for a in history] == [False, False, False, True, True, True]
        final = journal.get(job.id)
        assert (final.state, final.attempts) == (JobState.quarantined, 3)
        assert final.error == (
            "quarantined: the process died 3 times without getting further (the last time at "
            "0/2 outputs and 1 step into the next); run dropforge retry "
            f"{tmp_path}/inbox/crashy.txt"
        )


def test_status_lists_the_attempts_of_a_job_claimed_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job queued again after its process died, and one running again, show each attempt
    and how far it got, in text and JSON; a job on its first claim shows none."""
    config = write_config(tmp_path, "/models/solid")
    settings = load_config(config)
    with SqliteJournal(settings.journal_path) as journal:
        again = queue(journal, config, "again")
        running = queue(journal, config, "running")
        fresh = queue(journal, config, "fresh")
        for job, steps in ((again, 3), (running, 1)):
            claimed = journal.claim("dead:1", 60)
            assert claimed is not None and claimed.id == job.id
            journal.set_stage(job.id, AttemptStage.generating)
            journal.set_progress(job.id, 0, 2, f"step {steps}/3", steps=steps)
        journal.recover(settings.max_attempts)
        assert journal.claim("host:1", 60) is not None  # "again" is running once more
        journal.mark_queued(again.id)
        assert journal.claim("host:1", 60) is not None  # "again" again: stopped, then running
        assert journal.get(fresh.id).state is JobState.queued
    assert main(["status", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Running: again.txt"))
    assert lines[at + 1 : at + 4] == [
        "  attempt 1: died at 0/2 outputs and 3 steps into the next"
        " (not counted: it got further than where it started)",
        "  attempt 2: stopped while preparing",
        "  attempt 3: running while preparing",
    ]
    at = lines.index("Queued again: running.txt")
    assert lines[at + 1] == (
        "  attempt 1: died at 0/2 outputs and 1 step into the next"
        " (not counted: it got further than where it started)"
    )
    assert "Queued again: fresh.txt" not in lines
    assert main(["status", "--json", "-c", str(config)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(a["attempt"], a["ended"]) for a in status["running"][0]["attempts"]] == [
        (1, "died"),
        (2, "stopped"),
        (3, "running"),
    ]
    assert [q["input"] for q in status["requeued"]] == ["running.txt"]
