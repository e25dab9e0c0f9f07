"""Output folders a job may write to: below its output root, and not another input's."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from daemon.outputs.manifest import read_manifest


def escaping_output(root: Path, folders: Sequence[Path], rel: str) -> str | None:
    """Why one of a job's output ``folders`` is reached through a symlink below the output
    ``root``, or None. ``rel`` names the input in the message.

    The output root is often a synced folder others can write to: a folder there replaced
    by a symlink must not let the daemon write (or mkdir) anywhere else.
    """
    real_root = os.path.realpath(root)
    for folder in folders:
        below = os.path.relpath(folder, root)
        # Any symlink below the root makes the real path differ from the spelled one.
        if os.path.realpath(folder) != os.path.normpath(os.path.join(real_root, below)):
            return (
                f"{rel}: output folder {Path(below).as_posix()} goes through "
                f"a symlink, which could lead outside {root}: remove the symlink; the job "
                "resumes by itself"
            )
    return None


def foreign_output(root: Path, out_dir: Path, rel: str) -> str | None:
    """Why ``out_dir`` belongs to another input than ``rel`` (``cat.png`` and ``cat.txt``), or
    None.

    Both would write ``OUT/cat``, and each run would delete the other's outputs as obsolete;
    the first input to finish keeps the folder.
    """
    old = read_manifest(out_dir)
    other = old.input.path if old is not None and old.input is not None else None
    if other is None or other == rel:
        return None
    below = Path(os.path.relpath(out_dir, root)).as_posix()
    return (
        f"{rel}: output folder {below} already holds the outputs of "
        f"{other}: rename one of the two inputs (or remove that folder)"
    )
