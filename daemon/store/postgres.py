"""The jobs of a cluster in PostgreSQL: queueing, retries and pruning on top of the claims
(``pg_claims``) and the rows (``pg_rows``); see ``protocols.JobStore``.

Whatever makes a job runnable sends a ``NOTIFY`` in its transaction, which wakes idle hosts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from daemon.store.pg_claims import PostgresClaims
from daemon.store.pg_rows import NOT_LEASED, NOTIFY, REQUEUE_SET, fence, folder_of
from daemon.store.pg_schema import CHANNEL, JOBS, LOCK_PRUNE
from daemon.store.rows import MAX_PLANNED, Job, PlannedFile
from daemon.values import JobState


def planned_json(planned: Sequence[PlannedFile]) -> str:
    """The ``planned`` column: the first MAX_PLANNED outputs as [[file, seed], …]."""
    return json.dumps([[p.file, p.seed] for p in planned[:MAX_PLANNED]], ensure_ascii=False)


class PostgresJobStore(PostgresClaims):
    """The shared jobs table."""

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

        An unchanged row is left alone unless ``force`` (its priority too); a changed
        fingerprint or job key starts it over at ``priority``. A running job under a live
        lease is never touched.
        """
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
            "priority": priority,
            "task": task,
            "planned": planned_json(planned),
        }
        # A new input (the common case): one statement inserts it and notifies idle hosts.
        inserted = self._query(
            f"WITH new AS (INSERT INTO {JOBS} (inbox, input, folder, kind, fingerprint,"
            " job_key, out_dir, state, created_at, updated_at, force, deps, priority, task,"
            " planned) VALUES (%(inbox)s, %(input)s, %(folder)s, %(kind)s, %(fingerprint)s,"
            " %(job_key)s, %(out_dir)s, 'queued', {now}, {now}, %(force)s, %(deps)s,"
            " %(priority)s, %(task)s, %(planned)s) ON CONFLICT (inbox, input)"
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
                    " out_dir, state, created_at, updated_at, force, deps, priority, task,"
                    " planned) VALUES (%(inbox)s, %(input)s, %(folder)s, %(kind)s,"
                    " %(fingerprint)s, %(job_key)s, %(out_dir)s, 'queued', {now}, {now},"
                    " %(force)s, %(deps)s, %(priority)s, %(task)s, %(planned)s)"
                    " ON CONFLICT (inbox, input) DO NOTHING RETURNING *",
                    args,
                ).fetchone()
                if new is not None:
                    db.execute(NOTIFY)
                    return self._job(new), True
                row = self._run(db, select, args).fetchone()  # another host inserted it
                assert row is not None
            job = self._job(row)
            same = job.fingerprint == fingerprint and job.job_key == job_key
            leased = job.state is JobState.running and (job.lease_expires or 0.0) > row["now_"]
            already_forced = job.state is JobState.queued and job.force
            if leased or (same and (not force or already_forced)):
                if planned and not job.planned:  # a row from before plans were recorded
                    self._run(
                        db,
                        f"UPDATE {JOBS} SET task = %(task)s, planned = %(planned)s"
                        " WHERE id = %(id)s",
                        {**args, "id": job.id},
                    )
                return job, False
            new = self._run(
                db,
                f"UPDATE {JOBS} SET {REQUEUE_SET}, kind = %(kind)s,"
                " fingerprint = %(fingerprint)s, job_key = %(job_key)s, out_dir = %(out_dir)s,"
                " force = %(force)s, deps = %(deps)s, started_at = NULL, finished_at = NULL,"
                " seconds = NULL, priority = %(priority)s, position = NULL, task = %(task)s,"
                " planned = %(planned)s WHERE id = %(id)s RETURNING *",
                {**args, "id": job.id},
            ).fetchone()
            self._forget(db, [job.id])
            db.execute(NOTIFY)
            return self._job(new), True

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
        with ``claim``, only while that claim is the live one (False: it was lost).

        A row that already says all this is not written (the common case: the plan a claim
        made is the one the survey recorded), so no row version, revision or notification
        is spent on it; the answer is the same: whether the row (and that claim) is there.
        """
        new = (
            "(%(fp)s, %(key)s, coalesce(%(outs)s::jsonb ->> inbox, %(out)s),"
            " coalesce(%(task)s, task), coalesce(%(planned)s, planned))"
        )
        sql = (
            f"WITH changed AS (UPDATE {JOBS} SET (fingerprint, job_key, out_dir, task, planned)"
            f" = {new}, updated_at = {{now}} WHERE id = %(id)s{fence(claim)}"
            f" AND (fingerprint, job_key, out_dir, task, planned) IS DISTINCT FROM {new}"
            f" RETURNING 1) SELECT EXISTS (SELECT 1 FROM changed) OR EXISTS (SELECT 1"
            f" FROM {JOBS} WHERE id = %(id)s{fence(claim)}) AS ok"
        )
        args = {
            "fp": fingerprint,
            "key": job_key,
            "outs": json.dumps(self.paths.out_dir_names(out_dir)),
            "out": out_dir,
            "id": job_id,
            "claim": claim,
            "task": task,
            "planned": None if planned is None else planned_json(planned),
        }
        return bool(self._query(sql, args)[0]["ok"])

    def delete(self, job_id: int, *, claim: int | None = None) -> bool:
        """Remove a job row (its input left the inbox); True when there was one."""
        sql = f"DELETE FROM {JOBS} WHERE id = %(id)s{fence(claim)}"
        return self._exec(sql, {"id": job_id, "claim": claim}) > 0

    def requeue(self, job_id: int, *, force: bool = False) -> bool:
        """Put a job back to queued with a fresh attempt count; False if it is leased or gone."""
        with self._tx() as db:
            return bool(self._requeue(db, "id = %(id)s", {"id": job_id}, force))

    def _requeue(self, db: Any, where: str, args: dict[str, Any], force: bool) -> set[int]:
        rows = self._run(
            db,
            f"UPDATE {JOBS} SET {REQUEUE_SET}, force = force OR %(force)s"
            f" WHERE ({where}) AND {NOT_LEASED} RETURNING id",
            {**args, "force": force},
        ).fetchall()
        ids = [int(r["id"]) for r in rows]
        if ids:
            self._forget(db, ids)
            db.execute(NOTIFY)
        return set(ids)

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
                # A cancel still on its way to a running job is taken back.
                self._run(
                    db,
                    f"UPDATE {JOBS} SET cancel = NULL WHERE {where} AND state = 'running'",
                    args,
                )
            for state in states:
                done |= self._requeue(db, "state = %(state)s", {"state": state.value}, force)
        return len(done)

    def prune_jobs(
        self, older_than: float, *, exists: Callable[[str], bool] = os.path.exists
    ) -> int:
        """Forget done and canceled jobs untouched for ``older_than`` seconds whose input has
        left the inbox; one host at a time (an advisory lock), only inboxes this host knows."""
        with self._tx() as db:
            got = db.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (LOCK_PRUNE,))
            lock = got.fetchone()
            if lock is None or not lock["ok"]:
                return 0
            rows = self._run(
                db,
                f"SELECT id, inbox, input FROM {JOBS} WHERE state IN ('done', 'canceled')"
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
                    f"DELETE FROM {JOBS} WHERE id = ANY(%(ids)s) AND state IN ('done', 'canceled')"
                    " AND updated_at < {now} - %(age)s",
                    {"ids": gone, "age": older_than},
                ).rowcount
            )
