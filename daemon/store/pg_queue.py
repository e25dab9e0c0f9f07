"""The queue of a cluster in PostgreSQL: its order (priority, then position), cancels, and the
revision other processes watch (see ``protocols.JobStore``).

A cancel of a running job is a request written into its row (``cancel``), not a write of
the claimed job: whichever host runs it hears the request and stops it, and only that
claim's worker marks it canceled. ``revision`` counts the notifications a trigger sends on
every change of a job row (``LISTEN``, transactional: a change is heard once it committed),
so a daemon or web UI on any host hears a cancel, a priority or progress within its poll.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import psycopg

from daemon.errors import JobNotFound
from daemon.store.pg_attempts import PostgresAttempts
from daemon.store.pg_base import connect
from daemon.store.pg_rows import ORDER, RUNNABLE, fence
from daemon.store.pg_schema import CHANGES, JOBS
from daemon.store.rows import CancelResult, Job
from daemon.values import AttemptEnd, CancelReason, JobState


def _value(db: Any, sql: str, args: dict[str, Any]) -> Any:
    """The one value (column ``v``) of a one-row query."""
    row = db.execute(sql, args).fetchone()
    return None if row is None else row["v"]


class PostgresQueue(PostgresAttempts):
    """Queue order, cancels and the revision of the shared jobs table."""

    _listener: psycopg.Connection[Any] | None = None
    _revision = 0

    def revision(self) -> int:
        """A number that changes whenever a job row changed, by any handle on any host.

        The first call starts listening; each call then takes one round trip, which brings
        every notification of a change committed before it. A lost connection counts as a
        change and is opened again at the next call.
        """
        try:
            if self._listener is None or self._listener.closed:
                self._listener = connect(self.url)
                self._listener.add_notify_handler(self._heard)
                self._listener.execute(f"LISTEN {CHANGES}")
                self._revision += 1
            self._listener.execute("SELECT 1")
        except psycopg.Error:
            if self._listener is not None:
                self._listener.close()
            self._listener = None
            self._revision += 1
        return self._revision

    def _heard(self, notify: psycopg.Notify) -> None:
        self._revision += 1

    def close(self) -> None:
        """Stop listening, then close the connections."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        super().close()

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
        args = {
            "ids": list(dict.fromkeys(int(i) for i in ids)),
            "states": [JobState(s).value for s in states],
            "reason": reason.value,
            "text": reason.describe(),
        }
        where = "(id = ANY(%(ids)s) OR state = ANY(%(states)s))"
        with self._tx() as db:
            canceled = self._run(
                db,
                f"UPDATE {JOBS} SET state = 'canceled', cancel = %(reason)s, error = %(text)s,"
                " finished_at = {now}, updated_at = {now}, not_before = NULL,"
                f" lease_owner = NULL, lease_expires = NULL WHERE {where} AND {RUNNABLE}"
                " RETURNING id",
                args,
            ).fetchall()
            stopping = self._run(
                db,
                f"UPDATE {JOBS} SET cancel = %(reason)s, updated_at = {{now}}"
                f" WHERE {where} AND state = 'running' RETURNING id",
                args,
            ).fetchall()
        return CancelResult(
            tuple(sorted(int(r["id"]) for r in canceled)),
            tuple(sorted(int(r["id"]) for r in stopping)),
        )

    def mark_canceled(self, job_id: int, note: str = "", *, claim: int | None = None) -> bool:
        """A running job stopped for the cancel asked of it: canceled, with why (and ``note``,
        e.g. what it kept); terminal until its input changes or it is retried. With ``claim``
        only while that claim is the live one (False: it was lost)."""
        with self._tx() as db:
            row = db.execute(
                f"SELECT cancel FROM {JOBS} WHERE id = %s FOR UPDATE", (job_id,)
            ).fetchone()
            if row is None:
                return False
            reason = CancelReason(row["cancel"]) if row["cancel"] else CancelReason.requested
            text = reason.describe() + (f" ({note})" if note else "")
            changed = self._run(
                db,
                f"UPDATE {JOBS} SET state = 'canceled', cancel = %(reason)s, error = %(text)s,"
                " finished_at = {now}, updated_at = {now}, not_before = NULL,"
                " lease_owner = NULL, lease_expires = NULL, force = false"
                f" WHERE id = %(id)s{fence(claim)} RETURNING finished_at",
                {"reason": reason.value, "text": text, "id": job_id, "claim": claim},
            ).fetchone()
            if changed is None:
                return False
            self._end(db, job_id, AttemptEnd.canceled, float(changed["finished_at"]))
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
            # One mover at a time: two moves computing the same free place would collide.
            db.execute(f"LOCK TABLE {JOBS} IN SHARE ROW EXCLUSIVE MODE")
            own = self._row(db, job_id)
            if before is not None:
                other = self._row(db, before)
                earlier = _value(
                    db,
                    f"SELECT max({ORDER}) AS v FROM {JOBS} WHERE {RUNNABLE}"
                    f" AND priority = %(p)s AND {ORDER} < %(o)s AND id <> ALL(%(ids)s)",
                    {"p": other.priority, "o": other.order, "ids": [job_id, before]},
                )
                low = other.order - 1.0 if earlier is None else float(earlier)
                return self._place(db, job_id, other.priority, (low + other.order) / 2)
            top = to == "top"
            edge = _value(
                db,
                f"SELECT {'max' if top else 'min'}(priority) AS v FROM {JOBS}"
                f" WHERE {RUNNABLE} AND id <> %(id)s",
                {"id": job_id},
            )
            if edge is None or (own.priority > edge if top else own.priority < edge):
                return own  # alone, or already beyond every other job
            end = _value(
                db,
                f"SELECT {'min' if top else 'max'}({ORDER}) AS v FROM {JOBS}"
                f" WHERE {RUNNABLE} AND priority = %(p)s AND id <> %(id)s",
                {"p": edge, "id": job_id},
            )
            return self._place(db, job_id, int(edge), float(end) + (-1.0 if top else 1.0))

    def _row(self, db: Any, job_id: int) -> Job:
        row = db.execute(f"SELECT * FROM {JOBS} WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return self._job(row)

    def _place(self, db: Any, job_id: int, priority: int, position: float | None) -> Job:
        row = self._run(
            db,
            f"UPDATE {JOBS} SET priority = %(p)s, position = %(pos)s, updated_at = {{now}}"
            " WHERE id = %(id)s RETURNING *",
            {"p": priority, "pos": position, "id": job_id},
        ).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return self._job(row)
