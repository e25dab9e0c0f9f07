"""The job-store contract: every ``JobStore`` backend passes these tests.

The ``store`` fixture is parametrised over the implementations (as huey's ``StorageTests``
and APScheduler 4's ``raw_datastore`` fixture do); a new backend joins by adding a case to
``STORES``, not by writing new tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import JobNotFound
from daemon.store.attempts import describe_attempts
from daemon.store.protocols import JobStore
from daemon.store.rows import CancelResult, Job, PlannedFile
from daemon.store.sqlite import SqliteJournal
from daemon.values import AttemptEnd, AttemptStage, CancelReason, JobState
from tests.helpers import JOB_INBOX, SettableClock, add_job

Opener = Callable[[SettableClock], Any]  # opens a new handle on the test's one store


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    path = tmp_path / "state" / "journal.sqlite3"
    return lambda clock: SqliteJournal(path, clock=clock)


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """The cluster's store: jobs in the session's PostgreSQL (skipped without it), this
    handle's scan cache in a local file, JOB_INBOX shared under the name ``inbox``."""
    url = request.getfixturevalue("pg_url")
    from daemon.store.cluster import ClusterJournal
    from daemon.store.portable import InboxPlace, PortablePaths

    paths = PortablePaths([InboxPlace("inbox", JOB_INBOX, "/srv/outbox")])
    count = iter(range(1000))
    return lambda clock: ClusterJournal(
        url, paths, tmp_path / f"cache{next(count)}.sqlite3", clock=clock
    )


STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Opener]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(STORES))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens handles on one fresh store of each implementation."""
    return STORES[request.param](request, tmp_path)


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def store(opener: Opener, clock: SettableClock) -> Iterator[JobStore]:
    with opener(clock) as handle:
        yield handle


def test_new_job_is_queued(store: JobStore, clock: SettableClock) -> None:
    """A new input becomes a queued job with the given identity."""
    job, changed = add_job(store, deps=["_defaults.toml", "a/mask.png"])
    assert changed
    assert job.state is JobState.queued
    assert (job.inbox, job.input, job.kind, job.fingerprint, job.job_key) == (
        JOB_INBOX,
        "cat.png",
        "image",
        "fp1",
        "key1",
    )
    assert (job.attempts, job.waits, job.error, job.force) == (0, 0, None, False)
    assert job.created_at == job.updated_at == clock.now
    assert job.deps == ("_defaults.toml", "a/mask.png")
    assert store.get_job(JOB_INBOX, "cat.png") == job
    assert store.get_job(JOB_INBOX, "dog.png") is None


def test_unchanged_job_is_left_alone(store: JobStore, clock: SettableClock) -> None:
    """Upserting the same fingerprint and key leaves a finished job finished."""
    job, _ = add_job(store)
    store.claim("w", 60)
    store.mark_done(job.id, seconds=4.0)
    done = store.get(job.id)
    clock.advance(10)
    again, changed = add_job(store)
    assert not changed
    assert again == done
    assert again.state is JobState.done


@pytest.mark.parametrize("change", [{"fingerprint": "fp2"}, {"job_key": "key2"}])
def test_changed_identity_starts_over(
    store: JobStore, clock: SettableClock, change: dict[str, str]
) -> None:
    """A changed fingerprint or job key requeues a failed job with fresh counters."""
    job, _ = add_job(store)
    store.claim("w", 60)
    store.mark_waiting(job.id, "no model", retry_in=5)
    clock.advance(5)
    store.claim("w", 60)
    store.mark_failed(job.id, "cat.png: not an image")
    failed = store.get(job.id)
    assert (failed.attempts, failed.waits, failed.error) == (1, 1, "cat.png: not an image")
    again, changed = add_job(store, out_dir="/srv/outbox/new", **change)
    assert changed
    assert again.id == job.id
    assert again.state is JobState.queued
    assert (again.attempts, again.waits, again.error, again.not_before) == (0, 0, None, None)
    assert again.out_dir == "/srv/outbox/new"


def test_force_requeues_an_unchanged_job_once(store: JobStore) -> None:
    """force requeues a done job and sets the flag; a repeat while queued changes nothing."""
    job, _ = add_job(store)
    store.mark_done(job.id, seconds=1.0)
    forced, changed = add_job(store, force=True)
    assert changed
    assert (forced.state, forced.force) == (JobState.queued, True)
    assert add_job(store, force=True) == (forced, False)


def test_running_job_is_not_reset_under_a_live_lease(store: JobStore, clock: SettableClock) -> None:
    """A changed input does not disturb a running job until its lease has expired."""
    add_job(store)
    running = store.claim("w", 60)
    assert running is not None
    assert add_job(store, fingerprint="fp2") == (running, False)
    clock.advance(61)
    job, changed = add_job(store, fingerprint="fp2")
    assert changed
    assert (job.state, job.fingerprint, job.lease_owner) == (JobState.queued, "fp2", None)


def test_update_identity_and_delete(store: JobStore) -> None:
    """update_identity rewrites the identity in place; delete removes the row."""
    job, _ = add_job(store)
    store.update_identity(job.id, "fp9", "key9", "/srv/outbox/x")
    updated = store.get(job.id)
    assert (updated.fingerprint, updated.job_key, updated.out_dir) == (
        "fp9",
        "key9",
        "/srv/outbox/x",
    )
    assert store.delete(job.id)
    assert not store.delete(job.id)
    with pytest.raises(JobNotFound, match=f"no job {job.id} in the journal"):
        store.get(job.id)


def test_claim_takes_jobs_in_arrival_order(store: JobStore, clock: SettableClock) -> None:
    """claim returns the oldest runnable job and leases it."""
    first, _ = add_job(store, "b.png")
    second, _ = add_job(store, "a.png")
    clock.advance(5)
    job = store.claim("host:1", 600)
    assert job is not None
    assert job.id == first.id
    assert (job.state, job.attempts, job.lease_owner) == (JobState.running, 1, "host:1")
    assert (job.lease_expires, job.started_at) == (clock.now + 600, clock.now)
    assert store.claim("host:1", 600) == store.get(second.id)
    assert store.claim("host:1", 600) is None


def test_waiting_job_is_claimed_when_due(store: JobStore, clock: SettableClock) -> None:
    """A waiting job is skipped until its not_before, then taken in arrival order."""
    early, _ = add_job(store, "early.png")
    assert store.claim("w", 60) is not None
    store.mark_waiting(early.id, "model not available", retry_in=100)
    late, _ = add_job(store, "late.png")
    claimed = store.claim("w", 60)
    assert claimed is not None and claimed.id == late.id
    store.mark_done(late.id, seconds=1)
    assert store.claim("w", 60) is None
    clock.advance(100)
    again = store.claim("w", 60)
    assert again is not None and again.id == early.id


def test_backoff_grows_and_caps(store: JobStore, clock: SettableClock) -> None:
    """Default waits back off 30 s, 60 s, 120 s … up to one hour, without counting attempts."""
    job, _ = add_job(store)
    delays = []
    for _ in range(9):
        assert store.claim("w", 60) is not None
        store.mark_waiting(job.id, "disk below min_free_mb")
        waiting = store.get(job.id)
        assert waiting.not_before is not None
        delays.append(waiting.not_before - clock.now)
        clock.now = waiting.not_before
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    final = store.get(job.id)
    assert (final.state, final.waits, final.attempts) == (JobState.waiting, 9, 0)
    assert (final.error, final.lease_owner) == ("disk below min_free_mb", None)


def test_mark_done_records_seconds_and_clears_lease(store: JobStore, clock: SettableClock) -> None:
    """mark_done ends the job, records its time and spends the force flag."""
    job, _ = add_job(store, force=True)
    store.claim("w", 60)
    clock.advance(7)
    store.mark_done(job.id, seconds=6.5)
    done = store.get(job.id)
    assert (done.state, done.seconds, done.finished_at) == (JobState.done, 6.5, clock.now)
    assert (done.lease_owner, done.lease_expires, done.force) == (None, None, False)


def test_mark_failed_records_error(store: JobStore) -> None:
    """mark_failed ends the job with the user-facing error."""
    job, _ = add_job(store)
    store.claim("w", 60)
    store.mark_failed(job.id, "cat.toml: count must be 1..20, got 50")
    failed = store.get(job.id)
    assert (failed.state, failed.error) == (
        JobState.failed,
        "cat.toml: count must be 1..20, got 50",
    )
    assert store.claim("w", 60) is None


def test_mark_queued_does_not_count_the_claim(store: JobStore) -> None:
    """A job interrupted by a stop goes back to queued with its claim uncounted."""
    job, _ = add_job(store)
    store.claim("w", 60)
    store.mark_queued(job.id)
    queued = store.get(job.id)
    assert (queued.state, queued.attempts, queued.lease_owner) == (JobState.queued, 0, None)
    store.mark_queued(job.id)
    assert store.get(job.id).attempts == 0


def test_renew_lease_only_for_the_owner(store: JobStore, clock: SettableClock) -> None:
    """The owner can extend its lease; anyone else is told it does not hold it."""
    job, _ = add_job(store)
    store.claim("w1", 60)
    clock.advance(50)
    assert store.renew_lease(job.id, "w1", 60)
    assert store.get(job.id).lease_expires == clock.now + 60
    assert not store.renew_lease(job.id, "w2", 60)
    store.mark_done(job.id, seconds=1)
    assert not store.renew_lease(job.id, "w1", 60)


def test_set_progress(store: JobStore) -> None:
    """set_progress records images done of total and a note; a new claim resets it."""
    job, _ = add_job(store)
    store.claim("w", 60)
    store.set_progress(job.id, 2, 4, "step 3/20")
    running = store.running()
    assert [(j.progress_done, j.progress_total, j.progress_note) for j in running] == [
        (2, 4, "step 3/20")
    ]
    store.mark_queued(job.id)
    claimed = store.claim("w", 60)
    assert claimed is not None
    assert (claimed.progress_done, claimed.progress_total, claimed.progress_note) == (0, 0, "")


def test_recover_requeues_or_quarantines(store: JobStore) -> None:
    """At start-up running jobs return to the queue, or to quarantine after max_attempts claims
    that got no further."""
    crashy, _ = add_job(store, "my cat.png")
    fresh, _ = add_job(store, "dog.png")
    for _ in range(2):
        store.claim("dead:1", 60)
        store.recover(max_attempts=3)
    store.claim("dead:2", 60)  # crashy's third claim
    store.claim("dead:2", 60)  # fresh's first
    assert store.recover(max_attempts=3) == (1, 1)
    quarantined = store.get(crashy.id)
    assert quarantined.state is JobState.quarantined
    assert quarantined.error == (
        "quarantined: the process died 3 times without getting further (the last time while "
        "preparing); run dropforge retry '/srv/inbox/my cat.png'"
    )
    requeued = store.get(fresh.id)
    assert (requeued.state, requeued.attempts, requeued.lease_owner) == (JobState.queued, 1, None)
    assert store.recover(max_attempts=3) == (0, 0)


def test_two_handles_never_claim_the_same_job(opener: Opener, clock: SettableClock) -> None:
    """Four threads over two handles on one store claim every job exactly once."""
    with opener(clock) as first, opener(clock) as second:
        ids = {add_job(first, f"{n:03}.png")[0].id for n in range(60)}
        claimed: list[list[int]] = [[] for _ in range(4)]
        barrier = threading.Barrier(4)

        def worker(index: int, store: JobStore) -> None:
            barrier.wait()
            while (job := store.claim(f"w{index}", 60)) is not None:
                claimed[index].append(job.id)

        threads = [
            threading.Thread(target=worker, args=(i, (first, second)[i % 2])) for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        everything = [i for ids_of in claimed for i in ids_of]
        assert sorted(everything) == sorted(ids)
        assert all(ids_of == sorted(ids_of) for ids_of in claimed)
        assert first.counts()[JobState.running] == 60


def test_counts_include_zeros(store: JobStore) -> None:
    """counts names every state, zeros included, in enum order."""
    assert store.counts() == {s: 0 for s in JobState}
    add_job(store, "a.png")
    add_job(store, "b.png")
    store.claim("w", 60)
    assert list(store.counts().items()) == [
        (JobState.queued, 1),
        (JobState.running, 1),
        (JobState.done, 0),
        (JobState.failed, 0),
        (JobState.waiting, 0),
        (JobState.quarantined, 0),
        (JobState.canceled, 0),
    ]


def test_jobs_filter_and_limit(store: JobStore) -> None:
    """jobs lists rows in arrival order, filtered by state and limited."""
    a = add_job(store, "a.png")[0]
    b = add_job(store, "b.png")[0]
    c = add_job(store, "c.png")[0]
    store.mark_failed(b.id, "bad")
    assert [j.id for j in store.jobs()] == [a.id, b.id, c.id]
    assert [j.id for j in store.jobs(limit=2)] == [a.id, b.id]
    assert [j.id for j in store.jobs([JobState.queued])] == [a.id, c.id]
    assert [j.id for j in store.jobs([JobState.failed, JobState.done])] == [b.id]
    assert store.jobs([]) == []


def test_recent_failures_newest_first(store: JobStore, clock: SettableClock) -> None:
    """recent_failures lists failed and quarantined jobs, the newest first."""
    a = add_job(store, "a.png")[0]
    b = add_job(store, "b.png")[0]
    c = add_job(store, "c.png")[0]
    add_job(store, "d.png")
    store.mark_failed(c.id, "c broke")
    clock.advance(1)
    store.claim("w", 60)  # a
    store.recover(max_attempts=1)
    clock.advance(1)
    store.mark_failed(b.id, "b broke")
    assert [(j.input, j.state) for j in store.recent_failures()] == [
        ("b.png", JobState.failed),
        ("a.png", JobState.quarantined),
        ("c.png", JobState.failed),
    ]
    assert [j.id for j in store.recent_failures(limit=1)] == [b.id]
    assert a.id < b.id < c.id


def test_retry_by_input_and_state(store: JobStore) -> None:
    """retry requeues named inputs and whole states, counting each job once."""
    a = add_job(store, "a.png")[0]
    b = add_job(store, "b.png")[0]
    c = add_job(store, "c.png")[0]
    for job in (a, b, c):
        store.claim("w", 60)
        store.mark_failed(job.id, "bad")
    store.mark_done(c.id, seconds=1)
    count = store.retry(
        inputs=[(JOB_INBOX, "a.png"), (JOB_INBOX, "c.png")], states=[JobState.failed]
    )
    assert count == 3
    for job in (a, b, c):
        again = store.get(job.id)
        assert (again.state, again.attempts, again.error, again.force) == (
            JobState.queued,
            0,
            None,
            False,
        )
    assert store.retry(inputs=[(JOB_INBOX, "missing.png")]) == 0


def test_retry_force_and_live_lease(store: JobStore) -> None:
    """retry --force sets the flag; a job running under a live lease is not touched."""
    a = add_job(store, "a.png")[0]
    b = add_job(store, "b.png")[0]
    store.mark_done(a.id, seconds=1)
    store.claim("w", 60)  # b
    assert store.retry(inputs=[(JOB_INBOX, "a.png"), (JOB_INBOX, "b.png")], force=True) == 1
    assert store.get(a.id).force
    assert store.get(b.id).state is JobState.running
    assert not store.requeue(b.id)


def test_requeue_quarantined(store: JobStore) -> None:
    """requeue releases a quarantined job with a fresh attempt count."""
    job, _ = add_job(store)
    store.claim("w", 60)
    store.recover(max_attempts=1)
    assert store.requeue(job.id, force=True)
    again = store.get(job.id)
    assert (again.state, again.attempts, again.error, again.force) == (
        JobState.queued,
        0,
        None,
        True,
    )


def test_each_claim_takes_a_new_fencing_number(store: JobStore, clock: SettableClock) -> None:
    """Claims get increasing numbers, a job's next claim a higher one than its last."""
    a = add_job(store, "a.png")[0]
    add_job(store, "b.png")
    first = store.claim("w1", 60)
    second = store.claim("w2", 60)
    assert first is not None and second is not None
    assert 0 < first.claim < second.claim
    clock.advance(61)
    store.recover(max_attempts=5)
    again = store.claim("w3", 60)
    assert again is not None and again.id == a.id
    assert again.claim > second.claim


