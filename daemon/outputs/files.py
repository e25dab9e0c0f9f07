"""Atomic writes (a hidden temporary, fsync, rename), stale temporaries, and file hashes."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from daemon.errors import DiskFull

TEMP_MARKER = ".dropforge-tmp-"


# `.{name}.dropforge-tmp-{hex}`, or `.{name}.dropforge-tmp-{claim}-{hex}` when a worker wrote
# it under a claim: anchored so a user's file that merely mentions the marker is never taken
# for one of ours.
_TEMP_RE = re.compile(r"^\..+" + re.escape(TEMP_MARKER) + r"(?:(\d+)-)?[0-9a-f]{8,}$")


@dataclass(frozen=True)
class WriteFence:
    """What a worker's writes carry: its claim number in every temporary's name, and a check
    that must pass right before each rename (the claim is still the job's live one)."""

    claim: int
    check: Callable[[], None]  # raises (LeaseLost) when the claim was lost


_FENCE: contextvars.ContextVar[WriteFence | None] = contextvars.ContextVar(
    "dropforge_write_fence", default=None
)


@contextlib.contextmanager
def fenced_writes(fence: WriteFence) -> Iterator[None]:
    """Within this block (on this thread), every atomic write is fenced by ``fence``."""
    token = _FENCE.set(fence)
    try:
        yield
    finally:
        _FENCE.reset(token)


_CHUNK = 1 << 20


@dataclass(frozen=True)
class OutputFile:
    """A file written to the output tree, as recorded in the manifest's ``outputs``."""

    file: str  # the name inside its folder
    sha256: str
    bytes: int


def atomic_write(
    path: Path, write: Callable[[IO[bytes]], None], *, sync_folder: bool = True
) -> None:
    """Stream a file into place atomically: ``write`` fills a hidden temporary beside ``path``.

    Readers (and sync tools) see either the old file or the whole new one, never a part.
    On any error the temporary is removed and the error re-raised; running out of space
    raises DiskFull. The file's data is always synced; ``sync_folder=False`` leaves the
    folder's fsync (what makes the rename survive a power loss) to a later write in the same
    folder, as the worker does for a job's images: its manifest's write syncs them all.
    """
    try:
        _write_and_replace(path, write, sync_folder)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFull(f"no space left writing {path}") from err
        if err.errno == getattr(errno, "EDQUOT", None):
            raise DiskFull(f"disk quota exceeded writing {path}") from err
        raise


def atomic_write_bytes(path: Path, data: bytes, *, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temporary, fsync, os.replace, folder fsync)."""

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    atomic_write(path, write, sync_folder=sync_folder)


def _write_and_replace(
    path: Path, write: Callable[[IO[bytes]], None], sync_folder: bool = True
) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fence = _FENCE.get()
    tag = "" if fence is None else f"{fence.claim}-"
    temporary = folder / f".{path.name}{TEMP_MARKER}{tag}{secrets.token_hex(4)}"
    # 0o666 (less the umask) like any other new file: outputs are for people and sync tools.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    descriptor = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if fence is not None:
            fence.check()  # a worker that lost its claim must not replace the new owner's file
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if sync_folder:
        _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable. Windows cannot open folders, and some filesystems
    # refuse fsync on them; the file's own data is already synced, so skipping is safe.
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def remove_stale_temporaries(root: Path, claims: Container[int] | None = None) -> list[Path]:
    """Delete the temporaries a crashed write left anywhere under ``root``; return them.

    With ``claims``, only those written under one of these claim numbers (the claims of
    dead or superseded workers, never a live worker's) and untagged ones (older versions).
    """
    removed: list[Path] = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            match = _TEMP_RE.match(name)
            if match is None:
                continue
            if claims is not None and match[1] is not None and int(match[1]) not in claims:
                continue
            path = Path(folder, name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return sorted(removed)


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(_CHUNK):
            digest.update(piece)
    return digest.hexdigest()
