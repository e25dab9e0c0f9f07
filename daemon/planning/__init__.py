"""Planning, pure: a candidate and its sidecars → typed parameters and the plan model.

``params`` layers config defaults, presets and sidecars into a frozen ``Params`` (each key's
rule in ``checks``); ``keys`` holds the hashes and seed rules that make job keys stable;
``inputs`` hashes an input's dependencies through the stat cache; ``model`` is the ``Plan``
a task's planner (``daemon.tasks``) builds and the worker runs.
"""