def test_writes_under_a_lost_claim_are_refused(store: JobStore, clock: SettableClock) -> None:
    """After a job was reclaimed, every write naming the old claim changes nothing."""
    job, _ = add_job(store)
    old = store.claim("frozen", 60)
    assert old is not None and store.holds(job.id, old.claim)
    clock.advance(61)  # the frozen worker's lease runs out; another takes the job over
    store.recover(max_attempts=5)
    new = store.claim("w2", 60)
    assert new is not None and new.claim != old.claim
    assert not store.holds(job.id, old.claim)
    assert not store.set_progress(job.id, 1, 2, "step 1/2", claim=old.claim)
    assert not store.update_identity(job.id, "fpX", "keyX", "/srv/outbox/x", claim=old.claim)
    assert not store.renew_lease(job.id, "frozen", 60, claim=old.claim)
    assert not store.mark_done(job.id, seconds=1.0, claim=old.claim)
    assert not store.mark_failed(job.id, "bad", claim=old.claim)
    assert not store.mark_waiting(job.id, "later", claim=old.claim)
    assert not store.mark_queued(job.id, claim=old.claim)
    assert not store.delete(job.id, claim=old.claim)
    assert not store.set_progress(job.id, 1, 2, "step 2/2", finished=[0], steps=2, claim=old.claim)
    assert not store.set_stage(job.id, AttemptStage.generating, claim=old.claim)
    assert not store.mark_canceled(job.id, "kept 1", claim=old.claim)
    assert store.get(job.id) == new
    assert store.attempts(job.id)[-1].stage is AttemptStage.preparing
    assert store.set_progress(job.id, 1, 2, "step 1/2", claim=new.claim)
    assert store.mark_done(job.id, seconds=2.0, claim=new.claim)
    assert store.get(job.id).state is JobState.done
    assert not store.holds(job.id, new.claim)


