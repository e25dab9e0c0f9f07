"""Output folders a job may write to: below its output root, and not another input's."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.manifest import read_manifest
from daemon.prepare import Prepared


def escaping_output(prepared: Prepared) -> str | None:
    """Why a job's output folders are reached through a symlink below the output root, or None.

    The output root is often a synced folder others can write to: a folder there replaced
    by a symlink must not let the daemon write (or mkdir) anywhere else.
    """
    root = prepared.candidate.inbox.output
    real_root = os.path.realpath(root)
    folders = [prepared.out_dir]
    if prepared.plan is not None:
        folders += [s.out_dir for s in prepared.plan.sequences]
    for folder in folders:
        below = os.path.relpath(folder, root)
        # Any symlink below the root makes the real path differ from the spelled one.
        if os.path.realpath(folder) != os.path.normpath(os.path.join(real_root, below)):
            return (
                f"{prepared.candidate.rel}: output folder {Path(below).as_posix()} goes through "
                f"a symlink, which could lead outside {root}: remove the symlink; the job "
                "resumes by itself"
            )
    return None


def foreign_output(prepared: Prepared) -> str | None:
    """Why a job's output folder belongs to another input (``cat.png`` and ``cat.txt``), or None.

    Both would write ``OUT/cat``, and each run would delete the other's outputs as obsolete;
    the first input to finish keeps the folder.
    """
    old = read_manifest(prepared.out_dir)
    source = old.get("input") if old else None
    other = source.get("path") if isinstance(source, dict) else None
    if not isinstance(other, str) or other == prepared.candidate.rel:
        return None
    below = Path(os.path.relpath(prepared.out_dir, prepared.candidate.inbox.output)).as_posix()
    return (
        f"{prepared.candidate.rel}: output folder {below} already holds the outputs of "
        f"{other}: rename one of the two inputs (or remove that folder)"
    )
