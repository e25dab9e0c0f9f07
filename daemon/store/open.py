"""Opening the journal that the settings name: the embedded SQLite file in ``state_dir``, or,
with ``[cluster] database``, the shared PostgreSQL job store paired with a local scan cache
(its driver imported only then)."""

from __future__ import annotations

import time

from daemon.config import Settings
from daemon.errors import ConfigError
from daemon.store.protocols import Journal
from daemon.store.sqlite import SqliteJournal
from daemon.values import Clock


def open_journal(settings: Settings, *, clock: Clock | None = None) -> Journal:
    """The job store and scan cache of these settings, open (close it, or use ``with``).

    ``clock`` replaces the store's clock (tests); a cluster otherwise keeps the database's.
    """
    if settings.cluster is None:
        return SqliteJournal(settings.journal_path, clock=clock or time.time)
    try:
        from daemon.store.cluster import ClusterJournal, cache_path
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"[cluster] database needs the PostgreSQL driver ({exc.name} is not installed): "
            'pip install "dropforge[cluster]"'
        ) from None
    from daemon.store.portable import InboxPlace, PortablePaths

    paths = PortablePaths(InboxPlace(i.name, str(i.path), str(i.output)) for i in settings.inboxes)
    # The plain wall clock is what callers pass by default: a cluster's times come from the
    # database's clock instead (an injected test clock is kept).
    injected = None if clock is time.time else clock
    return ClusterJournal(
        settings.cluster.database,
        paths,
        cache_path(settings.state_dir),
        clock=injected,
        host_timeout=settings.cluster.host_timeout,
    )


def open_journal_copy(settings: Settings, *, clock: Clock = time.time) -> Journal:
    """A private in-memory copy of the journal (empty when there is none yet): the survey runs
    on it as on the real one, and nothing reaches ``state_dir`` (``once --dry-run``).

    In a cluster: a copy of this host's scan cache holding the shared jobs as they are now
    (read from the database, nothing written there)."""
    if settings.cluster is None:
        return SqliteJournal(settings.journal_path, clock=clock, copy=True)
    from daemon.store.cluster import cache_path

    with open_journal(settings) as shared:
        jobs = shared.jobs(limit=2**31)
    copy = SqliteJournal(cache_path(settings.state_dir), clock=clock, copy=True)
    copy.import_jobs(jobs)
    return copy
