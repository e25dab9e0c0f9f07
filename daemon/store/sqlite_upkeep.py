"""Upkeep of the job rows in SQLite: requeueing what dead processes left (and quarantining
crash loops by the rule of ``store.attempts``) and forgetting old finished jobs."""

from __future__ import annotations

import os
from collections.abc import Callable

from daemon.store.attempts import quarantine_message
from daemon.store.sqlite_queue import SqliteQueue
from daemon.values import AttemptEnd, CancelReason


class SqliteUpkeep(SqliteQueue):
    """Recovery and pruning of a journal file's jobs."""

    def recover(
        self,
        max_attempts: int,
        *,
        alive: Callable[[str], bool] | None = None,
        spare: str | None = None,
    ) -> tuple[int, int]:
        """Requeue running jobs that no process runs any more; quarantine crash loops.

        ``alive(owner)`` tells whether a lease owner still runs (another dropforge on the
        same journal); its jobs are left alone until their lease runs out. The jobs of owner
        ``spare`` are left alone whatever their lease. A claim that got further than the one
        before it, or died loading a model that loads here, does not count toward
        ``max_attempts`` (``store.attempts``). Returns (requeued, quarantined).
        """
        now = self.clock()
        requeued = quarantined = 0
        with self._tx() as db:
            rows = [
                r
                for r in db.execute(
                    "SELECT id, inbox, input, attempts, lease_owner, lease_expires, cancel"
                    " FROM jobs WHERE state = 'running'"
                ).fetchall()
                if (spare is None or r["lease_owner"] != spare)
                and (
                    alive is None
                    or not r["lease_owner"]
                    or (r["lease_expires"] or 0.0) <= now
                    or not alive(r["lease_owner"])
                )
            ]
            stopped = [r for r in rows if r["cancel"]]
            for r in stopped:  # canceled while its process died: never run again
                self._end(db, r["id"], AttemptEnd.canceled, now)
                db.execute(
                    "UPDATE jobs SET state = 'canceled', error = ?, finished_at = ?,"
                    " updated_at = ?, lease_owner = NULL, lease_expires = NULL WHERE id = ?",
                    (CancelReason(r["cancel"]).describe(), now, now, r["id"]),
                )
            rows = [r for r in rows if not r["cancel"]]
            for r in rows:
                last = self._judge_death(db, r["id"], now)
                attempts = r["attempts"] if last.counted else r["attempts"] - 1
                if last.counted and attempts >= max_attempts:
                    error = quarantine_message(r["inbox"], r["input"], attempts, last)
                    db.execute(
                        "UPDATE jobs SET state = 'quarantined', error = ?, finished_at = ?,"
                        " updated_at = ?, lease_owner = NULL, lease_expires = NULL WHERE id = ?",
                        (error, now, now, r["id"]),
                    )
                    quarantined += 1
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'queued', attempts = ?, lease_owner = NULL,"
                    " lease_expires = NULL, updated_at = ? WHERE id = ?",
                    (max(attempts, 0), now, r["id"]),
                )
                requeued += 1
        return requeued, quarantined

    def prune_jobs(
        self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists
    ) -> int:
        """Forget done and canceled jobs untouched for ``older_than`` seconds whose input has left
        the inbox; return how many.

        A done input still in the inbox keeps its job however old it is: a rescan that skips
        its folder as unchanged (folder marks) does not touch it, and forgetting it would mean
        reading every such input again.
        """
        cutoff = self.clock() - older_than
        jobs = self._query(
            "SELECT id, inbox, input FROM jobs WHERE state IN ('done', 'canceled')"
            " AND updated_at < ?",
            (cutoff,),
        )
        gone_jobs = [(r[0], cutoff) for r in jobs if not exists(os.path.join(r[1], r[2]))]
        with self._tx() as db:
            deleted = db.executemany(
                "DELETE FROM jobs WHERE id = ? AND state IN ('done', 'canceled')"
                " AND updated_at < ?",
                gone_jobs,
            ).rowcount
        return int(deleted)
