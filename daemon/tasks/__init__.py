"""Tasks: one module per task type, each with the planner and the runner of its jobs.

``prepare`` turns a candidate into a ``Prepared`` job (its plan, or the error a user must fix)
and hands task-specific planning to ``registry.TASKS``; ``images`` (text2image, variations,
inpaint), ``mesh`` and ``tween`` (with ``sequences``, its planner) run jobs through a
``context.JobContext`` — settings, generator, stop check, clock, progress sink and space check —
and write their outputs and manifest through ``daemon.outputs``.
"""
