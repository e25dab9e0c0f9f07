"""The running daemon: the worker that claims and runs jobs, its loop, the watcher that turns
file-system events into surveyed inputs, recovery after a crash, ``dropforge once``, the service
with its APScheduler maintenance, and systemd (sd_notify, unit files). ``inspect`` answers
``check``, ``status`` and ``retry`` without generating.
"""
