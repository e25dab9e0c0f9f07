"""The attempts of a cluster's jobs in PostgreSQL: one row per claim, with how it ended and
how far it got, whichever host made it (see ``protocols.JobStore``).

As in the embedded journal (``sqlite_attempts``), a claim and its attempt row, or a progress
write and the attempt's furthest point, are written together: a claim's and a progress
write's single statement carry ``BEGIN_ATTEMPT`` and ``REACH`` as further CTEs (one round
trip each), ``_ending`` ends a job and its attempt in one statement, and ``_end`` and
``_forget`` run inside the store's transactions. A death is judged by the rule every backend
shares (``store.attempts``).
Which models have loaded on a host is that host's own knowledge: it stays in the host's
scan cache, and the stage a claim records (``loading`` or ``first_load``) carries it here.
"""

from __future__ import annotations

from typing import Any

from daemon.store.attempts import judge
from daemon.store.pg_rows import PostgresRows, fence
from daemon.store.pg_schema import ATTEMPTS, JOBS
from daemon.store.rows import Attempt
from daemon.values import AttemptEnd, AttemptStage

KEPT_ATTEMPTS = 20  # per job, and as many cut short; older rows go when a claim is made

# The furthest point only moves forward: more outputs, or as many and more steps.
_FURTHER = "(%(done)s > outputs OR (%(done)s = outputs AND %(steps)s > steps))"

# Appended to a claim's statement (``claimed``: the claimed row) as further CTEs: end a stale
# running attempt as died, open the claim's attempt, and keep the last KEPT_ATTEMPTS claims
# and the last KEPT_ATTEMPTS cut short (the snapshot holds the older rows only, so 19 plus
# the new one). One statement: a claim stays one round trip.
BEGIN_ATTEMPT = (
    f", stale AS (UPDATE {ATTEMPTS} a SET ended = 'died', ended_at = c.started_at"
    " FROM claimed c WHERE a.job_id = c.id AND a.ended = 'running')"
    f", opened AS (INSERT INTO {ATTEMPTS} (job_id, number, owner, started_at)"
    f" SELECT c.id, coalesce((SELECT max(number) FROM {ATTEMPTS} WHERE job_id = c.id), 0)"
    " + 1, c.lease_owner, c.started_at FROM claimed c)"
    f", trimmed AS (DELETE FROM {ATTEMPTS} a USING claimed c WHERE a.job_id = c.id"
    f" AND a.number NOT IN (SELECT number FROM {ATTEMPTS} WHERE job_id = c.id"
    f" ORDER BY number DESC LIMIT {KEPT_ATTEMPTS} - 1) AND a.number NOT IN (SELECT number"
    f" FROM {ATTEMPTS} WHERE job_id = c.id AND ended IN ('died', 'stopped')"
    f" ORDER BY number DESC LIMIT {KEPT_ATTEMPTS}))"
)

# Appended to a progress write (``j``: the job row it changed) as a further CTE: move the
# running attempt's furthest point to (done, steps) if that is further.
REACH = (
    f", reach AS (UPDATE {ATTEMPTS} SET total = %(total)s,"
    " start_outputs = coalesce(start_outputs, %(done)s),"
    " stage = CASE WHEN %(steps)s > 0 THEN 'generating' ELSE stage END,"
    f" note = CASE WHEN {_FURTHER} THEN %(note)s ELSE note END,"
    f" steps = CASE WHEN {_FURTHER} THEN %(steps)s ELSE steps END,"
    f" outputs = CASE WHEN {_FURTHER} THEN %(done)s ELSE outputs END"
    " WHERE job_id IN (SELECT id FROM j) AND ended = 'running')"
)


def attempt_of(row: dict[str, Any]) -> Attempt:
    """An Attempt from a row of the attempts table."""
    return Attempt(
        job_id=int(row["job_id"]),
        number=int(row["number"]),
        owner=row["owner"],
        started_at=float(row["started_at"]),
        ended_at=row["ended_at"],
        ended=AttemptEnd(row["ended"]),
        stage=AttemptStage(row["stage"]),
        outputs=int(row["outputs"]),
        total=int(row["total"]),
        steps=int(row["steps"]),
        note=row["note"],
        counted=bool(row["counted"]),
        start_outputs=row["start_outputs"],
    )


