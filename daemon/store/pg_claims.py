"""Claims of shared jobs and every write a claim's worker makes, fenced by its claim number
(see ``protocols.JobStore``).

A claim takes the oldest runnable row with ``FOR UPDATE SKIP LOCKED``, so hosts claiming at
once never wait on each other nor take the same job, and gives it a fencing number from a
sequence; a worker's later writes name that number and change nothing once it is not the
job's live claim any more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from typing import Any

from daemon.store.attempts import quarantine_message
from daemon.store.pg_attempts import BEGIN_ATTEMPT, REACH
from daemon.store.pg_queue import PostgresQueue
from daemon.store.pg_rows import NOTIFY, ORDER, fence
from daemon.store.pg_schema import CLAIMS, HOSTS, JOBS
from daemon.store.rows import Job, backoff
from daemon.values import AttemptEnd, CancelReason


class PostgresClaims(PostgresQueue):
    """Claims, leases, end states, progress and reclaiming the jobs of dead hosts."""

    def claim(
        self, owner: str, lease_seconds: float, *, inboxes: Collection[str] | None = None
    ) -> Job | None:
        """Take the first runnable job (queued, or waiting and due) and lease it to owner:
        the highest priority first, then by position (arrival unless moved), with a new
        fencing number; only jobs of ``inboxes`` when given. The claim opens its attempt."""
        only = "" if inboxes is None else " AND inbox = ANY(%(inboxes)s)"
        args = {
            "owner": owner,
            "lease": lease_seconds,
            "inboxes": self.paths.names(inboxes or ()),
        }
        # One statement (its own transaction, one round trip): the claim and its attempt.
        rows = self._query(
            f"WITH next AS (SELECT id FROM {JOBS} WHERE state IN ('queued', 'waiting')"
            " AND (state = 'queued' OR coalesce(not_before, 0) <= {now})"
            f"{only} ORDER BY priority DESC, {ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED),"
            f" claimed AS (UPDATE {JOBS} j SET state = 'running', attempts = attempts + 1,"
            " lease_owner = %(owner)s, lease_expires = {now} + %(lease)s,"
            " started_at = {now}, finished_at = NULL, seconds = NULL, progress_done = 0,"
            " progress_total = 0, progress_note = '', finished = '[]', cancel = NULL,"
            f" updated_at = {{now}}, claim = nextval('{CLAIMS}') FROM next"
            f" WHERE j.id = next.id RETURNING j.*){BEGIN_ATTEMPT}"
            " SELECT * FROM claimed",
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
                f"{fence(claim)}",
                {"lease": lease_seconds, "id": job_id, "owner": owner, "claim": claim},
            )
            > 0
        )

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
        # A forced regeneration is spent once it has ended one way or the other; a cancel
        # that came too late to stop it is forgotten.
        sql = (
            f"UPDATE {JOBS} SET state = %(state)s, error = %(error)s, seconds = %(seconds)s,"
            " finished_at = {now}, updated_at = {now}, not_before = NULL, lease_owner = NULL,"
            " lease_expires = NULL, force = false, cancel = NULL"
            f" WHERE id = %(id)s{fence(claim)} RETURNING id, finished_at AS at"
        )
        args = {
            "state": state.value,
            "error": error,
            "seconds": seconds,
            "id": job_id,
            "claim": claim,
        }
        return self._ending(sql, args, state)

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
            changed = self._run(
                db,
                f"UPDATE {JOBS} SET state = 'waiting', error = %(error)s,"
                " not_before = {now} + %(delay)s, waits = waits + 1, attempts = CASE"
                " WHEN state = 'running' THEN greatest(attempts - 1, 0) ELSE attempts END,"
                " lease_owner = NULL, lease_expires = NULL, updated_at = {now}"
                f" WHERE id = %(id)s{fence(claim)} RETURNING updated_at",
                {"error": error, "delay": delay, "id": job_id, "claim": claim},
            ).fetchone()
            if changed is None:
                return False
            self._end(db, job_id, AttemptEnd.waiting, float(changed["updated_at"]))
            return True

    def mark_queued(self, job_id: int, *, claim: int | None = None) -> bool:
        """A stop interrupted the job: queue it again without counting the claim."""
        with self._tx() as db:
            changed = self._run(
                db,
                f"UPDATE {JOBS} SET state = 'queued', not_before = NULL, attempts = CASE"
                " WHEN state = 'running' THEN greatest(attempts - 1, 0) ELSE attempts END,"
                " lease_owner = NULL, lease_expires = NULL, updated_at = {now}"
                f" WHERE id = %(id)s{fence(claim)} RETURNING updated_at",
                {"id": job_id, "claim": claim},
            ).fetchone()
            if changed is None:
                return False
            self._end(db, job_id, AttemptEnd.stopped, float(changed["updated_at"]))
            db.execute(NOTIFY)
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
        # One statement: the job's progress, and its running attempt's furthest point.
        sql = (
            f"WITH j AS (UPDATE {JOBS} SET progress_done = %(done)s, progress_total = %(total)s,"
            " progress_note = %(note)s, finished = coalesce(%(finished)s, finished),"
            f" updated_at = {{now}} WHERE id = %(id)s{fence(claim)} RETURNING id){REACH}"
            " SELECT count(*) AS n FROM j"
        )
        args = {
            "done": done,
            "total": total,
            "note": note,
            "finished": None if finished is None else json.dumps(sorted(finished)),
            "id": job_id,
            "claim": claim,
            "steps": steps,
        }
        return bool(self._query(sql, args)[0]["n"])

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
        requeued = quarantined = 0
        with self._tx() as db:
            now = float(self._run(db, "SELECT {now} AS now").fetchone()["now"])
            dead = [
                r
                for r in self._run(
                    db,
                    f"SELECT id, inbox, input, attempts, lease_owner, cancel, started_at,"
                    f" progress_done, progress_total, progress_note FROM {JOBS}"
                    " WHERE id = ANY(%(ids)s) AND state = 'running' FOR UPDATE SKIP LOCKED",
                    {"ids": [i for i, _ in suspects]},
                ).fetchall()
                if (r["id"], r["lease_owner"]) in set(suspects)
            ]
            for r in dead:
                if r["cancel"]:  # canceled while its process died: never run again
                    self._end(db, r["id"], AttemptEnd.canceled, now)
                    self._run(
                        db,
                        f"UPDATE {JOBS} SET state = 'canceled', error = %(error)s,"
                        " finished_at = {now}, updated_at = {now}, lease_owner = NULL,"
                        " lease_expires = NULL WHERE id = %(id)s",
                        {"error": CancelReason(r["cancel"]).describe(), "id": r["id"]},
                    )
                    continue
                last = self._judge_death(db, r, now)
                attempts = r["attempts"] if last.counted else r["attempts"] - 1
                if last.counted and attempts >= max_attempts:
                    inbox = self.paths.inbox_path(r["inbox"])
                    self._run(
                        db,
                        f"UPDATE {JOBS} SET state = 'quarantined', error = %(error)s,"
                        " finished_at = {now}, updated_at = {now}, lease_owner = NULL,"
                        " lease_expires = NULL WHERE id = %(id)s",
                        {
                            "error": quarantine_message(inbox, r["input"], attempts, last),
                            "id": r["id"],
                        },
                    )
                    quarantined += 1
                    continue
                self._run(
                    db,
                    f"UPDATE {JOBS} SET state = 'queued', attempts = %(attempts)s,"
                    " lease_owner = NULL, lease_expires = NULL, updated_at = {now}"
                    " WHERE id = %(id)s",
                    {"attempts": max(attempts, 0), "id": r["id"]},
                )
                requeued += 1
            if requeued:
                db.execute(NOTIFY)
        return requeued, quarantined

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
