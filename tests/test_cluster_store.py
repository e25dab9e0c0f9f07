"""What only the cluster's store does: names instead of paths, folder marks across hosts,
shared settings, the schema's versions, the database clock, wake-ups and unmounted shares."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from daemon.config import Settings, load_config
from daemon.errors import ConfigError
from daemon.runtime.cluster import shared_settings
from daemon.runtime.worker import Outcome, Worker
from daemon.store.cluster import ClusterJournal
from daemon.store.portable import InboxPlace, PortablePaths
from daemon.store.rows import FolderMark
from daemon.values import JobState
from tests.fakes import Launch, SolidGenerator, wait_until
from tests.helpers import write_config


def journal_at(url: str, tmp_path: Path, mount: str, name: str = "cache") -> ClusterJournal:
    """A host's store: it mounts the share at ``mount``."""
    paths = PortablePaths([InboxPlace("share", f"{mount}/inbox", f"{mount}/outbox")])
    return ClusterJournal(url, paths, tmp_path / f"{name}.sqlite3")


def test_hosts_with_different_mounts_share_one_job(pg_url: str, tmp_path: Path) -> None:
    """A job queued through /mnt/a is the same job through /net/b, with b's paths."""
    with (
        journal_at(pg_url, tmp_path, "/mnt/a", "a") as a,
        journal_at(pg_url, tmp_path, "/net/b", "b") as b,
    ):
        job, _ = a.upsert_job(
            inbox="/mnt/a/inbox",
            input="x/cat.png",
            kind="image",
            fingerprint="fp",
            job_key="key",
            out_dir="/mnt/a/outbox/x/cat",
        )
        seen = b.get_job("/net/b/inbox", "x/cat.png")
        assert seen is not None and seen.id == job.id
        assert (seen.inbox, seen.out_dir) == ("/net/b/inbox", "/net/b/outbox/x/cat")
        with psycopg.connect(pg_url) as conn:
            stored = conn.execute("SELECT inbox, out_dir FROM dropforge_jobs").fetchall()
        assert stored == [("share", "x/cat")]


def test_a_folder_mark_does_not_survive_another_hosts_change(pg_url: str, tmp_path: Path) -> None:
    """Host a marks folder x/ done; host b retries one of its jobs; a's mark is forgotten."""
    mark = FolderMark("x/", "listing", "near", "", "watched", "[]", 1)
    with (
        journal_at(pg_url, tmp_path, "/mnt/a", "a") as a,
        journal_at(pg_url, tmp_path, "/net/b", "b") as b,
    ):
        job, _ = a.upsert_job(
            inbox="/mnt/a/inbox",
            input="x/cat.png",
            kind="image",
            fingerprint="fp",
            job_key="key",
            out_dir="/mnt/a/outbox/x/cat",
        )
        a.mark_done(job.id, seconds=1.0)
        a.set_folder_marks([("/mnt/a/inbox", mark, {"x/cat.png": "fp"})])
        assert a.folder_marks("/mnt/a/inbox") == {"x/": mark}
        assert b.retry(inputs=[("/net/b/inbox", "x/cat.png")]) == 1
        assert a.folder_marks("/mnt/a/inbox") == {}
        b.claim("b:1", 60)
        b.mark_done(job.id, seconds=1.0)
        a.set_folder_marks([("/mnt/a/inbox", mark, {"x/cat.png": "fp"})])
        assert a.folder_marks("/mnt/a/inbox") == {"x/": mark}
        b.delete(job.id)  # the input left the inbox, seen by b
        assert a.folder_marks("/mnt/a/inbox") == {}


