"""The attempts of a cluster's jobs in PostgreSQL: one row per claim, with how it ended and
how far it got, whichever host made it (see ``protocols.JobStore``).

As in the embedded journal (``sqlite_attempts``), the job store calls ``_begin``, ``_end``,
``_reach`` and ``_forget`` inside its own transactions, so a claim and its attempt row are
written together; a death is judged by the rule every backend shares (``store.attempts``).
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
        ``claim`` only while that claim is the live one (False: it was lost)."""
        args = {"stage": AttemptStage(stage).value, "id": job_id, "claim": claim}
        if claim is None:
            self._exec(
                f"UPDATE {ATTEMPTS} SET stage = %(stage)s"
                " WHERE job_id = %(id)s AND ended = 'running'",
                args,
            )
            return True
        # One statement: the job row names the live claim, the attempt row is updated.
        rows = self._query(
            f"WITH live AS (SELECT id FROM {JOBS} WHERE id = %(id)s{fence(claim)}),"
            f" changed AS (UPDATE {ATTEMPTS} a SET stage = %(stage)s FROM live"
            " WHERE a.job_id = live.id AND a.ended = 'running' RETURNING 1)"
            " SELECT (SELECT count(*) FROM live) AS live",
            args,
        )
        return bool(rows[0]["live"])

    def _reach(self, db: Any, job_id: int, done: int, total: int, note: str, steps: int) -> None:
        """Move the running claim's furthest point to (done, steps) if that is further."""
        db.execute(
            f"UPDATE {ATTEMPTS} SET total = %(total)s,"
            " start_outputs = coalesce(start_outputs, %(done)s),"
            " stage = CASE WHEN %(steps)s > 0 THEN 'generating' ELSE stage END,"
            f" note = CASE WHEN {_FURTHER} THEN %(note)s ELSE note END,"
            f" steps = CASE WHEN {_FURTHER} THEN %(steps)s ELSE steps END,"
            f" outputs = CASE WHEN {_FURTHER} THEN %(done)s ELSE outputs END"
            " WHERE job_id = %(id)s AND ended = 'running'",
            {"id": job_id, "done": done, "total": total, "note": note, "steps": steps},
        )

    def _begin(self, db: Any, job_id: int, owner: str, now: float) -> None:
        """Open the attempt row of a new claim (ending a stale running one as died) and
        keep the last claims, and the last claims cut short."""
        self._end(db, job_id, AttemptEnd.died, now)
        db.execute(
            f"INSERT INTO {ATTEMPTS} (job_id, number, owner, started_at) SELECT %(id)s,"
            f" coalesce(max(number), 0) + 1, %(owner)s, %(now)s FROM {ATTEMPTS}"
            " WHERE job_id = %(id)s",
            {"id": job_id, "owner": owner, "now": now},
        )
        db.execute(
            f"DELETE FROM {ATTEMPTS} WHERE job_id = %(id)s AND number NOT IN (SELECT number"
            f" FROM {ATTEMPTS} WHERE job_id = %(id)s ORDER BY number DESC LIMIT %(kept)s)"
            f" AND number NOT IN (SELECT number FROM {ATTEMPTS} WHERE job_id = %(id)s"
            " AND ended IN ('died', 'stopped') ORDER BY number DESC LIMIT %(kept)s)",
            {"id": job_id, "kept": KEPT_ATTEMPTS},
        )

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
