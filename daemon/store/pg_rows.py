"""Shared job rows read from PostgreSQL and translated to this host's paths (see
``protocols.JobStore``); the base of the cluster's job store (``postgres``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from daemon.errors import JobNotFound
from daemon.store.pg_base import PostgresDatabase
from daemon.store.pg_schema import CHANNEL, JOB_COLUMNS, JOBS
from daemon.store.portable import OUTPUT
from daemon.store.rows import Job, JobDigest
from daemon.values import JobState

# The columns a requeue resets, the rows a requeue may not touch, the wake-up of idle hosts.
REQUEUE_SET = """state = 'queued', attempts = 0, waits = 0, error = NULL, not_before = NULL,
    lease_owner = NULL, lease_expires = NULL, progress_done = 0, progress_total = 0,
    progress_note = '', updated_at = {now}"""
NOT_LEASED = "NOT (state = 'running' AND coalesce(lease_expires, 0) > {now})"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"


def fence(claim: int | None) -> str:
    """The condition a write of a claimed job adds: that claim is still the live one."""
    return "" if claim is None else " AND state = 'running' AND claim = %(claim)s"


def folder_of(input: str) -> str:
    """The folder an input lies in: "" or "a/b/" (what folder marks are kept for)."""
    head, sep, _ = input.rpartition("/")
    return head + sep


class PostgresRows(PostgresDatabase):
    """Reading the shared jobs table."""

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

    # --- reading ------------------------------------------------------------------------

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
