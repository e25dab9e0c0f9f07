"""The table of task types: each ``Task`` → the module that plans and runs its jobs.

A new task type is a module with ``plan(draft)`` and ``run(ctx, prepared, force, started)``
(see ``context.TaskKind``), a member of ``daemon.values.Task`` and a line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from daemon.tasks import images, mesh, tween
from daemon.tasks.context import TaskKind
from daemon.values import Task

TASKS: Mapping[Task, TaskKind] = {
    Task.text2image: images,
    Task.variations: images,
    Task.inpaint: images,
    Task.mesh: mesh,
    Task.tween: tween,
}