def test_writes_that_change_nothing_still_answer_for_the_claim(
    store: JobStore, clock: SettableClock
) -> None:
    """An identity or stage a claimed job already has is accepted under its live claim and
    refused under a lost one, as a write that changes something is."""
    job, _ = add_job(store, task="image", planned=[PlannedFile("a.png", 7)])
    old = store.claim("frozen", 60)
    assert old is not None
    same = (job.id, "fp1", "key1", "/srv/outbox/cat.png")
    planned = [PlannedFile("a.png", 7)]
    assert store.update_identity(*same, task="image", planned=planned, claim=old.claim)
    assert store.set_stage(job.id, AttemptStage.preparing, claim=old.claim)
    assert store.get(job.id) == old
    clock.advance(61)
    store.recover(max_attempts=5)
    new = store.claim("w2", 60)
    assert new is not None
    assert not store.update_identity(*same, task="image", planned=planned, claim=old.claim)
    assert not store.set_stage(job.id, AttemptStage.preparing, claim=old.claim)
    assert store.update_identity(*same, task="image", planned=planned, claim=new.claim)
    assert store.update_identity(job.id, "fp2", "key1", "/srv/outbox/cat.png", claim=new.claim)
    assert store.get(job.id).fingerprint == "fp2"


def test_a_cancel_reaches_the_live_claim_which_alone_ends_it(store: JobStore) -> None:
    """A cancel of a running job only asks (no claim needed); the live claim's worker marks
    it canceled, and its furthest point and stage writes count under that claim."""
    job, _ = add_job(store)
    live = store.claim("w", 60)
    assert live is not None
    assert store.cancel(ids=[job.id]) == CancelResult((), (job.id,))
    assert store.get(job.id).cancel is CancelReason.requested
    assert store.set_stage(job.id, AttemptStage.generating, claim=live.claim)
    assert store.set_progress(job.id, 1, 3, "step 4/4", finished=[0], steps=4, claim=live.claim)
    assert store.mark_canceled(job.id, "1 of 3 outputs kept", claim=live.claim)
    done = store.get(job.id)
    assert (done.state, done.finished) == (JobState.canceled, (0,))
    last = store.attempts(job.id)[-1]
    assert (last.ended, last.stage, last.outputs) == (
        AttemptEnd.canceled,
        AttemptStage.generating,
        1,
    )