def test_a_host_with_other_settings_is_refused(pg_url: str, tmp_path: Path) -> None:
    """The first live host registers the settings; a host with other steps is refused,
    naming the key; once no host is alive, new settings are taken."""
    config = write_config(tmp_path, "org/model", steps=4)
    other = tmp_path / "other"
    other.mkdir()
    changed = write_config(other, "org/model", steps=9)
    with journal_at(pg_url, tmp_path, "/mnt/a") as store:
        store.join(
            "a:1",
            host="a",
            pid=1,
            device="cpu",
            version="0",
            settings=shared_settings(load_config(config)),
        )
        with pytest.raises(ConfigError) as refused:
            store.join(
                "b:2",
                host="b",
                pid=2,
                device="cpu",
                version="0",
                settings=shared_settings(load_config(changed)),
            )
        assert str(refused.value) == (
            "settings differ from the cluster's (registered by host a): [presets.standard] "
            "steps; make config.toml the same on every host, or stop every host to change them"
        )
        store.leave("a:1")
        store.join(
            "b:2",
            host="b",
            pid=2,
            device="cpu",
            version="0",
            settings=shared_settings(load_config(changed)),
        )
        assert [h.owner for h in store.hosts()] == ["b:2"]


def test_a_newer_schema_is_refused(pg_url: str, tmp_path: Path) -> None:
    """A database upgraded by a newer dropforge is not used by an older one."""
    journal_at(pg_url, tmp_path, "/mnt/a").close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO dropforge_schema (version) VALUES (99)")
    try:
        with pytest.raises(ConfigError, match="holds job-store schema 99, newer than this"):
            journal_at(pg_url, tmp_path, "/mnt/a")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DELETE FROM dropforge_schema WHERE version = 99")


def test_a_version_1_database_is_upgraded_in_place(pg_url: str, tmp_path: Path) -> None:
    """A database of job-store schema 1 (before queue control and attempts) opens as schema
    2 with its rows intact: no priority, no cancel, nothing planned, a running claim without
    an attempt row is judged when its host is found dead, and the next claim is fenced."""
    from daemon.store.pg_schema import MIGRATIONS, SCHEMA_VERSION

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS dropforge_attempts, dropforge_jobs, dropforge_hosts,"
            " dropforge_settings, dropforge_schema CASCADE"
        )
        conn.execute("DROP SEQUENCE IF EXISTS dropforge_claims, dropforge_revs")
        conn.execute("DROP FUNCTION IF EXISTS dropforge_jobs_revise, dropforge_jobs_changed")
        with conn.transaction():
            for statement in MIGRATIONS[0]:
                conn.execute(statement)
            conn.execute("CREATE TABLE dropforge_schema (version integer NOT NULL)")
            conn.execute("INSERT INTO dropforge_schema (version) VALUES (1)")
        conn.execute(
            "INSERT INTO dropforge_jobs (inbox, input, folder, kind, fingerprint, job_key,"
            " out_dir, state, attempts, created_at, updated_at, started_at, lease_owner,"
            " lease_expires, progress_done, progress_total, claim) VALUES ('share', 'a.png',"
            " '', 'image', 'fp', 'k', 'a', 'running', 1, 1, 1, 1, 'gone:1', 1e12, 1, 3, 7)"
        )
        conn.execute("SELECT setval('dropforge_claims', 7)")  # claim 7 was drawn from it
    with journal_at(pg_url, tmp_path, "/mnt/a") as store:
        with psycopg.connect(pg_url) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM dropforge_schema")]
        assert versions == [1, SCHEMA_VERSION] == [1, 2]
        (job,) = store.jobs()
        assert (job.state, job.claim, job.priority, job.cancel, job.planned) == (
            JobState.running,
            7,
            0,
            None,
            (),
        )
        assert store.recover(max_attempts=3, alive=lambda owner: True) == (1, 0)
        (died,) = store.attempts(job.id)
        assert (died.ended.value, died.stage.value, died.point, died.counted) == (
            "died",
            "generating",
            (1, 0),
            True,
        )
        again = store.claim("a:1", 60)
        assert again is not None and again.claim > 7
        assert [a.number for a in store.attempts(job.id)] == [1, 2]


