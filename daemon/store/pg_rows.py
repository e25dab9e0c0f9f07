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
from daemon.store.rows import Job, JobDigest, PlannedFile
from daemon.values import CancelReason, JobState

# The columns a requeue resets, the rows a requeue may not touch, the wake-up of idle hosts.
REQUEUE_SET = """state = 'queued', attempts = 0, waits = 0, error = NULL, not_before = NULL,
    lease_owner = NULL, lease_expires = NULL, progress_done = 0, progress_total = 0,
    progress_note = '', cancel = NULL, finished = '[]', updated_at = {now}"""
NOT_LEASED = "NOT (state = 'running' AND coalesce(lease_expires, 0) > {now})"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
# A job's place among jobs of its priority: a position set by a move, else its arrival.
ORDER = "coalesce(position, id::float8)"
RUNNABLE = "state IN ('queued', 'waiting')"


def fence(claim: int | None, table: str = "") -> str:
    """The condition a write of a claimed job adds: that claim is still the live one
    (``table`` qualifies the columns, e.g. ``j.``)."""
    if claim is None:
        return ""
    return f" AND {table}state = 'running' AND {table}claim = %(claim)s"


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
        values["planned"] = tuple(PlannedFile(f, s) for f, s in json.loads(row["planned"]))
        values["finished"] = tuple(json.loads(row["finished"]))
        values["cancel"] = CancelReason(row["cancel"]) if row["cancel"] else None
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

    def recent_cancels(self, limit: int = 10) -> list[Job]:
        """Canceled jobs, newest first."""
        return self._jobs(
            self._query(
                f"SELECT * FROM {JOBS} WHERE state = 'canceled'"
                " ORDER BY updated_at DESC, id DESC LIMIT %(n)s",
                {"n": limit},
            )
        )

    def running(self) -> list[Job]:
        """Jobs in state running, in arrival order."""
        return self.jobs([JobState.running])

    def queue(self, limit: int = 100) -> list[Job]:
        """Queued jobs in the order they will be claimed."""
        return self._jobs(
            self._query(
                f"SELECT * FROM {JOBS} WHERE state = 'queued'"
                f" ORDER BY priority DESC, {ORDER} LIMIT %(n)s",
                {"n": limit},
            )
        )

    def active_in_folder(self, inbox: str, folder: str) -> int:
        """Jobs queued, running or waiting whose input lies directly in ``folder`` ("" or
        "a/b/") of ``inbox``: a drop is finished when none is left."""
        rows = self._query(
            f"SELECT count(*) AS n FROM {JOBS} WHERE state IN ('queued', 'running', 'waiting')"
            " AND inbox = %(inbox)s AND folder = %(folder)s",
            {"inbox": self.paths.inbox_name(inbox), "folder": folder},
        )
        return int(rows[0]["n"])

    def active_folders(self, limit: int = 1000) -> dict[tuple[str, str], int]:
        """(inbox, folder) → how many jobs there are queued, running or waiting: the drops
        still in progress."""
        rows = self._query(
            f"SELECT inbox, folder, count(*) AS n FROM {JOBS}"
            " WHERE state IN ('queued', 'running', 'waiting') GROUP BY inbox, folder"
            " LIMIT %(n)s",
            {"n": limit},
        )
        return {(self.paths.inbox_path(r["inbox"]), r["folder"]): int(r["n"]) for r in rows}
