"""The queue in SQLite: its order (priority, then position), cancels, and the listings that
``dropforge status``, ``queue`` and the web UI read (see ``protocols.JobStore``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Literal

from daemon.errors import JobNotFound
from daemon.store.rows import CancelResult, Job
from daemon.store.sqlite_attempts import SqliteAttempts
from daemon.store.sqlite_base import fence
from daemon.values import AttemptEnd, CancelReason, JobState

# A job's place among jobs of its priority: a position set by a move, else its arrival.
ORDER = "coalesce(position, id)"
_RUNNABLE = "state IN ('queued', 'waiting')"


class SqliteQueue(SqliteAttempts):
    """The order of the queue, cancels, and read-only listings of the jobs table."""

    def queue(self, limit: int = 100) -> list[Job]:
        """Queued jobs in the order they will be claimed."""
        rows = self._query(
            f"SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, {ORDER} LIMIT ?",
            (limit,),
        )
        return [Job.from_row(r) for r in rows]

    def cancel(
        self,
        *,
        ids: Iterable[int] = (),
        states: Iterable[JobState] = (),
        reason: CancelReason = CancelReason.requested,
    ) -> CancelResult:
        """Cancel the jobs named by id and every job in ``states``: a queued or waiting job at
        once, a running one by a request its worker heeds at its next step. Jobs in other
        states are left alone."""
        now = self.clock()
        wanted = list(dict.fromkeys(int(i) for i in ids))
        chosen = [JobState(s).value for s in states]
        canceled: set[int] = set()
        stopping: set[int] = set()
        args = {"reason": reason.value, "text": reason.describe(), "now": now}
        with self._tx() as db:
            for where, params in self._targets(wanted, chosen):
                found = db.execute(
                    "UPDATE jobs SET state = 'canceled', cancel = :reason, error = :text,"
                    " finished_at = :now, updated_at = :now, not_before = NULL,"
                    f" lease_owner = NULL, lease_expires = NULL WHERE ({where}) AND {_RUNNABLE}"
                    " RETURNING id",
                    {**args, **params},
                ).fetchall()
                canceled |= {int(r[0]) for r in found}
                found = db.execute(
                    "UPDATE jobs SET cancel = :reason, updated_at = :now"
                    f" WHERE ({where}) AND state = 'running' RETURNING id",
                    {**args, **params},
                ).fetchall()
                stopping |= {int(r[0]) for r in found}
        return CancelResult(tuple(sorted(canceled)), tuple(sorted(stopping)))

    @staticmethod
    def _targets(ids: list[int], states: list[str]) -> list[tuple[str, dict[str, object]]]:
        """WHERE clauses, with their parameters, for ids (in chunks) and states."""
        targets: list[tuple[str, dict[str, object]]] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            names = [f"i{n}" for n in range(len(chunk))]
            where = "id IN (" + ", ".join(f":{n}" for n in names) + ")"
            targets.append((where, dict(zip(names, chunk, strict=True))))
        targets += [("state = :state", {"state": state}) for state in states]
        return targets

    def mark_canceled(self, job_id: int, note: str = "", *, claim: int | None = None) -> bool:
        """A running job stopped for the cancel asked of it: canceled, with why (and ``note``,
        e.g. what it kept); terminal until its input changes or it is retried. With ``claim``
        only while that claim is the live one (False: it was lost)."""
        now = self.clock()
        with self._tx() as db:
            row = db.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            reason = CancelReason(row[0]) if row[0] else CancelReason.requested
            text = reason.describe() + (f" ({note})" if note else "")
            cursor = db.execute(
                "UPDATE jobs SET state = 'canceled', cancel = :reason, error = :text,"
                " finished_at = :now, updated_at = :now, not_before = NULL, lease_owner = NULL,"
                f" lease_expires = NULL, force = 0 WHERE id = :id{fence(claim)}",
                {"reason": reason.value, "text": text, "now": now, "id": job_id, "claim": claim},
            )
            if cursor.rowcount == 0:
                return False
            self._end(db, job_id, AttemptEnd.canceled, now)
            return True

    def set_priority(self, job_id: int, priority: int) -> Job:
        """Give a job a priority; among jobs of that priority it takes its arrival place."""
        with self._tx() as db:
            return self._place(db, job_id, priority, None)

    def move(
        self,
        job_id: int,
        *,
        to: Literal["top", "bottom"] | None = None,
        before: int | None = None,
    ) -> Job:
        """Move a job to the top or the bottom of the runnable jobs (queued or waiting),
        taking the priority it needs, or just before job ``before`` (taking its priority)."""
        with self._tx() as db:
            own = self._row(db, job_id)
            if before is not None:
                other = self._row(db, before)
                earlier = db.execute(
                    f"SELECT max({ORDER}) FROM jobs WHERE {_RUNNABLE} AND priority = ?"
                    f" AND {ORDER} < ? AND id NOT IN (?, ?)",
                    (other.priority, other.order, job_id, before),
                ).fetchone()[0]
                low = other.order - 1.0 if earlier is None else float(earlier)
                return self._place(db, job_id, other.priority, (low + other.order) / 2)
            top = to == "top"
            edge = db.execute(
                f"SELECT {'max' if top else 'min'}(priority) FROM jobs"
                f" WHERE {_RUNNABLE} AND id != ?",
                (job_id,),
            ).fetchone()[0]
            if edge is None or (own.priority > edge if top else own.priority < edge):
                return own  # alone, or already beyond every other job
            end = db.execute(
                f"SELECT {'min' if top else 'max'}({ORDER}) FROM jobs"
                f" WHERE {_RUNNABLE} AND priority = ? AND id != ?",
                (edge, job_id),
            ).fetchone()[0]
            return self._place(db, job_id, int(edge), float(end) + (-1.0 if top else 1.0))

    def _row(self, db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    def _place(
        self, db: sqlite3.Connection, job_id: int, priority: int, position: float | None
    ) -> Job:
        row = db.execute(
            "UPDATE jobs SET priority = ?, position = ?, updated_at = ? WHERE id = ? RETURNING *",
            (priority, position, self.clock(), job_id),
        ).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    def counts(self) -> dict[JobState, int]:
        """Number of jobs in every state, zeros included."""
        found = {
            r["state"]: r["n"]
            for r in self._query("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        }
        return {s: int(found.get(s.value, 0)) for s in JobState}

    def count(self, state: JobState) -> int:
        """Number of jobs in one state (an index range, however big the journal)."""
        rows = self._query("SELECT count(*) FROM jobs WHERE state = ?", (JobState(state).value,))
        return int(rows[0][0])

    def jobs(self, states: Iterable[JobState] | None = None, limit: int = 100) -> list[Job]:
        """Jobs in arrival order, optionally only those in the given states."""
        if states is None:
            rows = self._query("SELECT * FROM jobs ORDER BY id LIMIT ?", (limit,))
        else:
            wanted = [JobState(s).value for s in states]
            marks = ", ".join("?" * len(wanted))
            rows = self._query(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id LIMIT ?",
                (*wanted, limit),
            )
        return [Job.from_row(r) for r in rows]

    def recent_failures(self, limit: int = 10) -> list[Job]:
        """Failed and quarantined jobs, newest first."""
        rows = self._query(
            "SELECT * FROM jobs WHERE state IN ('failed', 'quarantined')"
            " ORDER BY updated_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [Job.from_row(r) for r in rows]

    def recent_cancels(self, limit: int = 10) -> list[Job]:
        """Canceled jobs, newest first."""
        rows = self._query(
            "SELECT * FROM jobs WHERE state = 'canceled' ORDER BY updated_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [Job.from_row(r) for r in rows]

    def active_in_folder(self, inbox: str, folder: str) -> int:
        """Jobs queued, running or waiting whose input lies directly in ``folder`` ("" or
        "a/b/") of ``inbox``: a drop is finished when none is left."""
        rows = self._query(
            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running', 'waiting')"
            " AND inbox = ? AND rtrim(input, replace(input, '/', '')) = ?",
            (inbox, folder),
        )
        return int(rows[0][0])

    def active_folders(self, limit: int = 1000) -> dict[tuple[str, str], int]:
        """(inbox, folder) → how many jobs there are queued, running or waiting: the drops
        still in progress."""
        rows = self._query(
            "SELECT inbox, rtrim(input, replace(input, '/', '')) AS folder, count(*) FROM jobs"
            " WHERE state IN ('queued', 'running', 'waiting') GROUP BY inbox, folder LIMIT ?",
            (limit,),
        )
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def running(self) -> list[Job]:
        """Jobs in state running, in arrival order."""
        return self.jobs([JobState.running])
