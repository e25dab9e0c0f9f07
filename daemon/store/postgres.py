"""The jobs of a cluster in PostgreSQL: states, leases, fencing numbers, progress
(see ``protocols.JobStore``).

Claims take the oldest runnable row with ``FOR UPDATE SKIP LOCKED``, so hosts claiming at
once never wait on each other nor take the same job, and give it a fencing number from a
sequence; every later write of a worker names that number. Whatever makes a job runnable
sends a ``NOTIFY`` in its transaction, which wakes idle hosts.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from daemon.errors import JobNotFound
from daemon.store.pg_base import PostgresDatabase
from daemon.store.pg_schema import CHANNEL, CLAIMS, HOSTS, JOB_COLUMNS, JOBS, LOCK_PRUNE
from daemon.store.portable import OUTPUT
from daemon.store.rows import Job, JobDigest, backoff
from daemon.values import JobState

_REQUEUE_SET = """state = 'queued', attempts = 0, waits = 0, error = NULL, not_before = NULL,
    lease_owner = NULL, lease_expires = NULL, progress_done = 0, progress_total = 0,
    progress_note = '', updated_at = {now}"""
_NOT_LEASED = "NOT (state = 'running' AND coalesce(lease_expires, 0) > {now})"
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"


def _fence(claim: int | None) -> str:
    return "" if claim is None else " AND state = 'running' AND claim = %(claim)s"


def folder_of(input: str) -> str:
    """The folder an input lies in: "" or "a/b/" (what folder marks are kept for)."""
    head, sep, _ = input.rpartition("/")
    return head + sep


class PostgresJobStore(PostgresDatabase):
    """The shared jobs table."""

    # --- translating rows ---------------------------------------------------------------

    def _job(self, row: dict[str, Any]) -> Job:
        name = row["inbox"]
        values = {k: row[k] for k in JOB_COLUMNS.replace(" ", "").split(",")}
        values["inbox"] = self.paths.inbox_path(name)
        values["out_dir"] = self.paths.out_dir_path(name, row["out_dir"])
        values["state"] = JobState(row["state"])
        values["deps"] = tuple(self.paths.deps_paths(name, json.loads(row["deps"])))
        values["claim"] = int(row["claim"])
        return Job(**values)

    def _jobs(self, rows: Iterable[dict[str, Any]]) -> list[Job]:
        return [self._job(r) for r in rows]

    # --- queueing -----------------------------------------------------------------------

    def job_digests(self, inbox: str) -> dict[str, JobDigest]:
        """input → the compared columns of its job, for every job of one inbox."""
        rows = self._query(
            f"SELECT input, id, fingerprint, deps, force, state, out_dir, job_key FROM {JOBS}"
            " WHERE inbox = %(inbox)s",
            {"inbox": self.paths.inbox_name(inbox)},
        )
        name = self.paths.inbox_name(inbox)
        return {
            r["input"]: JobDigest(
                r["id"],
                r["fingerprint"],
                r["deps"]
                if OUTPUT not in r["deps"]
                else json.dumps(self.paths.deps_paths(name, json.loads(r["deps"]))),
                bool(r["force"]),
                r["state"],
                self.paths.out_dir_path(name, r["out_dir"]),
                r["job_key"],
            )
            for r in rows
        }

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
    ) -> tuple[Job, bool]:
        """Queue a job for an input; return it and whether it was (re)queued."""
        args = {
            "inbox": self.paths.inbox_name(inbox),
            "input": input,
            "folder": folder_of(input),
            "kind": kind,
            "fingerprint": fingerprint,
            "job_key": job_key,
            "out_dir": self.paths.out_dir_name(inbox, out_dir),
            "force": force,
            "deps": json.dumps(self.paths.deps_names(inbox, deps)),
        }
        # A new input (the common case): one statement inserts it and notifies idle hosts.
        inserted = self._query(
            f"WITH new AS (INSERT INTO {JOBS} (inbox, input, folder, kind, fingerprint,"
            " job_key, out_dir, state, created_at, updated_at, force, deps) VALUES (%(inbox)s,"
            " %(input)s, %(folder)s, %(kind)s, %(fingerprint)s, %(job_key)s, %(out_dir)s,"
            " 'queued', {now}, {now}, %(force)s, %(deps)s) ON CONFLICT (inbox, input)"
            f" DO NOTHING RETURNING *) SELECT new.*, pg_notify('{CHANNEL}', '') FROM new",
            args,
        )
        if inserted:
            return self._job(inserted[0]), True
        select = (
            f"SELECT *, {{now}} AS now_ FROM {JOBS} WHERE inbox = %(inbox)s AND input = %(input)s"
            " FOR UPDATE"
        )
        with self._tx() as db:
            row = self._run(db, select, args).fetchone()
            if row is None:  # a new input: insert (unless another host just did)
                new = self._run(
                    db,
                    f"INSERT INTO {JOBS} (inbox, input, folder, kind, fingerprint, job_key,"
                    " out_dir, state, created_at, updated_at, force, deps) VALUES (%(inbox)s,"
                    " %(input)s, %(folder)s, %(kind)s, %(fingerprint)s, %(job_key)s, %(out_dir)s,"
                    " 'queued', {now}, {now}, %(force)s, %(deps)s)"
                    " ON CONFLICT (inbox, input) DO NOTHING RETURNING *",
                    args,
                ).fetchone()
                if new is not None:
                    db.execute(_NOTIFY)
                    return self._job(new), True
                row = self._run(db, select, args).fetchone()  # another host inserted it
                assert row is not None
            job = self._job(row)
            same = job.fingerprint == fingerprint and job.job_key == job_key
            leased = job.state is JobState.running and (job.lease_expires or 0.0) > row["now_"]
            already_forced = job.state is JobState.queued and job.force
            if leased or (same and (not force or already_forced)):
                return job, False
            new = self._run(
                db,
                f"UPDATE {JOBS} SET {_REQUEUE_SET}, kind = %(kind)s,"
                " fingerprint = %(fingerprint)s, job_key = %(job_key)s, out_dir = %(out_dir)s,"
                " force = %(force)s, deps = %(deps)s, started_at = NULL, finished_at = NULL,"
                " seconds = NULL WHERE id = %(id)s RETURNING *",
                {**args, "id": job.id},
            ).fetchone()
            db.execute(_NOTIFY)
            return self._job(new), True

    def update_identity(
        self, job_id: int, fingerprint: str, job_key: str, out_dir: str, *, claim: int | None = None
    ) -> bool:
        """Record what a claimed job is actually about to do (its inputs may have changed)."""
        sql = (
            f"UPDATE {JOBS} SET fingerprint = %(fp)s, job_key = %(key)s,"
            " out_dir = coalesce(%(outs)s::jsonb ->> inbox, %(out)s), updated_at = {now}"
            f" WHERE id = %(id)s{_fence(claim)}"
        )
        args = {
            "fp": fingerprint,
            "key": job_key,
            "outs": json.dumps(self.paths.out_dir_names(out_dir)),
            "out": out_dir,
            "id": job_id,
            "claim": claim,
        }
        return self._exec(sql, args) > 0

    def get_job(self, inbox: str, input: str) -> Job | None:
        """The job of one input, or None."""
        rows = self._query(
            f"SELECT * FROM {JOBS} WHERE inbox = %(inbox)s AND input = %(input)s",
            {"inbox": self.paths.inbox_name(inbox), "input": input},
        )
        return self._job(rows[0]) if rows else None

    def get(self, job_id: int) -> Job:
        """The job with this id; JobNotFound (a LookupError) when there is none."""
        rows = self._query(f"SELECT * FROM {JOBS} WHERE id = %(id)s", {"id": job_id})
        if not rows:
            raise JobNotFound(job_id)
        return self._job(rows[0])

    def delete(self, job_id: int, *, claim: int | None = None) -> bool:
        """Remove a job row (its input left the inbox); True when there was one."""
        sql = f"DELETE FROM {JOBS} WHERE id = %(id)s{_fence(claim)}"
        return self._exec(sql, {"id": job_id, "claim": claim}) > 0

    def requeue(self, job_id: int, *, force: bool = False) -> bool:
        """Put a job back to queued with a fresh attempt count; False if it is leased or gone."""
        with self._tx() as db:
            return bool(self._requeue(db, "id = %(id)s", {"id": job_id}, force))

    def _requeue(self, db: Any, where: str, args: dict[str, Any], force: bool) -> set[int]:
        rows = self._run(
            db,
            f"UPDATE {JOBS} SET {_REQUEUE_SET}, force = force OR %(force)s"
            f" WHERE ({where}) AND {_NOT_LEASED} RETURNING id",
            {**args, "force": force},
        ).fetchall()
        if rows:
            db.execute(_NOTIFY)
        return {int(r["id"]) for r in rows}

    def retry(
        self,
        *,
        inputs: Iterable[tuple[str, str]] = (),
        states: Iterable[JobState] = (),
        force: bool = False,
    ) -> int:
        """Requeue the named (inbox, input) jobs and every job in ``states``; return how many."""
        done: set[int] = set()
        with self._tx() as db:
            for inbox, input in inputs:
                where = "inbox = %(inbox)s AND input = %(input)s"
                args = {"inbox": self.paths.inbox_name(inbox), "input": input}
                done |= self._requeue(db, where, args, force)
            for state in states:
                done |= self._requeue(db, "state = %(state)s", {"state": state.value}, force)
        return len(done)

    # --- claims and their writes --------------------------------------------------------

    def claim(
        self, owner: str, lease_seconds: float, *, inboxes: Collection[str] | None = None
    ) -> Job | None:
        """Take the oldest runnable job (queued, or waiting and due) and lease it to owner,
        with a new fencing number; only jobs of ``inboxes`` when given."""
        only = "" if inboxes is None else " AND inbox = ANY(%(inboxes)s)"
        args = {
            "owner": owner,
            "lease": lease_seconds,
            "inboxes": self.paths.names(inboxes or ()),
        }
        # One statement (its own transaction): a claim costs one round trip.
        rows = self._query(
            f"WITH next AS (SELECT id FROM {JOBS} WHERE state IN ('queued', 'waiting')"
            " AND (state = 'queued' OR coalesce(not_before, 0) <= {now})"
            f"{only} ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            f" UPDATE {JOBS} j SET state = 'running', attempts = attempts + 1,"
            " lease_owner = %(owner)s, lease_expires = {now} + %(lease)s,"
            " started_at = {now}, finished_at = NULL, seconds = NULL, progress_done = 0,"
            " progress_total = 0, progress_note = '', updated_at = {now},"
            f" claim = nextval('{CLAIMS}') FROM next WHERE j.id = next.id RETURNING j.*",
            args,
        )
        return self._job(rows[0]) if rows else None

    def holds(self, job_id: int, claim: int) -> bool:
        """Whether ``claim`` is still the live claim of a running job."""
        rows = self._query(
            f"SELECT 1 FROM {JOBS} WHERE id = %(id)s AND state = 'running' AND claim = %(claim)s",
            {"id": job_id, "claim": claim},
        )
        return bool(rows)

    def renew_lease(
        self, job_id: int, owner: str, lease_seconds: float, *, claim: int | None = None
    ) -> bool:
        """Extend owner's lease on a running job; False when owner no longer holds it."""
        return (
            self._exec(
                f"UPDATE {JOBS} SET lease_expires = {{now}} + %(lease)s, updated_at = {{now}}"
                " WHERE id = %(id)s AND state = 'running' AND lease_owner = %(owner)s"
                f"{_fence(claim)}",
                {"lease": lease_seconds, "id": job_id, "owner": owner, "claim": claim},
            )
            > 0
        )

    def mark_done(self, job_id: int, *, seconds: float, claim: int | None = None) -> bool:
        """The job's outputs are complete."""
        return self._finish(job_id, "done", None, seconds, claim)

    def mark_failed(self, job_id: int, error: str, *, claim: int | None = None) -> bool:
        """The input is bad; terminal until the input or its sidecar changes."""
        return self._finish(job_id, "failed", error, None, claim)

    def _finish(
        self, job_id: int, state: str, error: str | None, seconds: float | None, claim: int | None
    ) -> bool:
        sql = (
            f"UPDATE {JOBS} SET state = %(state)s, error = %(error)s, seconds = %(seconds)s,"
            " finished_at = {now}, updated_at = {now}, not_before = NULL, lease_owner = NULL,"
            f" lease_expires = NULL, force = false WHERE id = %(id)s{_fence(claim)}"
        )
        args = {"state": state, "error": error, "seconds": seconds, "id": job_id, "claim": claim}
        return self._exec(sql, args) > 0

    def mark_waiting(
        self,
        job_id: int,
        error: str,
        *,
        retry_in: float | None = None,
        claim: int | None = None,
    ) -> bool:
        """The cause is outside the input: retry later (default: exponential backoff)."""
        with self._tx() as db:
            row = db.execute(
                f"SELECT waits FROM {JOBS} WHERE id = %s FOR UPDATE", (job_id,)
            ).fetchone()
            if row is None:
                return False
            delay = backoff(row["waits"]) if retry_in is None else retry_in
            return bool(
                self._run(
                    db,
                    f"UPDATE {JOBS} SET state = 'waiting', error = %(error)s,"
                    " not_before = {now} + %(delay)s, waits = waits + 1, attempts = CASE"
                    " WHEN state = 'running' THEN greatest(attempts - 1, 0) ELSE attempts END,"
                    " lease_owner = NULL, lease_expires = NULL, updated_at = {now}"
                    f" WHERE id = %(id)s{_fence(claim)}",
                    {"error": error, "delay": delay, "id": job_id, "claim": claim},
                ).rowcount
            )

    def mark_queued(self, job_id: int, *, claim: int | None = None) -> bool:
        """A stop interrupted the job: queue it again without counting the claim."""
        with self._tx() as db:
            changed = self._run(
                db,
                f"UPDATE {JOBS} SET state = 'queued', not_before = NULL, attempts = CASE"
                " WHEN state = 'running' THEN greatest(attempts - 1, 0) ELSE attempts END,"
                " lease_owner = NULL, lease_expires = NULL, updated_at = {now}"
                f" WHERE id = %(id)s{_fence(claim)}",
                {"id": job_id, "claim": claim},
            ).rowcount
            if changed:
                db.execute(_NOTIFY)
            return bool(changed)

    def set_progress(
        self, job_id: int, done: int, total: int, note: str = "", *, claim: int | None = None
    ) -> bool:
        """Record how far a running job has come (shown by ``dropforge status``)."""
        sql = (
            f"UPDATE {JOBS} SET progress_done = %(done)s, progress_total = %(total)s,"
            f" progress_note = %(note)s, updated_at = {{now}} WHERE id = %(id)s{_fence(claim)}"
        )
        args = {"done": done, "total": total, "note": note, "id": job_id, "claim": claim}
        return self._exec(sql, args) > 0

    def recover(
        self,
        max_attempts: int,
        *,
        alive: Callable[[str], bool] | None = None,
        spare: str | None = None,
    ) -> tuple[int, int]:
        """Requeue running jobs that no process runs any more; quarantine crash loops.

        A job's owner is dead when ``alive`` is not given, when ``alive(owner)`` says so
        (this host's own processes), when its lease ran out, or when the owner's host row
        has not beaten for ``host_timeout`` seconds (another host died). Rows other hosts
        are recovering right now are skipped.
        """
        # Look without locking first: only the rows of dead owners are locked and changed,
        # so the writes of live workers never wait on a reclaim check.
        found = self._query(
            f"SELECT j.id, j.lease_owner, j.lease_expires, h.beat_at, {{now}} AS now_"
            f" FROM {JOBS} j LEFT JOIN {HOSTS} h ON h.owner = j.lease_owner"
            " WHERE j.state = 'running'"
        )
        suspects = [(r["id"], r["lease_owner"]) for r in found if self._dead(r, alive, spare)]
        if not suspects:
            return 0, 0
        with self._tx() as db:
            dead = [
                r
                for r in self._run(
                    db,
                    f"SELECT id, inbox, input, attempts, lease_owner FROM {JOBS}"
                    " WHERE id = ANY(%(ids)s) AND state = 'running' FOR UPDATE SKIP LOCKED",
                    {"ids": [i for i, _ in suspects]},
                ).fetchall()
                if (r["id"], r["lease_owner"]) in set(suspects)
            ]
            doomed = [r for r in dead if r["attempts"] >= max_attempts]
            for r in doomed:
                retry_path = shlex.quote(str(Path(self.paths.inbox_path(r["inbox"])) / r["input"]))
                error = (
                    f"quarantined: {r['attempts']} claims never finished (the process died "
                    f"each time); run dropforge retry {retry_path}"
                )
                self._run(
                    db,
                    f"UPDATE {JOBS} SET state = 'quarantined', error = %(error)s,"
                    " finished_at = {now}, updated_at = {now}, lease_owner = NULL,"
                    " lease_expires = NULL WHERE id = %(id)s",
                    {"error": error, "id": r["id"]},
                )
            doomed_ids = {r["id"] for r in doomed}
            requeue = [r["id"] for r in dead if r["id"] not in doomed_ids]
            if requeue:
                self._run(
                    db,
                    f"UPDATE {JOBS} SET state = 'queued', lease_owner = NULL,"
                    " lease_expires = NULL, updated_at = {now} WHERE id = ANY(%(ids)s)",
                    {"ids": requeue},
                )
                db.execute(_NOTIFY)
        return len(requeue), len(doomed)

    def _dead(
        self, row: dict[str, Any], alive: Callable[[str], bool] | None, spare: str | None
    ) -> bool:
        owner = row["lease_owner"]
        if spare is not None and owner == spare:
            return False
        if alive is None or not owner or (row["lease_expires"] or 0.0) <= row["now_"]:
            return True
        beat = row["beat_at"]
        return beat is None or beat < row["now_"] - self.host_timeout or not alive(owner)

    # --- reading ------------------------------------------------------------------------

    def counts(self) -> dict[JobState, int]:
        """Number of jobs in every state, zeros included."""
        rows = self._query(f"SELECT state, count(*) AS n FROM {JOBS} GROUP BY state")
        found = {r["state"]: int(r["n"]) for r in rows}
        return {s: found.get(s.value, 0) for s in JobState}

    def count(self, state: JobState) -> int:
        """Number of jobs in one state."""
        rows = self._query(
            f"SELECT count(*) AS n FROM {JOBS} WHERE state = %(state)s",
            {"state": JobState(state).value},
        )
        return int(rows[0]["n"])

    def jobs(self, states: Iterable[JobState] | None = None, limit: int = 100) -> list[Job]:
        """Jobs in arrival order, optionally only those in the given states."""
        if states is None:
            return self._jobs(
                self._query(f"SELECT * FROM {JOBS} ORDER BY id LIMIT %(n)s", {"n": limit})
            )
        wanted = [JobState(s).value for s in states]
        return self._jobs(
            self._query(
                f"SELECT * FROM {JOBS} WHERE state = ANY(%(states)s) ORDER BY id LIMIT %(n)s",
                {"states": wanted, "n": limit},
            )
        )

    def recent_failures(self, limit: int = 10) -> list[Job]:
        """Failed and quarantined jobs, newest first."""
        return self._jobs(
            self._query(
                f"SELECT * FROM {JOBS} WHERE state IN ('failed', 'quarantined')"
                " ORDER BY updated_at DESC, id DESC LIMIT %(n)s",
                {"n": limit},
            )
        )

    def running(self) -> list[Job]:
        """Jobs in state running, in arrival order."""
        return self.jobs([JobState.running])

    def prune_jobs(
        self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists
    ) -> int:
        """Forget done jobs untouched for ``older_than`` seconds whose input has left the
        inbox; one host at a time (an advisory lock), only inboxes this host knows."""
        with self._tx() as db:
            got = db.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (LOCK_PRUNE,))
            lock = got.fetchone()
            if lock is None or not lock["ok"]:
                return 0
            rows = self._run(
                db,
                f"SELECT id, inbox, input FROM {JOBS} WHERE state = 'done'"
                " AND updated_at < {now} - %(age)s",
                {"age": older_than},
            ).fetchall()
            gone = [
                r["id"]
                for r in rows
                if (local := self.paths.inbox_path(r["inbox"])) != r["inbox"]
                and not exists(os.path.join(local, r["input"]))
            ]
            if not gone:
                return 0
            return int(
                self._run(
                    db,
                    f"DELETE FROM {JOBS} WHERE id = ANY(%(ids)s) AND state = 'done'"
                    " AND updated_at < {now} - %(age)s",
                    {"ids": gone, "age": older_than},
                ).rowcount
            )
