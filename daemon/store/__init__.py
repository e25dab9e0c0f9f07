"""The journal: jobs and their states (``JobStore``) and this host's scan cache (``ScanCache``).

``protocols`` defines both seams, ``Journal`` (the two together) and ``HostRegistry`` (the
hosts of a cluster); ``rows`` the values they hand out; ``sqlite`` the embedded implementation
in ``state_dir/journal.sqlite3`` (one file, WAL, local disk); ``cluster`` the shared one of
several hosts: jobs and hosts in PostgreSQL (``postgres``, ``pg_claims``, ``pg_rows``,
``pg_base``, ``pg_schema``,
``pg_hosts``, the driver imported only there) with the SQLite scan cache, ``portable``
translating this host's paths to the names the shared rows hold. ``open`` picks one. Every
job store passes the contract tests (``tests/test_store_contract.py``).
"""