def test_leases_use_the_database_clock(pg_url: str, tmp_path: Path) -> None:
    """Without an injected clock, claims and leases are stamped by the database's clock."""
    with journal_at(pg_url, tmp_path, "/mnt/a") as store:
        store.upsert_job(
            inbox="/mnt/a/inbox",
            input="a.png",
            kind="image",
            fingerprint="f",
            job_key="k",
            out_dir="/mnt/a/outbox/a",
        )
        with psycopg.connect(pg_url) as conn:
            before = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()
        job = store.claim("a:1", 600)
        with psycopg.connect(pg_url) as conn:
            after = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()
        assert job is not None and job.started_at is not None and job.lease_expires is not None
        assert before is not None and after is not None
        assert before[0] <= job.started_at <= after[0]
        assert job.lease_expires == pytest.approx(job.started_at + 600)


def test_a_queued_job_wakes_a_listening_host(pg_url: str, tmp_path: Path) -> None:
    """LISTEN/NOTIFY: a job queued by one host wakes another that listens."""
    woken = threading.Event()
    stop = threading.Event()
    with (
        journal_at(pg_url, tmp_path, "/mnt/a", "a") as a,
        journal_at(pg_url, tmp_path, "/net/b", "b") as b,
    ):
        listener = threading.Thread(target=b.listen, args=(woken.set, stop), daemon=True)
        listener.start()
        try:
            while not woken.is_set():  # the listener may not be listening yet: queue again
                a.upsert_job(
                    inbox="/mnt/a/inbox",
                    input="a.png",
                    kind="image",
                    fingerprint="f",
                    job_key="k",
                    out_dir="/mnt/a/outbox/a",
                    force=True,
                )
                job = a.get_job("/mnt/a/inbox", "a.png")
                assert job is not None
                a.mark_done(job.id, seconds=0)
                woken.wait(0.5)
        finally:
            stop.set()
            listener.join(5)
    assert woken.is_set()