def test_claims_can_be_limited_to_inboxes(store: JobStore) -> None:
    """claim(inboxes=…) takes only jobs of those inboxes (the others' shares are missing)."""
    add_job(store, "a.png", inbox="/srv/elsewhere")
    b, _ = add_job(store, "b.png")
    assert store.claim("w", 60, inboxes=["/srv/nowhere"]) is None
    job = store.claim("w", 60, inboxes=[JOB_INBOX])
    assert job is not None and job.id == b.id


# --- queue control: cancel, priority, order -------------------------------------------------


def test_cancel_queued_and_waiting_at_once_running_by_request(store: JobStore) -> None:
    """A cancel ends queued and waiting jobs at once and only asks a running one to stop."""
    running = add_job(store, "run.png")[0]
    store.claim("w", 60)
    waiting = add_job(store, "wait.png")[0]
    assert store.claim("w", 60) == store.get(waiting.id)
    store.mark_waiting(waiting.id, "no model", retry_in=100)
    queued = add_job(store, "queued.png")[0]
    result = store.cancel(ids=[running.id, queued.id, waiting.id, 999])
    assert result == CancelResult((waiting.id, queued.id), (running.id,))
    for job_id in result.canceled:
        job = store.get(job_id)
        assert (job.state, job.cancel, job.error) == (
            JobState.canceled,
            CancelReason.requested,
            "canceled on request",
        )
    still = store.get(running.id)
    assert (still.state, still.cancel, still.lease_owner) == (
        JobState.running,
        CancelReason.requested,
        "w",
    )
    assert store.claim("w", 60) is None


def test_cancel_by_state_leaves_the_running_job_unless_named(store: JobStore) -> None:
    """cancel(states=[queued, waiting]) spares the running job; adding running asks it too."""
    first = add_job(store, "a.png")[0]
    store.claim("w", 60)
    second = add_job(store, "b.png")[0]
    result = store.cancel(states=[JobState.queued, JobState.waiting])
    assert result == CancelResult((second.id,), ())
    assert store.get(first.id).cancel is None
    result = store.cancel(states=[JobState.running], reason=CancelReason.removed)
    assert result == CancelResult((), (first.id,))
    assert store.get(first.id).cancel is CancelReason.removed


def test_mark_canceled_keeps_the_reason_and_a_retry_restores(store: JobStore) -> None:
    """A stopped running job is canceled with its reason and a note; retry requeues it."""
    job = add_job(store)[0]
    store.claim("w", 60)
    store.cancel(ids=[job.id], reason=CancelReason.removed)
    store.mark_canceled(job.id, "kept 2 of 4 outputs")
    canceled = store.get(job.id)
    assert (canceled.state, canceled.cancel, canceled.lease_owner) == (
        JobState.canceled,
        CancelReason.removed,
        None,
    )
    assert canceled.error == "canceled: its input was removed from the inbox (kept 2 of 4 outputs)"
    assert [j.id for j in store.recent_cancels()] == [job.id]
    assert store.retry(inputs=[(JOB_INBOX, "cat.png")]) == 1
    again = store.get(job.id)
    assert (again.state, again.cancel, again.error) == (JobState.queued, None, None)


def test_retry_takes_back_a_cancel_on_its_way(store: JobStore) -> None:
    """retry of a running job whose cancel was asked withdraws the request."""
    job = add_job(store)[0]
    store.claim("w", 60)
    store.cancel(ids=[job.id])
    store.retry(inputs=[(JOB_INBOX, "cat.png")])
    assert store.get(job.id).cancel is None


