"""The PostgreSQL schema of a cluster's shared job store, created and upgraded in versions.

Each entry of ``MIGRATIONS`` brings the schema from the version before it to its own; a
database is upgraded by the first host of a newer dropforge that opens it, under an advisory
lock so that hosts starting together do not race. A database newer than this dropforge is
refused with a message saying so. A later change adds a migration (``ALTER TABLE … ADD
COLUMN …``) and names the new columns in ``JOB_COLUMNS`` when jobs hand them out.
"""

from __future__ import annotations

from typing import Any

from daemon.errors import ConfigError

JOBS = "dropforge_jobs"
HOSTS = "dropforge_hosts"
SETTINGS = "dropforge_settings"
VERSION_TABLE = "dropforge_schema"
CLAIMS = "dropforge_claims"  # the sequence of fencing numbers
REVS = "dropforge_revs"  # the sequence of job revisions (what folder marks compare)
ATTEMPTS = "dropforge_attempts"
CHANNEL = "dropforge_jobs"  # LISTEN/NOTIFY: a job became runnable
CHANGES = "dropforge_changes"  # LISTEN/NOTIFY: a job row changed (``JobStore.revision``)

# Advisory lock keys (pg_advisory_*): one per cluster-wide activity.
LOCK_SCHEMA = 0x64660001
LOCK_PRUNE = 0x64660002

# The columns a Job is built from, in the order of ``rows.Job``.
JOB_COLUMNS = (
    "id, inbox, input, kind, fingerprint, job_key, out_dir, state, attempts, waits, error,"
    " not_before, created_at, updated_at, started_at, finished_at, seconds, lease_owner,"
    " lease_expires, progress_done, progress_total, progress_note, force, deps, claim,"
    " priority, position, cancel, task, planned, finished"
)

_V1 = [
    f"CREATE SEQUENCE {CLAIMS}",
    f"CREATE SEQUENCE {REVS}",
    # Times are seconds since the epoch from the database's clock (double precision), as
    # the embedded journal keeps them. ``folder`` is the input's folder ("" or "a/b/") and
    # ``rev`` changes with every change a folder mark depends on (see cluster.py).
    f"""CREATE TABLE {JOBS} (
        id bigserial PRIMARY KEY, inbox text NOT NULL, input text NOT NULL,
        folder text NOT NULL, kind text NOT NULL, fingerprint text NOT NULL,
        job_key text NOT NULL, out_dir text NOT NULL, state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0, waits integer NOT NULL DEFAULT 0, error text,
        not_before double precision, created_at double precision NOT NULL,
        updated_at double precision NOT NULL, started_at double precision,
        finished_at double precision, seconds double precision, lease_owner text,
        lease_expires double precision, progress_done integer NOT NULL DEFAULT 0,
        progress_total integer NOT NULL DEFAULT 0, progress_note text NOT NULL DEFAULT '',
        force boolean NOT NULL DEFAULT false, deps text NOT NULL DEFAULT '[]',
        claim bigint NOT NULL DEFAULT 0, rev bigint NOT NULL DEFAULT nextval('{REVS}'),
        UNIQUE (inbox, input)
    )""",
    # Claims read this index in arrival order and skip rows other hosts hold.
    f"CREATE INDEX {JOBS}_runnable ON {JOBS} (id) WHERE state IN ('queued', 'waiting')",
    f"CREATE INDEX {JOBS}_running ON {JOBS} (lease_owner) WHERE state = 'running'",
    f"CREATE INDEX {JOBS}_state_updated ON {JOBS} (state, updated_at)",
    f"CREATE INDEX {JOBS}_folder ON {JOBS} (inbox, folder)",
    f"""CREATE FUNCTION {JOBS}_revise() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF (NEW.state, NEW.fingerprint, NEW.job_key, NEW.out_dir, NEW.force, NEW.deps)
           IS DISTINCT FROM (OLD.state, OLD.fingerprint, OLD.job_key, OLD.out_dir, OLD.force,
                             OLD.deps) THEN
            NEW.rev := nextval('{REVS}');
        END IF;
        RETURN NEW;
    END $$""",
    f"""CREATE TRIGGER {JOBS}_revise BEFORE UPDATE ON {JOBS}
        FOR EACH ROW EXECUTE FUNCTION {JOBS}_revise()""",
    # One row per worker process of the cluster (``owner`` as in leases), beaten every few
    # seconds; a row whose beat is older than the host timeout is a dead host.
    f"""CREATE TABLE {HOSTS} (
        owner text PRIMARY KEY, host text NOT NULL, pid integer NOT NULL,
        device text NOT NULL, version text NOT NULL, settings text NOT NULL,
        started_at double precision NOT NULL, beat_at double precision NOT NULL,
        job_id bigint, job_input text
    )""",
    # The settings every host must share, one row per key, registered by the first host.
    f"""CREATE TABLE {SETTINGS} (
        key text PRIMARY KEY, value text NOT NULL, host text NOT NULL
    )""",
]