class PostgresAttempts(PostgresRows):
    """The shared attempts table."""

    def attempts(self, job_id: int) -> list[Attempt]:
        """Every claim of a job since it was last (re)queued, oldest first."""
        rows = self._query(
            f"SELECT * FROM {ATTEMPTS} WHERE job_id = %(id)s ORDER BY number", {"id": job_id}
        )
        return [attempt_of(r) for r in rows]

    def set_stage(self, job_id: int, stage: AttemptStage, *, claim: int | None = None) -> bool:
        """Record where the running claim of a job stands before its first step; with
        ``claim`` only while that claim is the live one (False: it was lost). A stage the
        attempt already has is not written again."""
        args = {"stage": AttemptStage(stage).value, "id": job_id, "claim": claim}
        if claim is None:
            self._exec(
                f"UPDATE {ATTEMPTS} SET stage = %(stage)s"
                " WHERE job_id = %(id)s AND ended = 'running' AND stage <> %(stage)s",
                args,
            )
            return True
        # One statement: the job row names the live claim, the attempt row is updated.
        rows = self._query(
            f"WITH live AS (SELECT id FROM {JOBS} WHERE id = %(id)s{fence(claim)}),"
            f" changed AS (UPDATE {ATTEMPTS} a SET stage = %(stage)s FROM live"
            " WHERE a.job_id = live.id AND a.ended = 'running' AND a.stage <> %(stage)s"
            " RETURNING 1)"
            " SELECT (SELECT count(*) FROM live) AS live",
            args,
        )
        return bool(rows[0]["live"])

    def _ending(self, sql: str, args: dict[str, Any], ended: AttemptEnd) -> bool:
        """Run ``sql`` (a fenced UPDATE of a job ``RETURNING id, <time> AS at``) and close
        the job's running attempt as ``ended`` in the same statement; whether it changed."""
        rows = self._query(
            f"WITH j AS ({sql}), closed AS (UPDATE {ATTEMPTS} a SET ended = %(ended_as)s,"
            " ended_at = j.at FROM j WHERE a.job_id = j.id AND a.ended = 'running')"
            " SELECT count(*) AS n FROM j",
            {**args, "ended_as": ended.value},
        )
        return bool(rows[0]["n"])

    def _end(self, db: Any, job_id: int, ended: AttemptEnd, now: float) -> None:
        """Close the running attempt of a job (there is none when it was not claimed)."""
        db.execute(
            f"UPDATE {ATTEMPTS} SET ended = %(ended)s, ended_at = %(now)s"
            " WHERE job_id = %(id)s AND ended = 'running'",
            {"ended": ended.value, "now": now, "id": job_id},
        )

    def _forget(self, db: Any, job_ids: list[int]) -> None:
        """Drop the history of jobs that start over (requeued, or their input changed)."""
        if job_ids:
            db.execute(f"DELETE FROM {ATTEMPTS} WHERE job_id = ANY(%(ids)s)", {"ids": job_ids})

    def _judge_death(self, db: Any, job: dict[str, Any], now: float) -> Attempt:
        """End the running attempt of a job whose process died; return it, judged. A claim
        without a row (made before the attempts table) is recorded now and counts."""
        rows = db.execute(
            f"SELECT * FROM {ATTEMPTS} WHERE job_id = %(id)s ORDER BY number", {"id": job["id"]}
        ).fetchall()
        history = [attempt_of(r) for r in rows]
        current = next((a for a in reversed(history) if a.ended is AttemptEnd.running), None)
        if current is None:
            number = max((a.number for a in history), default=0) + 1
            db.execute(
                f"INSERT INTO {ATTEMPTS} (job_id, number, owner, started_at, stage, outputs,"
                " total, note) VALUES (%(id)s, %(number)s, %(owner)s, %(started)s, %(stage)s,"
                " %(done)s, %(total)s, %(note)s)",
                {
                    "id": job["id"],
                    "number": number,
                    "owner": job["lease_owner"],
                    "started": job["started_at"] or now,
                    "stage": "generating" if job["progress_total"] else "preparing",
                    "done": job["progress_done"],
                    "total": job["progress_total"],
                    "note": job["progress_note"],
                },
            )
            counted = True
        else:
            number = current.number
            counted, _ = judge(current, history)
        row = db.execute(
            f"UPDATE {ATTEMPTS} SET ended = 'died', ended_at = %(now)s, counted = %(counted)s"
            " WHERE job_id = %(id)s AND number = %(number)s RETURNING *",
            {"now": now, "counted": counted, "id": job["id"], "number": number},
        ).fetchone()
        return attempt_of(row)