def test_a_job_that_ends_after_its_cancel_forgets_it(store: JobStore) -> None:
    """A cancel that came too late (the job finished) leaves the job done, without a cancel."""
    job = add_job(store)[0]
    store.claim("w", 60)
    store.cancel(ids=[job.id])
    store.mark_done(job.id, seconds=1.0)
    assert (store.get(job.id).state, store.get(job.id).cancel) == (JobState.done, None)


def test_recover_cancels_what_a_dead_process_was_asked_to_stop(store: JobStore) -> None:
    """A running job whose cancel was asked is canceled, not requeued, when its owner died."""
    job = add_job(store)[0]
    store.claim("dead:1", 60)
    store.cancel(ids=[job.id])
    assert store.recover(max_attempts=3) == (0, 0)
    assert store.get(job.id).state is JobState.canceled


def test_claims_take_the_highest_priority_then_arrival(store: JobStore) -> None:
    """Priority beats arrival; equal priorities go in arrival order; waiting jobs take part."""
    low = add_job(store, "low.png")[0]
    high = add_job(store, "high.png", priority=5)[0]
    also_high = add_job(store, "also.png", priority=5)[0]
    assert [j.id for j in store.queue()] == [high.id, also_high.id, low.id]
    order = []
    while (job := store.claim("w", 60)) is not None:
        order.append(job.id)
    assert order == [high.id, also_high.id, low.id]


def test_upsert_keeps_a_commanded_priority_until_the_input_changes(store: JobStore) -> None:
    """An unchanged input keeps the priority a command gave it; a changed one starts over
    at the sidecar's priority."""
    job = add_job(store, priority=1)[0]
    store.set_priority(job.id, 9)
    assert add_job(store, priority=1)[0].priority == 9
    changed, requeued = add_job(store, fingerprint="fp2", priority=1)
    assert requeued and changed.priority == 1


def test_move_to_top_makes_the_job_the_next_claimed(store: JobStore) -> None:
    """top takes the highest runnable priority and the first place; bottom the opposite."""
    a = add_job(store, "a.png")[0]
    b = add_job(store, "b.png", priority=3)[0]
    c = add_job(store, "c.png")[0]
    moved = store.move(c.id, to="top")
    assert moved.priority == 3
    assert [j.id for j in store.queue()] == [c.id, b.id, a.id]
    store.move(c.id, to="bottom")
    assert [j.id for j in store.queue()] == [b.id, a.id, c.id]
    assert store.move(c.id, to="bottom").position == store.get(c.id).position
    top = store.move(a.id, to="top")
    claimed = store.claim("w", 60)
    assert claimed is not None and claimed.id == top.id == a.id


def test_move_before_places_between_neighbours(store: JobStore) -> None:
    """before=other puts a job just ahead of other, at other's priority, repeatedly."""
    jobs = [add_job(store, f"{n}.png")[0] for n in "abcd"]
    a, b, c, d = (j.id for j in jobs)
    store.move(d, before=b)
    assert [j.id for j in store.queue()] == [a, d, b, c]
    store.move(c, before=b)
    store.move(a, before=c)
    assert [j.id for j in store.queue()] == [d, a, c, b]
    store.set_priority(b, 2)
    store.move(d, before=b)
    assert [j.id for j in store.queue()] == [d, b, a, c]
    assert store.get(d).priority == 2
    with pytest.raises(JobNotFound):
        store.move(999, to="top")


def test_set_priority_returns_to_arrival_order(store: JobStore) -> None:
    """set_priority forgets a moved position: the job takes its arrival place."""
    a = add_job(store, "a.png")[0]
    b = add_job(store, "b.png")[0]
    store.move(b.id, to="top")
    store.set_priority(b.id, 0)
    assert [j.id for j in store.queue()] == [a.id, b.id]
    with pytest.raises(JobNotFound):
        store.set_priority(999, 1)


def test_plan_and_progress_are_recorded(store: JobStore) -> None:
    """The planned outputs come with the upsert; finished indices with the progress."""
    planned = [PlannedFile("cat-1.png", 1), PlannedFile("cat-2.png", 2)]
    job = add_job(store, task="variations", planned=planned)[0]
    assert (job.task, job.planned) == ("variations", tuple(planned))
    store.claim("w", 60)
    store.set_progress(job.id, 1, 2, "cat-2.png", finished=[1])
    store.set_progress(job.id, 1, 2, "step 1/3")
    (running,) = store.running()
    assert running.finished == (1,)
    store.update_identity(job.id, "fp", "k", "/o", planned=[PlannedFile("x.png", None)])
    assert store.get(job.id).planned == (PlannedFile("x.png", None),)
    assert store.active_in_folder(JOB_INBOX, "") == 1
    assert store.active_in_folder(JOB_INBOX, "a/") == 0
    add_job(store, "a/b.png")
    assert store.active_in_folder(JOB_INBOX, "a/") == 1
    assert store.active_folders() == {(JOB_INBOX, ""): 1, (JOB_INBOX, "a/"): 1}


