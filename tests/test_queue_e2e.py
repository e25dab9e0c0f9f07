"""Queue control on the real path: the tiny diffusers pipeline, a real journal, and `dropforge
run` as a process steered by the command line from outside."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from structlog.testing import capture_logs

from daemon.cli import main
from daemon.generators import GenerationEvents, ImageRequest, MeshRequest, TweenRequest
from daemon.generators.diffusers_backend import DiffusersGenerator
from daemon.runtime import control
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import Launch, wait_until
from tests.helpers import manifest, noise_image, write_config
from tests.soak.crash_harness import start_daemon

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Hooked:
    """The real generator, with a hook called inside the denoising-step callback of one
    chosen step: the moment a test cancels, as a click or a command would."""

    inner: DiffusersGenerator
    image: int  # the hook fires at step ``step`` of the call making this output index
    step: int
    hook: Callable[[], None]
    steps_seen: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    def generate_images(self, request: ImageRequest, events: GenerationEvents) -> None:
        """Delegate, noting each step of each call and firing the hook once."""
        index = [request.images[0].index]

        def on_call_step(step: int, steps: int) -> None:
            events.on_call_step(step, steps)
            self.steps_seen.append((index[0], step))
            if (index[0], step) == (self.image, self.step):
                self.hook()

        def on_image(i: int, image: Image.Image) -> None:
            events.on_image(i, image)
            index[0] = i + 1

        wrapped = dataclasses.replace(events, on_call_step=on_call_step, on_image=on_image)
        self.inner.generate_images(request, wrapped)

    def generate_mesh(self, request: MeshRequest, events: GenerationEvents) -> dict[str, bytes]:
        return self.inner.generate_mesh(request, events)

    def generate_tween(self, request: TweenRequest, events: GenerationEvents) -> None:
        self.inner.generate_tween(request, events)

    def device_name(self) -> str:
        return self.inner.device_name()

    def unload(self) -> None:
        return None  # the session's generator stays loaded for the other tests

    def loaded_models(self) -> Mapping[str, str]:
        return self.inner.loaded_models()


def test_a_cancel_stops_the_running_job_within_one_step_and_keeps_its_images(
    tmp_path: Path, tiny_models: Path, generator: DiffusersGenerator, launch: Launch
) -> None:
    """A cancel recorded (as another process would) during step 2 of image 2 stops the real
    pipeline in that step's callback: image 1 is kept, listed in a canceled manifest, and no
    further step runs."""
    config = write_config(
        tmp_path,
        str(tiny_models / "sd"),
        extra_daemon="settle_seconds = 0.2\nrescan_interval = 3600\nmax_batch = 1",
        steps=8,
    )
    journal_path = tmp_path / "state" / "journal.sqlite3"
    holder: dict[str, Any] = {}

    def cancel_from_outside() -> None:
        with SqliteJournal(journal_path) as other:
            (job,) = other.running()
            control.cancel(other, [job])
        loop = holder["service"].service.loop
        wait_until(lambda: loop.worker.cancel_reason() is not None, message="the cancel heard")

    hooked = Hooked(generator, image=1, step=2, hook=cancel_from_outside)
    with capture_logs() as logs:
        holder["service"] = launch(config, generator=hooked, retry_tick=3600)
        noise_image(tmp_path / "inbox" / "cat.png")
        (tmp_path / "inbox" / "cat.toml").write_text("count = 3\nseed = 7\n", encoding="utf-8")
        wait_until(lambda: holder["service"].results, 120, "the job's end")
    (result,) = holder["service"].results
    assert result.outcome.value == "canceled"
    assert result.message == "canceled on request (1 of 3 outputs kept)"
    assert hooked.steps_seen[-1] == (1, 2), "a step ran after the cancel was heard"
    out = tmp_path / "outbox" / "cat"
    record = manifest(out)
    assert record["status"] == "canceled"
    assert [o["file"] for o in record["outputs"]] == ["cat-7.png"]
    assert sorted(p.name for p in out.iterdir()) == ["cat-7.png", "manifest.json"]
    assert record["warnings"][-1] == "canceled on request, 1 of 3 outputs finished"
    names = [e["event"] for e in logs]
    assert names.index("job.cancel_heard") < names.index("manifest.canceled")
    assert names.index("manifest.canceled") < names.index("job.canceled")


@pytest.fixture
def cli_output(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., tuple[int, str]]]:
    """Run a dropforge command in this process; return its exit code and stdout."""

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        return code, capsys.readouterr().out

    yield run


def events_of(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines written so far."""
    found = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_a_running_daemon_obeys_priority_cancel_deletion_and_retry_then_dies(
    tmp_path: Path, tiny_models: Path, cli_output: Callable[..., tuple[int, str]]
) -> None:
    """Against `dropforge run`: `priority --top` makes a job the next claimed, deleting a
    queued input cancels it, `cancel` stops the running job keeping its images, `retry`
    restarts it at once (no rescan, no retry tick), and after kill -9 status says not
    running and shows the job as interrupted."""
    config = write_config(
        tmp_path,
        str(tiny_models / "sd"),
        extra_daemon="settle_seconds = 0.3\nrescan_interval = 3600\nmax_batch = 1",
        steps=10,
        extra="\n[ui]\nenabled = false\n",
    )
    inbox, log = tmp_path / "inbox", tmp_path / "daemon.log"
    c = str(config)
    proc = start_daemon(config, log)
    try:
        with SqliteJournal(tmp_path / "state" / "journal.sqlite3") as journal:

            def state(rel: str) -> JobState | None:
                job = journal.get_job(str(inbox), rel)
                return None if job is None else job.state

            def started() -> list[str]:
                return [e["input"] for e in events_of(log) if e["event"] == "job.started"]

            noise_image(inbox / "long.png")
            (inbox / "long.toml").write_text("count = 20\nseed = 1\n", encoding="utf-8")
            wait_until(lambda: (tmp_path / "outbox" / "long" / "long-1.png").exists(), 180,
                       "the first image of long.png")  # fmt: skip
            for n, name in enumerate(("a.png", "b.png", "c.png")):
                noise_image(inbox / name, seed=n + 1)
            wait_until(lambda: state("c.png") is JobState.queued, 30, "three queued")
            assert cli_output("priority", "-c", c, str(inbox / "c.png"), "--top") == (
                0,
                "c.png: priority 0; 0 queued jobs ahead\n",
            )
            (inbox / "b.png").unlink()
            wait_until(lambda: state("b.png") is JobState.canceled, 30, "b canceled by deletion")
            code, text = cli_output("cancel", "-c", c, str(inbox / "long.png"))
            assert code == 0
            assert text == (
                "canceled 0 jobs\nstopping long.png: the running daemon stops it at its next step\n"
            )
            wait_until(lambda: state("long.png") is JobState.canceled, 60, "long canceled")
            kept = manifest(tmp_path / "outbox" / "long")["outputs"]
            assert 1 <= len(kept) < 20
            wait_until(lambda: state("a.png") is JobState.done, 120, "the queue went on")
            assert started() == ["long.png", "c.png", "a.png"]
            assert cli_output("retry", "-c", c, str(inbox / "long.png")) == (0, "requeued 1 job\n")
            # No rescan (an hour away) and no retry tick touches a canceled job: only the
            # journal monitor can have woken the worker.
            wait_until(lambda: started()[-1:] == ["long.png"], 5, "long.png started again")
            wait_until(
                lambda: len(list((tmp_path / "outbox" / "long").glob("long-*.png"))) > len(kept),
                60,
                "a new image of the resumed job",
            )
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            code, text = cli_output("status", "-c", c)
            lines = text.splitlines()
            assert lines[0] == "Daemon: not running"
            assert not [line for line in lines if line.startswith("Running:")]
            (interrupted,) = [line for line in lines if line.startswith("Interrupted:")]
            assert interrupted.startswith("Interrupted: long.png (image ")
            assert interrupted.endswith("is gone; it resumes when dropforge runs again)")
            data = json.loads(cli_output("status", "--json", "-c", c)[1])
            assert data["counts"]["running"] == 0 and data["running"] == []
            assert [j["input"] for j in data["interrupted"]] == ["long.png"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
