"""File names: what a file in an inbox is (image, prompt, job, sidecar, mask …), what is ignored."""

from __future__ import annotations

import re
from enum import Enum

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


PROMPT_EXTENSIONS = (".txt", ".prompt", ".md")


DEFAULTS_NAME = "_defaults.toml"


# Seed 004's own tween job file, and named variants of it (``talk.expressions.json``).
EXPRESSIONS_NAME = "expressions.json"


def is_expressions_file(name: str) -> bool:
    """``expressions.json`` or ``NAME.expressions.json``: a tween job in seed 004's format."""
    return name == EXPRESSIONS_NAME or name.endswith("." + EXPRESSIONS_NAME)


def job_name(name: str) -> str:
    """The name of a job file's job: ``walk`` for ``walk.job.toml`` and
    ``walk.expressions.json``, ``expressions`` for ``expressions.json``."""
    for suffix in (".job.toml", "." + EXPRESSIONS_NAME):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name.rpartition(".")[0] or name


_IGNORED_SUFFIXES = (".part", ".crdownload", ".download", ".tmp")


_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})


# Masks are looked up by name; .png first because that is what the docs show.
MASK_SUFFIXES = tuple(".mask" + ext for e in IMAGE_EXTENSIONS for ext in (e, e.upper()))


class FileKind(Enum):
    """What a file in an inbox is, judged from its name alone."""

    image = "image"
    prompt = "prompt"
    job = "job"
    sidecar = "sidecar"
    defaults = "defaults"
    mask = "mask"
    other = "other"


INPUT_KINDS = frozenset({FileKind.image, FileKind.prompt, FileKind.job})


def classify(name: str) -> FileKind:
    """Classify a file name; image and prompt extensions are case-insensitive."""
    if name.endswith(".toml"):
        if name == DEFAULTS_NAME:
            return FileKind.defaults
        return FileKind.job if name.endswith(".job.toml") else FileKind.sidecar
    if is_expressions_file(name):
        return FileKind.job
    stem, dot, ext = name.lower().rpartition(".")
    if not dot:
        return FileKind.other
    ext = "." + ext
    if ext in IMAGE_EXTENSIONS:
        return FileKind.mask if stem.endswith(".mask") else FileKind.image
    return FileKind.prompt if ext in PROMPT_EXTENSIONS else FileKind.other


def is_ignored_name(name: str) -> bool:
    """True for hidden files, editor locks and the temporaries and conflict copies of sync tools."""
    if name.startswith((".", "~")):  # also .syncthing.*.tmp, ~syncthing~*.tmp, .~lock.*
        return True
    lower = name.lower()
    return (
        lower in _IGNORED_NAMES
        or lower.endswith(_IGNORED_SUFFIXES)
        or ".sync-conflict-" in lower
        or "conflicted copy" in lower
    )


# rsync writes .NAME.XXXXXX (six random letters and digits); Nextcloud and ownCloud download
# into .NAME.~1f2e3d; rsync --delay-updates stages into .~tmp~/, --partial-dir into
# .rsync-partial/.
_RSYNC_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9]{6}")
_NEXTCLOUD_TEMPORARY = re.compile(r"\..+\.~[0-9a-f]+")
_STAGING_FOLDERS = frozenset({".~tmp~", ".rsync-partial"})
_PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp")


def is_delivery_temporary(name: str) -> bool:
    """True for what a sync tool or browser writes while it delivers a file into a folder:
    Syncthing's ``.syncthing.*.tmp`` / ``~syncthing~*.tmp``, rsync's ``.NAME.XXXXXX`` and
    staging folders, unison's ``*.unison.tmp``, Nextcloud's ``.NAME.~hex``, ``*.part``,
    ``*.crdownload``, ``*.download`` (a Safari folder, too) and ``*.tmp``."""
    if name.lower().endswith(_PARTIAL_SUFFIXES):
        return True
    if not name.startswith("."):  # the rest are hidden names (asked of every file in a folder)
        return False
    return (
        name in _STAGING_FOLDERS
        or bool(_RSYNC_TEMPORARY.fullmatch(name))
        or bool(_NEXTCLOUD_TEMPORARY.fullmatch(name))
    )


def settle_group(name: str) -> str:
    """The stem an input shares with its sidecar and mask (``cat`` for ``cat.png``,
    ``cat.toml`` and ``cat.mask.png``); "" for ``_defaults.toml``, which concerns its folder."""
    if name == DEFAULTS_NAME:
        return ""
    stem = name.rpartition(".")[0] or name
    kind = classify(name)
    if kind is FileKind.mask:
        return stem[: -len(".mask")]
    if kind is FileKind.job:
        return stem[: -len(".job")]
    return stem


def is_ignored_dir(name: str) -> bool:
    """True for hidden folders, ``~*``, ``_*`` (``_done``, ``_failed``), and folders named
    like a temporary or a conflict copy: Safari downloads into a ``NAME.download`` folder."""
    return name.startswith("_") or is_ignored_name(name)


def sidecar_name(name: str) -> str | None:
    """``STEM.toml`` for ``STEM.ext``, unless that name means something else (a job, defaults)."""
    stem, dot, _ = name.rpartition(".")
    if not dot or not stem or stem == "_defaults" or stem.endswith(".job"):
        return None
    return stem + ".toml"