def test_an_unmounted_share_is_never_claimed_from(pg_url: str, tmp_path: Path) -> None:
    """A cluster host whose outbox (or inbox) is missing claims none of that inbox's jobs."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[cluster]\ndatabase = "{pg_url}"\nhost_name = "a"\n\n[[inbox]]\nname = "share"\n'
        'path = "inbox"\noutput = "outbox"\n\n[models]\ndefault = "org/model"\n',
        encoding="utf-8",
    )
    (tmp_path / "inbox").mkdir()
    settings = load_config(config)
    with journal_at(pg_url, tmp_path, str(tmp_path)) as store:
        store.upsert_job(
            inbox=str(tmp_path / "inbox"),
            input="a.txt",
            kind="prompt",
            fingerprint="f",
            job_key="k",
            out_dir=str(tmp_path / "outbox" / "a"),
        )
        worker = Worker(settings, store, SolidGenerator, owner="a:1")
        assert worker.claimable_inboxes() == []  # no outbox: it may be an unmounted share
        assert worker.claim() is None
        (tmp_path / "outbox").mkdir()
        job = worker.claim()
        assert job is not None and job.state is JobState.running


def test_an_unmounted_outbox_never_requeues_shared_jobs(
    pg_url: str, tmp_path: Path, launch: Launch
) -> None:
    """With its outbox gone, a host's rescan leaves the done jobs alone (every other host
    would otherwise make them again) and says why; once back, nothing is redone."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "state"\nsettle_seconds = 0.1\nmin_free_mb = 0\n\n'
        f'[cluster]\ndatabase = "{pg_url}"\nhost_name = "a"\n\n[[inbox]]\nname = "share"\n'
        'path = "inbox"\noutput = "outbox"\n\n[models]\ndefault = "org/model"\n\n'
        "[defaults]\nwidth = 64\nheight = 64\n\n[presets.standard]\nsteps = 2\n",
        encoding="utf-8",
    )
    (tmp_path / "inbox").mkdir()
    (tmp_path / "outbox").mkdir()
    running = launch(config)
    (tmp_path / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
    wait_until(lambda: running.outcomes() == [("cat.txt", Outcome.done)], message="the job")
    (tmp_path / "outbox").rename(tmp_path / "elsewhere")
    with capture_logs() as logs:
        assert running.service.watcher is not None
        running.service.watcher.request_rescan()
        wait_until(lambda: any(e["event"] == "outbox.missing" for e in logs), message="warning")
    journal = running.service.journal
    assert journal is not None
    (job,) = journal.jobs()
    assert job.state is JobState.done
    (tmp_path / "elsewhere").rename(tmp_path / "outbox")
    scan = running.rescan()
    assert (scan["queued"], scan["done"]) == (0, 1)
    assert running.outcomes() == [("cat.txt", Outcome.done)]


def test_cluster_job_keys_do_not_depend_on_where_a_host_keeps_its_model(tmp_path: Path) -> None:
    """Two hosts with the model folder at different paths plan the same job key and
    fingerprint in a cluster; on one host they keep the resolved path, as before."""
    from daemon.intake.candidates import candidate_for
    from daemon.store.sqlite import SqliteJournal
    from daemon.tasks.prepare import prepare

    def plan_on(host: str, cluster: bool) -> str:
        root = tmp_path / host / ("cluster" if cluster else "single")
        (root / "models" / "sd").mkdir(parents=True)
        (root / "inbox").mkdir()
        (root / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
        table = '[cluster]\ndatabase = "postgresql://db/x"\nhost_name = "h"\n' if cluster else ""
        (root / "config.toml").write_text(
            f'{table}[[inbox]]\nname = "share"\npath = "inbox"\noutput = "outbox"\n\n'
            '[models]\ndefault = "models/sd"\n',
            encoding="utf-8",
        )
        settings = load_config(root / "config.toml")
        inbox = settings.inboxes[0]
        candidate = candidate_for(inbox, inbox.path / "cat.txt")
        assert candidate is not None
        with SqliteJournal(root / "j.sqlite3") as journal:
            prepared = prepare(settings, journal, candidate)
        assert prepared.plan is not None
        return f"{prepared.job_key} {prepared.fingerprint}"

    assert plan_on("a", cluster=True) == plan_on("b", cluster=True)
    assert plan_on("a", cluster=False) != plan_on("b", cluster=False)


def test_pruning_runs_on_one_host_at_a_time(pg_url: str, tmp_path: Path) -> None:
    """While one host holds the prune lock, another host's prune does nothing."""
    from daemon.store.pg_schema import LOCK_PRUNE

    with journal_at(pg_url, tmp_path, "/mnt/a") as store:
        job, _ = store.upsert_job(
            inbox="/mnt/a/inbox",
            input="gone.png",
            kind="image",
            fingerprint="f",
            job_key="k",
            out_dir="/mnt/a/outbox/gone",
        )
        store.mark_done(job.id, seconds=0)
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (LOCK_PRUNE,))
            assert store.prune_jobs(0.0, exists=lambda path: False) == 0
            other.execute("SELECT pg_advisory_unlock(%s)", (LOCK_PRUNE,))
        assert store.prune_jobs(0.0, exists=lambda path: False) == 1


def test_outside_active_hours_a_cluster_host_claims_nothing(
    pg_url: str, tmp_path: Path, launch: Launch
) -> None:
    """Outside its window a host leaves the job queued for the others (no parking as
    waiting, which would hold the job back from every host)."""
    from datetime import datetime, timedelta

    opens = datetime.now() + timedelta(hours=2)
    closes = opens + timedelta(hours=1)
    window = f"{opens:%H:%M}-{closes:%H:%M}"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "state"\nsettle_seconds = 0.1\nactive_hours = "{window}"\n\n'
        f'[cluster]\ndatabase = "{pg_url}"\nhost_name = "a"\npoll_seconds = 0.2\n\n'
        '[[inbox]]\nname = "share"\npath = "inbox"\noutput = "outbox"\n\n'
        '[models]\ndefault = "org/model"\n',
        encoding="utf-8",
    )
    (tmp_path / "inbox").mkdir()
    (tmp_path / "outbox").mkdir()
    (tmp_path / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
    os.utime(tmp_path / "inbox" / "cat.txt", (1e9, 1e9))  # settled: the first scan queues it
    running = launch(config)  # returns after the first scan
    loop = running.service.loop
    assert loop is not None
    wait_until(lambda: loop.paused is not None, message="the pause")
    assert not loop._window_open()  # a look at the window now: nothing is claimed or parked
    journal = running.service.journal
    assert journal is not None
    wait_until(lambda: journal.jobs(), message="the job queued")  # once it settled
    loop.wake()
    assert not loop._window_open()
    (job,) = journal.jobs()
    assert (job.state, job.attempts) == (JobState.queued, 0)
    assert loop.paused == f"outside active_hours {window}; runs from {opens:%H:%M}"


def test_once_joins_the_cluster_while_it_runs(pg_url: str, tmp_path: Path) -> None:
    """`dropforge once` on a cluster host registers itself (its claims are not a dead host's),
    processes what is pending from the shared store, and leaves."""
    from daemon.runtime.once import run_once

    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "state"\nmin_free_mb = 0\n\n[cluster]\ndatabase = "{pg_url}"\n'
        'host_name = "a"\n\n[[inbox]]\nname = "share"\npath = "inbox"\noutput = "outbox"\n\n'
        '[models]\ndefault = "org/model"\n\n[defaults]\nwidth = 64\nheight = 64\n\n'
        "[presets.standard]\nsteps = 2\n",
        encoding="utf-8",
    )
    (tmp_path / "inbox").mkdir()
    (tmp_path / "outbox").mkdir()
    (tmp_path / "inbox" / "cat.txt").write_text("a cat\n", encoding="utf-8")
    seen: list[list[str]] = []
    settings = load_config(config)
    with journal_at(pg_url, tmp_path, str(tmp_path), "probe") as probe:

        def during(job: object, total: int) -> None:
            seen.append([h.host for h in probe.hosts()])

        from daemon.runtime.worker import Progress

        report = run_once(settings, SolidGenerator, progress=Progress(on_start=during))
        assert [(r.rel, r.outcome) for r in report.results] == [("cat.txt", Outcome.done)]
        assert seen == [["a"]]
        assert probe.hosts() == []
        (job,) = probe.jobs()
        assert (job.inbox, job.state) == (str(tmp_path / "inbox"), JobState.done)


