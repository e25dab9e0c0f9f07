"""The exception hierarchy: every error dropforge raises on purpose derives from DropforgeError."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def show_value(value: Any) -> str:
    """Render a user-supplied value the way it was written in TOML (strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """Return ``, did you mean X?`` for a close match among ``choices``, else an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f", did you mean {close[0]}?" if close else ""


def about(file: str, message: str) -> str:
    """A message as a line that already names ``file`` shows it: without ``file: `` again
    (``[failed] broken.png: not a readable image``, not ``broken.png: broken.png: …``)."""
    prefix = f"{file}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


class DropforgeError(Exception):
    """Base of every error dropforge raises on purpose."""


class ConfigError(DropforgeError):
    """config.toml (or a command-line argument) is unusable; the CLI exits 2."""


class InputError(DropforgeError):
    """An input, sidecar or mask is bad: the job fails until the user changes it.

    The message names the file, the key, the rule and the value, e.g.
    ``cat.toml: count must be 1..20, got 50``.
    """

    def __init__(
        self,
        file: str,
        message: str,
        *,
        key: str | None = None,
        rule: str | None = None,
        value: Any = None,
    ) -> None:
        self.file = file
        self.key = key
        self.rule = rule
        self.value = value
        super().__init__(f"{file}: {message}")

    @classmethod
    def bad_value(cls, file: str, key: str, rule: str, value: Any) -> InputError:
        """Build the standard ``FILE: KEY must be RULE, got VALUE`` error."""
        return cls(
            file,
            f"{key} must be {rule}, got {show_value(value)}",
            key=key,
            rule=rule,
            value=value,
        )


class TransientError(DropforgeError):
    """The cause lies outside the input; the job goes to ``waiting`` and is retried."""


class ModelUnavailable(TransientError):
    """The configured model is not on this machine and may not be downloaded now."""


class OutOfMemory(TransientError):
    """Generation ran out of memory after every fallback."""


class DiskFull(TransientError):
    """Free space is below ``min_free_mb`` or a write failed with ENOSPC."""


class Interrupted(DropforgeError):
    """A stop was requested; the running job is requeued and keeps its finished outputs."""


class LeaseLost(Interrupted):
    """Another worker holds the job now (this one froze or lost its lease): write nothing more."""

    def __init__(self, job_id: int, claim: int) -> None:
        self.job_id = job_id
        self.claim = claim
        super().__init__(f"job {job_id}: claim {claim} is no longer the job's live claim")


class DependencyMissing(DropforgeError):
    """A file a job depends on vanished between the scan and the hashing."""


class FileChangedError(DropforgeError):
    """A file changed while it was hashed: it is still being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path}: changed while it was being read (still being written?)")


class JobNotFound(DropforgeError, LookupError):
    """No job with this id is in the job store (its input left the inbox, or it was pruned)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id} in the journal")


class NoSurface(DropforgeError):
    """The mesh model's field never crosses the surface level: there is no mesh to extract."""


class NotAnOutput(DropforgeError, LookupError):
    """A review command names a file that is not an output dropforge can show, rate or redo."""

    def __init__(self, path: Path | str, why: str) -> None:
        self.path = path
        super().__init__(f"{path}: {why}")