def test_revision_changes_when_another_handle_commits(opener: Opener, clock: SettableClock) -> None:
    """revision() moves when another handle writes, and stays put otherwise."""
    with opener(clock) as watcher, opener(clock) as writer:
        before = watcher.revision()
        assert watcher.revision() == before
        add_job(writer)
        after = watcher.revision()
        assert after != before
        assert watcher.revision() == after


# --- attempts: how far each claim got, and which deaths count toward quarantine ---------------


def die_at(store: JobStore, job: Job, done: int, steps: int, total: int = 3) -> None:
    """Claim ``job``, reach (done, steps) of ``total`` outputs, and let its process die."""
    claimed = store.claim("dead:1", 60)
    assert claimed is not None and claimed.id == job.id
    store.set_progress(job.id, done, total, "")
    for step in range(1, steps + 1):
        store.set_progress(job.id, done, total, f"step {step}/20", steps=step)
    store.recover(max_attempts=3)


def test_a_claim_records_its_furthest_point(store: JobStore, clock: SettableClock) -> None:
    """A claim is an attempt at stage preparing; progress moves its furthest point forward
    only, a step makes it generating, and its note is the one at that point."""
    job, _ = add_job(store)
    clock.advance(1)
    store.claim("host:1", 60)
    (attempt,) = store.attempts(job.id)
    assert (attempt.number, attempt.owner, attempt.started_at, attempt.ended_at) == (
        1,
        "host:1",
        clock.now,
        None,
    )
    assert (attempt.ended, attempt.stage, attempt.point, attempt.counted) == (
        AttemptEnd.running,
        AttemptStage.preparing,
        (0, 0),
        False,
    )
    store.set_stage(job.id, AttemptStage.first_load)
    store.set_progress(job.id, 1, 3, "cat-1.png")
    assert store.attempts(job.id)[0].stage is AttemptStage.first_load
    store.set_progress(job.id, 1, 3, "step 2/20", steps=2)
    store.set_progress(job.id, 1, 3, "step 1/20", steps=1)  # an out-of-memory retry restarts
    (attempt,) = store.attempts(job.id)
    assert (attempt.stage, attempt.point, attempt.total, attempt.note) == (
        AttemptStage.generating,
        (1, 2),
        3,
        "step 2/20",
    )
    assert store.get(job.id).progress_note == "step 1/20"  # the status shows the latest


def test_deaths_that_get_further_do_not_count(store: JobStore) -> None:
    """A job whose process dies at a later point each time is never quarantined; the first
    death is compared with where the claim started."""
    job, _ = add_job(store)
    points = [(0, 5), (0, 9), (1, 0), (1, 3), (2, 1), (2, 7)]
    for done, steps in points:
        die_at(store, job, done, steps)
    history = store.attempts(job.id)
    assert [a.counted for a in history] == [False] * 6
    assert [(a.ended, a.point) for a in history] == [(AttemptEnd.died, p) for p in points]
    again = store.get(job.id)
    assert (again.state, again.attempts) == (JobState.queued, 0)
    assert describe_attempts(history)[:2] == [
        "attempt 1: died at 0/3 outputs and 5 steps into the next"
        " (not counted: it got further than where it started)",
        "attempt 2: died at 0/3 outputs and 9 steps into the next"
        " (not counted: it got further than attempt 1)",
    ]


def test_deaths_at_the_same_point_quarantine(store: JobStore) -> None:
    """A job whose process dies at the same step each time is quarantined after max_attempts
    claims that got no further, with a message saying where; so is one that dies earlier
    than before. The first claim got further than where it started."""
    same, _ = add_job(store, "same.png")
    for _ in range(4):
        die_at(store, same, 1, 4)
    earlier, _ = add_job(store, "earlier.png")
    for steps in (6, 4, 2, 1):
        die_at(store, earlier, 0, steps)
    for job in (same, earlier):
        quarantined = store.get(job.id)
        assert (quarantined.state, quarantined.attempts) == (JobState.quarantined, 3)
        assert [a.counted for a in store.attempts(job.id)] == [False, True, True, True]
    assert store.get(same.id).error == (
        "quarantined: the process died 3 times without getting further (the last time at 1/3 "
        "outputs and 4 steps into the next); run dropforge retry /srv/inbox/same.png"
    )
    assert describe_attempts(store.attempts(earlier.id))[1:] == [
        "attempt 2: died at 0/3 outputs and 4 steps into the next (counted toward quarantine)",
        "attempt 3: died at 0/3 outputs and 2 steps into the next (counted toward quarantine)",
        "attempt 4: died at 0/3 outputs and 1 step into the next (counted toward quarantine)",
    ]


