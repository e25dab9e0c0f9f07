"""The journal: jobs and their states (``JobStore``) and this host's scan cache (``ScanCache``).

``protocols`` defines both seams and ``Journal``, the two together; ``rows`` the values they
hand out; ``sqlite`` the embedded implementation in ``state_dir/journal.sqlite3`` (one file,
WAL, local disk). A second job-store backend is a module here implementing ``JobStore``, and
must pass the contract tests (``tests/test_store_contract.py``).
"""
