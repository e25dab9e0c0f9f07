"""The job rows in SQLite: states, leases, attempts, progress (see ``protocols.JobStore``); the
queue's order and cancels are in ``sqlite_queue``."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from daemon.errors import JobNotFound
from daemon.store.rows import MAX_PLANNED, Job, JobDigest, PlannedFile, backoff
from daemon.store.sqlite_base import fence
from daemon.store.sqlite_queue import ORDER
from daemon.store.sqlite_upkeep import SqliteUpkeep
from daemon.values import AttemptEnd, JobState

# The columns a requeue resets; kept in one place so every path back to `queued` agrees.
_REQUEUE_SET = """state = 'queued', attempts = 0, waits = 0, error = NULL, not_before = NULL,
    lease_owner = NULL, lease_expires = NULL, progress_done = 0, progress_total = 0,
    progress_note = '', cancel = NULL, finished = '[]', updated_at = :now"""
_NOT_LEASED = "NOT (state = 'running' AND lease_expires > :now)"


def planned_json(planned: Sequence[PlannedFile]) -> str:
    """The ``planned`` column: the first MAX_PLANNED outputs as [[file, seed], …]."""
    return json.dumps([[p.file, p.seed] for p in planned[:MAX_PLANNED]], ensure_ascii=False)


class SqliteJobStore(SqliteUpkeep):
    """The jobs table of a journal file (with, through ``SqliteUpkeep``, ``SqliteQueue`` and
    ``SqliteAttempts``, reclaiming, pruning, its queue order, cancels and attempts)."""

    def import_jobs(self, jobs: Iterable[Job]) -> int:
        """Write ``jobs`` as they are (ids, states, leases and all) into this journal, replacing
        rows of the same input: a copy of another store's jobs (``once --dry-run`` in a
        cluster surveys such a copy). Returns how many."""
        names = [f.name for f in dataclasses.fields(Job)]
        rows = []
        for job in jobs:
            values: dict[str, Any] = {n: getattr(job, n) for n in names}
            values["state"] = job.state.value
            values["force"] = int(job.force)
            values["deps"] = json.dumps(list(job.deps))
            values["cancel"] = job.cancel.value if job.cancel else None
            values["planned"] = planned_json(job.planned)
            values["finished"] = json.dumps(list(job.finished))
            rows.append(values)
        marks = ", ".join(f":{n}" for n in names)
        with self._tx() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO jobs ({', '.join(names)}) VALUES ({marks})", rows
            )
        return len(rows)

    def job_digests(self, inbox: str) -> dict[str, JobDigest]:
        """input → the compared columns of its job, for every job of one inbox."""
        rows = self._query(
            "SELECT input, id, fingerprint, deps, force, state, out_dir, job_key FROM jobs"
            " WHERE inbox = ?",
            (inbox,),
        )
        return {r[0]: JobDigest(r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7]) for r in rows}

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

        An unchanged row is left alone unless ``force`` (its priority too: a priority set by
        a command stays until the input changes); a changed fingerprint or job key starts it
        over at ``priority``. A running job under a live lease is never touched.
        """
        now = self.clock()
        args = {
            "inbox": inbox,
            "input": input,
            "kind": kind,
            "fingerprint": fingerprint,
            "job_key": job_key,
            "out_dir": out_dir,
            "force": int(force),
            "deps": json.dumps(list(deps)),
            "now": now,
            "priority": priority,
            "task": task,
            "planned": planned_json(planned),
        }
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE inbox = ? AND input = ?", (inbox, input)
            ).fetchone()
            if row is None:
                new = db.execute(
                    "INSERT INTO jobs (inbox, input, kind, fingerprint, job_key, out_dir, state,"
                    " created_at, updated_at, force, deps, priority, task, planned) VALUES"
                    " (:inbox, :input, :kind, :fingerprint, :job_key, :out_dir, 'queued', :now,"
                    " :now, :force, :deps, :priority, :task, :planned) RETURNING *",
                    args,
                ).fetchone()
                return Job.from_row(new), True
            job = Job.from_row(row)
            same = job.fingerprint == fingerprint and job.job_key == job_key
            leased = job.state is JobState.running and (job.lease_expires or 0.0) > now
            already_forced = job.state is JobState.queued and job.force
            if leased or (same and (not force or already_forced)):
                if planned and not job.planned:  # a journal from before plans were recorded
                    db.execute(
                        "UPDATE jobs SET task = :task, planned = :planned WHERE id = :id",
                        {**args, "id": job.id},
                    )
                return job, False
            new = db.execute(
                f"UPDATE jobs SET {_REQUEUE_SET}, kind = :kind, fingerprint = :fingerprint,"
                " job_key = :job_key, out_dir = :out_dir, force = :force, deps = :deps,"
                " started_at = NULL, finished_at = NULL, seconds = NULL, priority = :priority,"
                " position = NULL, task = :task, planned = :planned"
                " WHERE id = :id RETURNING *",
                {**args, "id": job.id},
            ).fetchone()
            self._forget(db, [job.id])
            return Job.from_row(new), True

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
        """Record what a claimed job is actually about to do (its inputs may have changed);
        with ``claim``, only while that claim is the live one (False: it was lost)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET fingerprint = :fp, job_key = :key, out_dir = :out,"
                " updated_at = :now, task = coalesce(:task, task),"
                f" planned = coalesce(:planned, planned) WHERE id = :id{fence(claim)}",
                {
                    "fp": fingerprint,
                    "key": job_key,
                    "out": out_dir,
                    "now": self.clock(),
                    "task": task,
                    "planned": None if planned is None else planned_json(planned),
                    "id": job_id,
                    "claim": claim,
                },
            )
            return cursor.rowcount > 0

    def get_job(self, inbox: str, input: str) -> Job | None:
        """The job of one input, or None."""
        rows = self._query("SELECT * FROM jobs WHERE inbox = ? AND input = ?", (inbox, input))
        return Job.from_row(rows[0]) if rows else None

    def get(self, job_id: int) -> Job:
        """The job with this id; JobNotFound (a LookupError) when there is none."""
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(job_id)
        return Job.from_row(rows[0])

    def delete(self, job_id: int, *, claim: int | None = None) -> bool:
        """Remove a job row (its input left the inbox); True when there was one."""
        with self._tx() as db:
            sql = f"DELETE FROM jobs WHERE id = :id{fence(claim)}"
            return db.execute(sql, {"id": job_id, "claim": claim}).rowcount > 0

    def requeue(self, job_id: int, *, force: bool = False) -> bool:
        """Put a job back to queued with a fresh attempt count; False if it is leased or gone."""
        with self._tx() as db:
            return bool(self._requeue(db, "id = :id", {"id": job_id}, force))

    def _requeue(
        self, db: sqlite3.Connection, where: str, params: dict[str, Any], force: bool
    ) -> set[int]:
        rows = db.execute(
            f"UPDATE jobs SET {_REQUEUE_SET}, force = CASE WHEN :force THEN 1 ELSE force END"
            f" WHERE ({where}) AND {_NOT_LEASED} RETURNING id",
            {**params, "force": int(force), "now": self.clock()},
        ).fetchall()
        ids = {int(r[0]) for r in rows}
        self._forget(db, ids)
        return ids

    def claim(
        self, owner: str, lease_seconds: float, *, inboxes: Collection[str] | None = None
    ) -> Job | None:
        """Take the first runnable job (queued, or waiting and due) and lease it to owner:
        the highest priority first, then by position (arrival unless moved), with a new
        fencing number; only jobs of ``inboxes`` when given."""
        now = self.clock()
        only = ""
        if inboxes is not None:
            only = " AND inbox IN (SELECT value FROM json_each(:inboxes))"
        params = {"now": now, "inboxes": json.dumps(sorted(inboxes or ()))}
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM ("
                f"SELECT * FROM (SELECT id, priority, {ORDER} AS pos FROM jobs"
                f" WHERE state = 'queued'{only} ORDER BY priority DESC, {ORDER} LIMIT 1)"
                f" UNION ALL SELECT * FROM (SELECT id, priority, {ORDER} AS pos FROM jobs"
                f" WHERE state = 'waiting' AND coalesce(not_before, 0) <= :now{only}"
                f" ORDER BY priority DESC, {ORDER} LIMIT 1)"
                ") ORDER BY priority DESC, pos LIMIT 1",
                params,
            ).fetchone()
            if row is None:
                return None
            claimed = db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1,"
                " lease_owner = :owner, lease_expires = :expires, started_at = :now,"
                " finished_at = NULL, seconds = NULL, progress_done = 0, progress_total = 0,"
                " progress_note = '', finished = '[]', cancel = NULL, updated_at = :now,"
                " claim = (SELECT coalesce(max(claim), 0) + 1 FROM jobs) WHERE id = :id"
                " RETURNING *",
                {"owner": owner, "expires": now + lease_seconds, "now": now, "id": row[0]},
            ).fetchone()
            self._begin(db, row[0], owner, now)
            return Job.from_row(claimed)

    def holds(self, job_id: int, claim: int) -> bool:
        """Whether ``claim`` is still the live claim of a running job."""
        rows = self._query(
            "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND claim = ?", (job_id, claim)
        )
        return bool(rows)

    def renew_lease(
        self, job_id: int, owner: str, lease_seconds: float, *, claim: int | None = None
    ) -> bool:
        """Extend owner's lease on a running job; False when owner no longer holds it."""
        now = self.clock()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_expires = :expires, updated_at = :now"
                f" WHERE id = :id AND state = 'running' AND lease_owner = :owner{fence(claim)}",
                {
                    "expires": now + lease_seconds,
                    "now": now,
                    "id": job_id,
                    "owner": owner,
                    "claim": claim,
                },
            )
            return cursor.rowcount > 0

    def mark_done(self, job_id: int, *, seconds: float, claim: int | None = None) -> bool:
        """The job's outputs are complete."""
        return self._finish(job_id, AttemptEnd.done, None, seconds, claim)

    def mark_failed(self, job_id: int, error: str, *, claim: int | None = None) -> bool:
        """The input is bad; terminal until the input or its sidecar changes."""
        return self._finish(job_id, AttemptEnd.failed, error, None, claim)

    def _finish(
        self,
        job_id: int,
        state: AttemptEnd,
        error: str | None,
        seconds: float | None,
        claim: int | None,
    ) -> bool:
        now = self.clock()
        with self._tx() as db:
            # A forced regeneration is spent once it has ended one way or the other; a cancel
            # that came too late to stop it is forgotten.
            cursor = db.execute(
                "UPDATE jobs SET state = :state, error = :error, seconds = :seconds,"
                " finished_at = :now, updated_at = :now, not_before = NULL, lease_owner = NULL,"
                f" lease_expires = NULL, force = 0, cancel = NULL WHERE id = :id{fence(claim)}",
                {
                    "state": state.value,
                    "error": error,
                    "seconds": seconds,
                    "now": now,
                    "id": job_id,
                    "claim": claim,
                },
            )
            if cursor.rowcount == 0:
                return False
            self._end(db, job_id, state, now)
            return True

    def mark_waiting(
        self,
        job_id: int,
        error: str,
        *,
        retry_in: float | None = None,
        claim: int | None = None,
    ) -> bool:
        """The cause is outside the input: retry later (default: exponential backoff).

        A claim that ends here does not count toward attempts.
        """
        now = self.clock()
        with self._tx() as db:
            row = db.execute("SELECT waits FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            delay = backoff(row["waits"]) if retry_in is None else retry_in
            cursor = db.execute(
                "UPDATE jobs SET state = 'waiting', error = :error, not_before = :due,"
                " waits = waits + 1, attempts = CASE WHEN state = 'running'"
                " THEN max(attempts - 1, 0) ELSE attempts END, lease_owner = NULL,"
                f" lease_expires = NULL, updated_at = :now WHERE id = :id{fence(claim)}",
                {"error": error, "due": now + delay, "now": now, "id": job_id, "claim": claim},
            )
            if cursor.rowcount == 0:
                return False
            self._end(db, job_id, AttemptEnd.waiting, now)
            return True

    def mark_queued(self, job_id: int, *, claim: int | None = None) -> bool:
        """A stop interrupted the job: queue it again without counting the claim."""
        now = self.clock()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'queued', not_before = NULL,"
                " attempts = CASE WHEN state = 'running' THEN max(attempts - 1, 0)"
                " ELSE attempts END, lease_owner = NULL, lease_expires = NULL,"
                f" updated_at = :now WHERE id = :id{fence(claim)}",
                {"now": now, "id": job_id, "claim": claim},
            )
            if cursor.rowcount == 0:
                return False
            self._end(db, job_id, AttemptEnd.stopped, now)
            return True

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
        """Record how far a running job has come (shown by ``dropforge status`` and the web
        UI): ``done`` outputs finished of ``total`` (``finished``: the indices of the planned
        outputs finished so far), ``steps`` denoising steps since the last one."""
        listed = None if finished is None else json.dumps(sorted(finished))
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET progress_done = :done, progress_total = :total,"
                " progress_note = :note, finished = coalesce(:finished, finished),"
                f" updated_at = :now WHERE id = :id{fence(claim)}",
                {
                    "done": done,
                    "total": total,
                    "note": note,
                    "finished": listed,
                    "now": self.clock(),
                    "id": job_id,
                    "claim": claim,
                },
            )
            if cursor.rowcount == 0:
                return False
            self._reach(db, job_id, done, total, note, steps)
            return True

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
        done: set[int] = set()
        with self._tx() as db:
            for inbox, input in inputs:
                where = "inbox = :inbox AND input = :input"
                done |= self._requeue(db, where, {"inbox": inbox, "input": input}, force)
                # A cancel still on its way to a running job is taken back.
                db.execute(
                    "UPDATE jobs SET cancel = NULL WHERE inbox = ? AND input = ?"
                    " AND state = 'running'",
                    (inbox, input),
                )
            for state in states:
                done |= self._requeue(db, "state = :state", {"state": state.value}, force)
        return len(done)