def test_hosts_agree_on_a_multi_scene_prompt_file(pg_url: str, tmp_path: Path) -> None:
    """A prompt file with scenes depends on a file in the output tree; two hosts that mount
    the share at different paths still agree on its job: the second finds nothing to do."""
    from daemon.intake.candidates import candidate_for
    from daemon.survey.entries import Verdict
    from daemon.survey.survey import survey

    def host(name: str) -> tuple[Path, Settings]:
        root = tmp_path / name
        (root / "share" / "inbox").mkdir(parents=True)
        (root / "share" / "outbox").mkdir()
        (root / "share" / "inbox" / "story.md").write_text(
            "A lighthouse at dusk\n\n* * *\n\nA storm over the harbour\n", encoding="utf-8"
        )
        (root / "config.toml").write_text(
            f'[daemon]\nstate_dir = "state"\n\n[cluster]\ndatabase = "{pg_url}"\n'
            f'host_name = "{name}"\n\n[[inbox]]\nname = "share"\npath = "share/inbox"\n'
            'output = "share/outbox"\n\n[models]\ndefault = "org/model"\n',
            encoding="utf-8",
        )
        return root, load_config(root / "config.toml")

    verdicts = []
    for name in ("a", "b"):
        root, settings = host(name)
        inbox = settings.inboxes[0]
        candidate = candidate_for(inbox, inbox.path / "story.md")
        assert candidate is not None
        with journal_at(pg_url, tmp_path, str(root / "share"), name) as store:
            entry = survey(settings, store, candidate)
            verdicts.append(entry.verdict)
            assert entry.job is not None
            assert entry.job.deps == (str(root / "share/outbox/story/story.prompts.toml"),)
    assert verdicts == [Verdict.queued, Verdict.pending]
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute("SELECT deps FROM dropforge_jobs").fetchall()
    assert stored == [('["<output>/story/story.prompts.toml"]',)]
