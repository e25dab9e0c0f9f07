"""The attempts of the jobs in SQLite: one row per claim, with how it ended and how far it got.

``SqliteJobStore`` calls the ``_begin``, ``_end`` and ``_forget`` helpers inside its own
transactions, so a claim and its attempt row, or a requeue and the history it clears, are
always written together. The rule deciding what counts toward quarantine is
``store.attempts``, shared by every backend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from daemon.store.attempts import judge
from daemon.store.rows import Attempt
from daemon.store.sqlite_base import SqliteDatabase, fence
from daemon.values import AttemptEnd, AttemptStage

KEPT_ATTEMPTS = 20  # per job, and as many cut short; older rows go when a claim is made

# The furthest point only moves forward: more outputs, or as many and more steps.
_FURTHER = "(:done > outputs OR (:done = outputs AND :steps > steps))"


class SqliteAttempts(SqliteDatabase):
    """The attempts table of a journal file."""

    def attempts(self, job_id: int) -> list[Attempt]:
        """Every claim of a job since it was last (re)queued, oldest first."""
        rows = self._query("SELECT * FROM attempts WHERE job_id = ? ORDER BY number", (job_id,))
        return [Attempt.from_row(r) for r in rows]

    def set_stage(self, job_id: int, stage: AttemptStage, *, claim: int | None = None) -> bool:
        """Record where the running claim of a job stands before its first step; with
        ``claim`` only while that claim is the live one (False: it was lost)."""
        with self._tx() as db:
            if (
                claim is not None
                and not db.execute(
                    f"SELECT 1 FROM jobs WHERE id = :id{fence(claim)}",
                    {"id": job_id, "claim": claim},
                ).fetchone()
            ):
                return False
            db.execute(
                "UPDATE attempts SET stage = ? WHERE job_id = ? AND ended = 'running'",
                (AttemptStage(stage).value, job_id),
            )
            return True

    def _reach(
        self, db: sqlite3.Connection, job_id: int, done: int, total: int, note: str, steps: int
    ) -> None:
        """Move the running claim's furthest point to (done, steps) if that is further."""
        db.execute(
            "UPDATE attempts SET total = :total, start_outputs = coalesce(start_outputs, :done),"
            f" stage = CASE WHEN :steps > 0 THEN 'generating'"
            f" ELSE stage END, note = CASE WHEN {_FURTHER} THEN :note ELSE note END,"
            f" steps = CASE WHEN {_FURTHER} THEN :steps ELSE steps END,"
            f" outputs = CASE WHEN {_FURTHER} THEN :done ELSE outputs END"
            " WHERE job_id = :id AND ended = 'running'",
            {"id": job_id, "done": done, "total": total, "note": note, "steps": steps},
        )

    def _begin(self, db: sqlite3.Connection, job_id: int, owner: str, now: float) -> None:
        """Open the attempt row of a new claim (ending a stale running one as died)."""
        self._end(db, job_id, AttemptEnd.died, now)
        number = db.execute(
            "SELECT coalesce(max(number), 0) + 1 FROM attempts WHERE job_id = ?", (job_id,)
        ).fetchone()[0]
        db.execute(
            "INSERT INTO attempts (job_id, number, owner, started_at) VALUES (?, ?, ?, ?)",
            (job_id, number, owner, now),
        )
        # The last claims, and the last claims cut short: a job held waiting again and again
        # (a delivery in its folder) keeps the deaths the crash-loop rule compares with.
        db.execute(
            "DELETE FROM attempts WHERE job_id = :id AND number NOT IN (SELECT number FROM"
            " attempts WHERE job_id = :id ORDER BY number DESC LIMIT :kept) AND number NOT IN"
            " (SELECT number FROM attempts WHERE job_id = :id AND ended IN ('died', 'stopped')"
            " ORDER BY number DESC LIMIT :kept)",
            {"id": job_id, "kept": KEPT_ATTEMPTS},
        )

    def _end(self, db: sqlite3.Connection, job_id: int, ended: AttemptEnd, now: float) -> None:
        """Close the running attempt of a job (there is none when it was not claimed)."""
        db.execute(
            "UPDATE attempts SET ended = ?, ended_at = ? WHERE job_id = ? AND ended = 'running'",
            (ended.value, now, job_id),
        )

    def _forget(self, db: sqlite3.Connection, job_ids: Iterable[int]) -> None:
        """Drop the history of jobs that start over (requeued, or their input changed)."""
        db.executemany("DELETE FROM attempts WHERE job_id = ?", ((i,) for i in job_ids))

    def _judge_death(self, db: sqlite3.Connection, job_id: int, now: float) -> Attempt:
        """End the running attempt of a job whose process died; return it, judged.

        A claim made by a dropforge older than the attempts table has no row: it is
        recorded now, from the job's progress, and counts, as every death did then.
        """
        rows = db.execute(
            "SELECT * FROM attempts WHERE job_id = ? ORDER BY number", (job_id,)
        ).fetchall()
        history = [Attempt.from_row(r) for r in rows]
        current = next((a for a in reversed(history) if a.ended is AttemptEnd.running), None)
        if current is None:
            job = db.execute(
                "SELECT lease_owner, started_at, progress_done, progress_total, progress_note"
                " FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            number = max((a.number for a in history), default=0) + 1
            db.execute(
                "INSERT INTO attempts (job_id, number, owner, started_at, stage, outputs, total,"
                " note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    number,
                    job["lease_owner"],
                    job["started_at"] or now,
                    "generating" if job["progress_total"] else "preparing",
                    job["progress_done"],
                    job["progress_total"],
                    job["progress_note"],
                ),
            )
            counted = True
        else:
            number = current.number
            counted, _ = judge(current, history)
        db.execute(
            "UPDATE attempts SET ended = 'died', ended_at = ?, counted = ?"
            " WHERE job_id = ? AND number = ?",
            (now, int(counted), job_id, number),
        )
        row = db.execute(
            "SELECT * FROM attempts WHERE job_id = ? AND number = ?", (job_id, number)
        ).fetchone()
        return Attempt.from_row(row)