def test_a_death_loading_a_known_model_does_not_count(store: JobStore) -> None:
    """Dying while loading a model that loaded here before is not the job's doing; dying at a
    model's first load, or after it loaded and before the first step, is."""
    job, _ = add_job(store)
    for stage in (AttemptStage.first_load, AttemptStage.loading, AttemptStage.loading):
        store.claim("dead:1", 60)
        store.set_stage(job.id, stage)
        store.recover(max_attempts=3)
    store.claim("dead:1", 60)
    store.set_stage(job.id, AttemptStage.generating)
    store.recover(max_attempts=3)
    assert [a.counted for a in store.attempts(job.id)] == [True, False, False, True]
    assert store.get(job.id).attempts == 2
    assert describe_attempts(store.attempts(job.id)) == [
        "attempt 1: died while loading the model for the first time on this host"
        " (counted toward quarantine)",
        "attempt 2: died while loading the model"
        " (not counted: that model has loaded on this host before)",
        "attempt 3: died while loading the model"
        " (not counted: that model has loaded on this host before)",
        "attempt 4: died at 0/0 outputs (counted toward quarantine)",
    ]


def test_a_death_preparing_counts_until_a_claim_got_past_it(store: JobStore) -> None:
    """Dying before the generator was called counts while no claim of the job got further;
    once one did, that point is known to pass and such a death does not count."""
    job, _ = add_job(store)
    for stage in (AttemptStage.preparing, AttemptStage.first_load):
        store.claim("dead:1", 60)
        store.set_stage(job.id, stage)
        store.recover(max_attempts=3)
    store.claim("dead:1", 60)
    store.recover(max_attempts=3)
    assert [a.counted for a in store.attempts(job.id)] == [True, True, False]
    assert describe_attempts(store.attempts(job.id))[2] == (
        "attempt 3: died while preparing (not counted: an earlier claim got past preparing)"
    )
    assert store.get(job.id).state is JobState.queued


def test_every_end_of_a_claim_is_recorded(store: JobStore, clock: SettableClock) -> None:
    """Waiting, stopped, done and failed claims end their attempt; a stopped claim is what the
    next death is compared with, a waiting one is not."""
    job, _ = add_job(store)
    store.claim("w", 60)
    store.set_progress(job.id, 0, 2, "step 3/20", steps=3)
    store.mark_queued(job.id)  # stopped at (0, 3)
    store.claim("w", 60)
    store.mark_waiting(job.id, "disk below min_free_mb", retry_in=1)  # at (0, 0)
    clock.advance(1)
    die_at(store, job, 0, 2, total=2)  # earlier than the stopped claim: counts
    store.claim("w", 60)
    clock.advance(5)
    store.mark_done(job.id, seconds=5)
    history = store.attempts(job.id)
    assert [(a.ended, a.counted) for a in history] == [
        (AttemptEnd.stopped, False),
        (AttemptEnd.waiting, False),
        (AttemptEnd.died, True),
        (AttemptEnd.done, False),
    ]
    assert history[-1].ended_at == clock.now
    assert describe_attempts(history) == [
        "attempt 1: stopped at 0/2 outputs and 3 steps into the next",
        "attempt 2: sent to wait while preparing",
        "attempt 3: died at 0/2 outputs and 2 steps into the next (counted toward quarantine)",
        "attempt 4: done",
    ]
    other, _ = add_job(store, "other.png")
    store.claim("w", 60)
    store.mark_failed(other.id, "other.png: not an image")
    assert [a.ended for a in store.attempts(other.id)] == [AttemptEnd.failed]


def test_a_fresh_start_forgets_the_attempts(store: JobStore) -> None:
    """A requeue (retry, a changed input) starts the history over; a deleted job takes its
    history with it."""
    job, _ = add_job(store)
    die_at(store, job, 0, 1)
    store.claim("w", 60)
    store.mark_failed(job.id, "bad")
    assert len(store.attempts(job.id)) == 2
    assert store.retry(inputs=[(JOB_INBOX, "cat.png")]) == 1
    assert store.attempts(job.id) == []
    die_at(store, job, 0, 1)
    add_job(store, fingerprint="fp2")
    assert store.attempts(job.id) == []
    store.claim("w", 60)
    assert store.delete(job.id)
    again, _ = add_job(store)
    assert store.attempts(again.id) == []


def test_the_last_twenty_attempts_are_kept(store: JobStore, clock: SettableClock) -> None:
    """A job claimed again and again keeps its last twenty claims, and its last twenty that
    were cut short however many waits came after them."""
    job, _ = add_job(store)
    for _ in range(25):
        store.claim("w", 60)
        store.mark_queued(job.id)
    kept = [a.number for a in store.attempts(job.id)]
    assert kept[-20:] == list(range(6, 26)) and len(kept) <= 21
    for _ in range(30):
        store.claim("w", 60)
        store.mark_waiting(job.id, "a sync tool is delivering", retry_in=0)
    history = store.attempts(job.id)
    assert [a.number for a in history if a.ended is AttemptEnd.stopped] == list(range(6, 26))
    assert [a.number for a in history if a.ended is AttemptEnd.waiting] == list(range(36, 56))
