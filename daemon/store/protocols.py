"""The two seams of the journal, each a protocol its backends implement.

``JobStore`` holds the rows several hosts would share: jobs with their states, leases,
attempts and progress. ``ScanCache`` holds what only one host's view of the disk can know: the
stat → sha256 cache, parsed sidecars, output folder stamps, signatures of verified inputs and
folder marks. ``Journal`` is both, as the embedded SQLite file (``sqlite.SqliteJournal``)
provides them; a shared job store on another engine pairs with a local scan cache.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from daemon.store.rows import Attempt, CancelResult, FolderMark, Host, Job, JobDigest, PlannedFile
from daemon.values import AttemptStage, CancelReason, Clock, JobState


class JobStore(Protocol):
    """Jobs and their life cycle:
    ``queued → running → done | failed | waiting | quarantined | canceled``.

    Times come from ``clock``. A claim leases a job to an owner; only writes that the
    protocol names may change a job another owner holds under a live lease (a cancel only
    asks: the owner's worker stops the job and marks it canceled). Claims take the highest
    priority first, then the position (arrival, unless the job was moved). Each claim is an
    attempt, recorded until the job is requeued: how it ended and how far it got.

    Each claim also takes a fencing number (``Job.claim``) from an ever-growing sequence.
    Every write a worker makes of its claimed job accepts ``claim=``: the write happens only
    while that claim is the job's live one, and False says it was refused (the claim was
    lost to another worker: the caller writes nothing more). Without ``claim`` the write is
    unconditional (one process, or a person's command).
    """

    clock: Clock

    def upsert_job(
        self,
        *,
        inbox: str,
        input: str,
        kind: str,
        fingerprint: str,
        job_key: str,
        out_dir: str,
        force: bool = False,
        deps: Iterable[str] = (),
        priority: int = 0,
        task: str = "",
        planned: Sequence[PlannedFile] = (),
    ) -> tuple[Job, bool]:
        """Queue a job for an input; return it and whether it was (re)queued.

        An unchanged row is left alone unless ``force``; a changed fingerprint or job key
        starts it over (at ``priority``, with its plan). A running job under a live lease is
        never touched.
        """
        ...

    def update_identity(
        self,
        job_id: int,
        fingerprint: str,
        job_key: str,
        out_dir: str,
        *,
        task: str | None = None,
        planned: Sequence[PlannedFile] | None = None,
        claim: int | None = None,
    ) -> bool:
        """Record what a claimed job is actually about to do (its inputs may have changed)."""
        ...

    def get_job(self, inbox: str, input: str) -> Job | None:
        """The job of one input, or None."""
        ...

    def get(self, job_id: int) -> Job:
        """The job with this id; ``JobNotFound`` (a LookupError) when there is none."""
        ...

    def job_digests(self, inbox: str) -> dict[str, JobDigest]:
        """input → the compared columns of its job, for every job of one inbox."""
        ...

    def delete(self, job_id: int, *, claim: int | None = None) -> bool:
        """Remove a job row (its input left the inbox); True when there was one."""
        ...

    def requeue(self, job_id: int, *, force: bool = False) -> bool:
        """Put a job back to queued with a fresh attempt count; False if it is leased or gone."""
        ...

    def claim(
        self, owner: str, lease_seconds: float, *, inboxes: Collection[str] | None = None
    ) -> Job | None:
        """Take the first runnable job (queued, or waiting and due) and lease it to owner,
        with a new fencing number (``Job.claim``); only jobs of ``inboxes`` when given. The
        claim is its next attempt (``attempts``), at stage preparing."""
        ...

    def holds(self, job_id: int, claim: int) -> bool:
        """Whether ``claim`` is still the live claim of a running job (checked before every
        output is renamed into place)."""
        ...

    def renew_lease(
        self, job_id: int, owner: str, lease_seconds: float, *, claim: int | None = None
    ) -> bool:
        """Extend owner's lease on a running job; False when owner no longer holds it."""
        ...

    def mark_done(self, job_id: int, *, seconds: float, claim: int | None = None) -> bool:
        """The job's outputs are complete (and its force flag spent)."""
        ...

    def mark_failed(self, job_id: int, error: str, *, claim: int | None = None) -> bool:
        """The input is bad; terminal until the input or its sidecar changes."""
        ...

    def mark_waiting(
        self,
        job_id: int,
        error: str,
        *,
        retry_in: float | None = None,
        claim: int | None = None,
    ) -> bool:
        """The cause is outside the input: retry later (default: exponential backoff); a
        claim that ends here does not count toward attempts."""
        ...

    def mark_queued(self, job_id: int, *, claim: int | None = None) -> bool:
        """A stop interrupted the job: queue it again without counting the claim."""
        ...

    def recover(
        self,
        max_attempts: int,
        *,
        alive: Callable[[str], bool] | None = None,
        spare: str | None = None,
    ) -> tuple[int, int]:
        """Requeue running jobs that no process runs any more; quarantine crash loops; return
        (requeued, quarantined). ``alive(owner)`` tells whether a lease owner still runs;
        the jobs of owner ``spare`` are left alone.

        Each such claim ends as ``died``; it counts toward ``max_attempts`` by the rule of
        ``store.attempts`` (not when it got further than the claim before, or died loading a
        model that loads here), and the message of a quarantined job says where it died."""
        ...

    def set_progress(
        self,
        job_id: int,
        done: int,
        total: int,
        note: str = "",
        *,
        finished: Iterable[int] | None = None,
        steps: int = 0,
        claim: int | None = None,
    ) -> bool:
        """Record how far a running job has come (shown by ``dropforge status``): ``done``
        outputs finished of ``total`` (``finished``: the indices of its planned outputs
        finished so far) and ``steps`` denoising steps since the last finished one. The
        running attempt keeps the furthest such point (and its note); a step means the
        attempt is generating."""
        ...

    def set_stage(self, job_id: int, stage: AttemptStage, *, claim: int | None = None) -> bool:
        """Record where the running attempt of a job stands before its first step."""
        ...

    def attempts(self, job_id: int) -> list[Attempt]:
        """Every claim of a job since it was last (re)queued, oldest first: the last 20, and
        the last 20 that died or were stopped."""
        ...

    def cancel(
        self,
        *,
        ids: Iterable[int] = (),
        states: Iterable[JobState] = (),
        reason: CancelReason = CancelReason.requested,
    ) -> CancelResult:
        """Cancel the jobs named by id and every job in ``states``: queued and waiting ones at
        once; running ones are asked to stop (their ``cancel`` is set). Others are left."""
        ...

    def mark_canceled(self, job_id: int, note: str = "", *, claim: int | None = None) -> bool:
        """A running job stopped for its cancel: canceled, terminal until its input changes."""
        ...

    def set_priority(self, job_id: int, priority: int) -> Job:
        """Give a job a priority (its arrival place among that priority's jobs)."""
        ...

    def move(
        self,
        job_id: int,
        *,
        to: Literal["top", "bottom"] | None = None,
        before: int | None = None,
    ) -> Job:
        """Make a job the first (``top``) or last (``bottom``) runnable job, or place it just
        before job ``before``, changing its priority as needed; JobNotFound when gone."""
        ...

    def queue(self, limit: int = 100) -> list[Job]:
        """Queued jobs in the order they will be claimed."""
        ...

    def revision(self) -> int:
        """A number that changes whenever another handle on the store (another process, or
        in a cluster another host) commits a change."""
        ...

    def counts(self) -> dict[JobState, int]:
        """Number of jobs in every state, zeros included."""
        ...

    def count(self, state: JobState) -> int:
        """Number of jobs in one state."""
        ...

    def jobs(self, states: Iterable[JobState] | None = None, limit: int = 100) -> list[Job]:
        """Jobs in arrival order, optionally only those in the given states."""
        ...

    def recent_failures(self, limit: int = 10) -> list[Job]:
        """Failed and quarantined jobs, newest first."""
        ...

    def recent_cancels(self, limit: int = 10) -> list[Job]:
        """Canceled jobs, newest first."""
        ...

    def running(self) -> list[Job]:
        """Jobs in state running, in arrival order."""
        ...

    def retry(
        self,
        *,
        inputs: Iterable[tuple[str, str]] = (),
        states: Iterable[JobState] = (),
        force: bool = False,
    ) -> int:
        """Requeue the named (inbox, input) jobs and every job in ``states``; return how many.

        ``force`` makes the worker regenerate even when the outputs look complete.
        """
        ...

    def active_folders(self, limit: int = 1000) -> dict[tuple[str, str], int]:
        """(inbox, folder) → jobs queued, running or waiting there (drops in progress)."""
        ...

    def active_in_folder(self, inbox: str, folder: str) -> int:
        """Jobs queued, running or waiting whose input lies directly in ``folder`` ("" or
        "a/b/") of ``inbox``."""
        ...

    def prune_jobs(
        self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists
    ) -> int:
        """Forget done and canceled jobs untouched for ``older_than`` seconds whose input has
        left the inbox; return how many."""
        ...


class ScanCache(Protocol):
    """What this host learnt about its view of the disk, so that rescans read as little as
    possible. Losing it costs time, never correctness."""

    clock: Clock

    def hash_file(self, path: Path) -> str:
        """The sha256 of a file, read only when its stat (size, mtime, inode) is not cached;
        raises ``FileChangedError`` when it changed while read, FileNotFoundError when gone."""
        ...

    def cached_hash(self, path: Path, st: os.stat_result) -> str | None:
        """The cached sha256 of ``path`` if its size, mtime and inode still match ``st``."""
        ...

    def cached_hashes(self) -> dict[str, tuple[int, int, str, str]]:
        """The whole stat cache: path → (size, mtime_ns, inode, sha256), for a bulk rescan."""
        ...

    def touch_files(self, paths: Iterable[str]) -> None:
        """Mark cached files as seen now (what keeps them from pruning)."""
        ...

    def cached_table(
        self, path: str, parse: Callable[[str], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """A small TOML file's parsed table, re-read only when its stat changed."""
        ...

    def model_loaded(self, model: str) -> bool:
        """Whether the model ``model`` describes (source, device, files) loaded here before."""
        ...

    def note_model_loaded(self, model: str) -> None:
        """Record that the model ``model`` describes loaded on this host."""
        ...

    def output_stamp(self, out_dir: str, job_key: str) -> str | None:
        """The stamp recorded when ``out_dir`` last held the complete outputs of ``job_key``."""
        ...

    def output_stamps(self) -> dict[str, tuple[str, str]]:
        """Every recorded output folder stamp: out_dir → (job_key, stamp)."""
        ...

    def set_output_stamps(self, stamps: Iterable[tuple[str, str, str | None]]) -> None:
        """Record (out_dir, job_key, stamp) triples; a None stamp forgets."""
        ...

    def verified_signatures(self, inbox: str) -> dict[str, str]:
        """input → the signature recorded when it was last verified done, for one inbox."""
        ...

    def set_verified_signatures(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Record (inbox, input, signature) triples."""
        ...

    def folder_marks(self, inbox: str) -> dict[str, FolderMark]:
        """folder → its mark, for every marked folder of one inbox."""
        ...

    def set_folder_marks(self, marks: Iterable[tuple[str, FolderMark, dict[str, str]]]) -> None:
        """Record (inbox, mark, input → fingerprint), each mark only if the job of every input
        it vouches for is still done with the fingerprint that was verified."""
        ...

    def prune_cache(
        self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists
    ) -> int:
        """Forget rows unseen for ``older_than`` seconds whose file is gone; return how many."""
        ...


class Journal(JobStore, ScanCache, Protocol):
    """A job store and this host's scan cache, opened together and closed together."""

    def prune(self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists) -> int:
        """``prune_jobs``, then ``prune_cache``; return how many rows went in all."""
        ...

    def close(self) -> None:
        """Release the connections; the journal cannot be used afterwards."""
        ...

    def __enter__(self) -> Journal: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class HostRegistry(Protocol):
    """The hosts of a cluster sharing one job store: heartbeat rows, shared settings, wake-ups."""

    host_timeout: float

    def join(
        self,
        owner: str,
        *,
        host: str,
        pid: int,
        device: str,
        version: str,
        settings: Mapping[str, str],
    ) -> None:
        """Register a worker process; raise ConfigError (naming the keys) when its settings
        differ from those of the cluster's live hosts."""
        ...

    def beat(self, owner: str, *, device: str, job_id: int | None, job_input: str | None) -> bool:
        """The process is alive; False when its row is gone (it must join again)."""
        ...

    def leave(self, owner: str) -> None:
        """The process stops."""
        ...

    def hosts(self, *, live_only: bool = True) -> list[Host]:
        """The cluster's worker processes."""
        ...

    def forget_hosts(self, older_than: float) -> int:
        """Delete rows of hosts silent for ``older_than`` seconds."""
        ...

    def listen(self, on_wake: Callable[[], None], stop: threading.Event) -> None:
        """Block, calling ``on_wake`` whenever a job became runnable, until ``stop`` is set."""
        ...