# 2: queue control (priorities, positions, cancel requests, planned and finished outputs),
# every claim of a job with how far it got (attempts), and a notification on every change of
# a job row, which ``revision`` counts (other processes and the web UI hear cancels, priority
# changes and progress through it).
_V2 = [
    f"ALTER TABLE {JOBS} ADD COLUMN priority integer NOT NULL DEFAULT 0",
    f"ALTER TABLE {JOBS} ADD COLUMN position double precision",
    f"ALTER TABLE {JOBS} ADD COLUMN cancel text",
    f"ALTER TABLE {JOBS} ADD COLUMN task text NOT NULL DEFAULT ''",
    f"ALTER TABLE {JOBS} ADD COLUMN planned text NOT NULL DEFAULT '[]'",
    f"ALTER TABLE {JOBS} ADD COLUMN finished text NOT NULL DEFAULT '[]'",
    # Claims take the highest priority first, then the position (NULL: arrival, the id).
    f"DROP INDEX {JOBS}_runnable",
    f"""CREATE INDEX {JOBS}_runnable ON {JOBS}
        (priority DESC, (coalesce(position, id::float8)))
        WHERE state IN ('queued', 'waiting')""",
    f"""CREATE TABLE {ATTEMPTS} (
        job_id bigint NOT NULL REFERENCES {JOBS} (id) ON DELETE CASCADE,
        number integer NOT NULL, owner text, started_at double precision NOT NULL,
        ended_at double precision, ended text NOT NULL DEFAULT 'running',
        stage text NOT NULL DEFAULT 'preparing', outputs integer NOT NULL DEFAULT 0,
        total integer NOT NULL DEFAULT 0, steps integer NOT NULL DEFAULT 0,
        note text NOT NULL DEFAULT '', counted boolean NOT NULL DEFAULT false,
        start_outputs integer, PRIMARY KEY (job_id, number)
    )""",
    f"""CREATE FUNCTION {JOBS}_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANGES}', '');
        RETURN NULL;
    END $$""",
    f"""CREATE TRIGGER {JOBS}_changed AFTER INSERT OR UPDATE OR DELETE ON {JOBS}
        FOR EACH ROW EXECUTE FUNCTION {JOBS}_changed()""",
]

MIGRATIONS: list[list[str]] = [_V1, _V2]
SCHEMA_VERSION = len(MIGRATIONS)


def ensure_schema(conn: Any, where: str) -> int:
    """Create or upgrade the schema in ``conn``'s database; return the version found before.

    Raises ConfigError when the database is newer than this dropforge.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_SCHEMA,))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer NOT NULL)")
        row = conn.execute(f"SELECT max(version) AS v FROM {VERSION_TABLE}").fetchone()
        found = int(row["v"] or 0)
        if found > SCHEMA_VERSION:
            raise ConfigError(
                f"{where}: the database holds job-store schema {found}, newer than this "
                f"dropforge's ({SCHEMA_VERSION}): upgrade dropforge on this host"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (version,))
    return found
