"""The state of one survey pass: what it read from the journal in bulk and what it writes at
its end (seen marks, output stamps, signatures, folder marks)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from daemon.config import InboxConfig, Settings
from daemon.intake.candidates import Candidate
from daemon.intake.names import DEFAULTS_NAME
from daemon.intake.scan import ListedFolder
from daemon.planning.keys import settings_fingerprint
from daemon.store.protocols import Journal
from daemon.store.rows import FolderMark, JobDigest, stat_key
from daemon.survey.marks import FolderMarks, digest

_State = TypeVar("_State", bound="PassState")


@dataclass
class PassState:
    """What one survey of many candidates (a scan or rescan) has read and will write, so that
    each candidate costs less than a lone ``survey``.

    Each inbox's settings fingerprint is computed once, each ``_defaults.toml`` stat'ed once,
    the stat cache is read without a write per file (the seen marks, output stamps and
    signatures go in one transaction at ``close``). With ``bulk``, the jobs, the stat cache,
    the output stamps and the signatures of verified inputs are read in one query each, so an
    unchanged done input costs two stats and dictionary look-ups (see ``done_by_digest``).
    Use it as a context manager.
    """

    settings: Settings
    journal: Journal
    bulk: bool = False
    dry: bool = False  # `once --dry-run`: nothing is written to the output tree either
    _settings_fp: dict[str, str] = field(default_factory=dict)
    _shared_stats: dict[Path, os.stat_result] = field(default_factory=dict)
    _seen: list[str] = field(default_factory=list)
    _stamps: list[tuple[str, str, str | None]] = field(default_factory=list)
    _jobs: dict[str, dict[str, JobDigest]] = field(default_factory=dict)
    _hashes: dict[str, tuple[int, int, str, str]] | None = None
    _known_stamps: dict[str, tuple[str, str]] | None = None
    _signatures: dict[str, dict[str, str]] = field(default_factory=dict)
    _new_signatures: list[tuple[str, str, str]] = field(default_factory=list)
    _keys: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # of one candidate
    # (inbox, rel) → (fingerprint, watch items with their keys) of inputs verified done
    _verified: dict[tuple[str, str], tuple[str, list[tuple[str, str]]]] = field(
        default_factory=dict
    )
    _new_marks: list[tuple[str, FolderMark, dict[str, str]]] = field(default_factory=list)
    current: tuple[Path, os.stat_result] | None = None  # the candidate being surveyed

    def __enter__(self: _State) -> _State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def folder_marks(self, inbox: InboxConfig) -> FolderMarks:
        """The folder marks of one inbox, to pass to its scan as the shortcut."""
        return FolderMarks(self.journal, inbox, self.settings_fp(inbox.default_task))

    def settings_fp(self, default_task: str) -> str:
        """``settings_fingerprint`` of an inbox's default task, computed once per pass."""
        found = self._settings_fp.get(default_task)
        if found is None:
            found = self._settings_fp[default_task] = settings_fingerprint(
                self.settings, default_task
            )
        return found

    def stat(self, path: Path) -> os.stat_result:
        """``os.stat``, taken once per pass for a ``_defaults.toml`` (shared by many inputs)
        and once per candidate for the candidate's own file."""
        current = self.current
        if current is not None and (current[0] is path or current[0] == path):
            return current[1]
        if path.name != DEFAULTS_NAME:
            return os.stat(path)
        st = self._shared_stats.get(path)
        if st is None:
            st = self._shared_stats[path] = os.stat(path)
        return st

    def hash_file(self, path: Path) -> str:
        """The journal's ``hash_file``, with the stat-cache hit path read-only.

        The stats behind the hashes given out are kept (``_keys``) until the next candidate,
        so that a signature records exactly the file versions that were verified.
        """
        st = self.stat(path)
        key = str(path)
        if self.bulk:
            if self._hashes is None:
                self._hashes = self.journal.cached_hashes()
            cached = self._hashes.get(key)
            sha = cached[3] if cached is not None and cached[:3] == stat_key(st) else None
        else:
            sha = self.journal.cached_hash(path, st)
        if sha is None:
            return self.journal.hash_file(path)  # read: no signature from this candidate
        self._seen.append(key)
        self._keys[key] = stat_key(st)
        return sha

    def hashed_keys(self, paths: Iterable[Path]) -> list[tuple[int, int, str] | None]:
        """The stats behind the hashes given out for ``paths`` since ``forget_hashed``."""
        return [self._keys.get(str(p)) for p in paths]

    def forget_hashed(self) -> None:
        """Start a new candidate: forget the stats behind earlier hashes."""
        self._keys.clear()

    def signature(self, inbox: str, rel: str) -> str | None:
        """The signature recorded when ``rel`` was last verified done (bulk passes only)."""
        known = self._signatures.get(inbox)
        if known is None:
            known = self._signatures[inbox] = self.journal.verified_signatures(inbox)
        return known.get(rel)

    def note_signature(self, inbox: str, rel: str, signature: str) -> None:
        """Record a verified input's signature at ``close``."""
        self._new_signatures.append((inbox, rel, signature))

    def digest(self, inbox: str, rel: str) -> JobDigest | None:
        """The compared columns of an input's job (bulk passes only)."""
        jobs = self._jobs.get(inbox)
        if jobs is None:
            jobs = self._jobs[inbox] = self.journal.job_digests(inbox)
        return jobs.get(rel)

    def stamp_matches(self, out_dir: str, job_key: str, stamp: str | None) -> bool:
        """Whether ``stamp`` is the one recorded for ``out_dir`` holding ``job_key``'s outputs."""
        if stamp is None:
            return False
        if not self.bulk:
            return self.journal.output_stamp(out_dir, job_key) == stamp
        if self._known_stamps is None:
            self._known_stamps = self.journal.output_stamps()
        return self._known_stamps.get(out_dir) == (job_key, stamp)

    def note_stamp(self, out_dir: str, job_key: str, stamp: str | None) -> None:
        """Record an output folder's stamp at ``close``."""
        self._stamps.append((out_dir, job_key, stamp))

    def note_verified(
        self,
        candidate: Candidate,
        fingerprint: str,
        out_dir: str,
        stamp: str | None,
        extras: Iterable[Path],
        keys: Iterable[tuple[int, int, str] | None],
    ) -> None:
        """A candidate was found done: remember what that rested on beyond its own folder
        (its output folder's stamp, the stats of its dependencies elsewhere) for ``mark``."""
        items = [("d" + out_dir, stamp)]
        items += [
            ("f" + str(p), k and f"{k[0]}:{k[1]}:{k[2]}") for p, k in zip(extras, keys, strict=True)
        ]
        if all(key is not None for _item, key in items):
            verified = [(item, str(key)) for item, key in items]
            self._verified[(str(candidate.inbox.path), candidate.rel)] = (fingerprint, verified)

    def mark(self, marks: FolderMarks, folders: Iterable[ListedFolder]) -> None:
        """Mark (at ``close``) each listed folder whose inputs this pass all found done."""
        inbox = str(marks.inbox.path)
        for folder in folders:
            found = self._folder_mark(inbox, marks, folder)
            if found is not None:
                self._new_marks.append((inbox, *found))

    def _folder_mark(
        self, inbox: str, marks: FolderMarks, folder: ListedFolder
    ) -> tuple[FolderMark, dict[str, str]] | None:
        """A folder's mark and its inputs' verified fingerprints; None unless this pass found
        every input in it done."""
        if folder.listing is None:
            return None
        watch: dict[str, str] = {}
        fingerprints: dict[str, str] = {}
        for rel in folder.inputs:
            found = self._verified.get((inbox, rel))
            if found is None:
                return None
            fingerprints[rel] = found[0]
            for item, key in found[1]:
                if watch.setdefault(item, key) != key:
                    return None  # one path verified twice, changed in between
        items = sorted(watch)
        mark = FolderMark(
            folder=folder.prefix,
            listing=marks.listing(folder.listing),
            near=folder.near,
            watch="\0".join(items),
            watched=digest("\0".join(watch[i] for i in items)),
            parts=folder.parts.to_json(),
            inputs=len(folder.inputs),
        )
        return mark, fingerprints

    def close(self) -> None:
        """Write the seen marks, output stamps, signatures and folder marks gathered."""
        if self._seen:
            self.journal.touch_files(self._seen)
            self._seen.clear()
        if self._stamps:
            self.journal.set_output_stamps(self._stamps)
            self._stamps.clear()
        if self._new_signatures:
            self.journal.set_verified_signatures(self._new_signatures)
            self._new_signatures.clear()
        if self._new_marks:
            self.journal.set_folder_marks(self._new_marks)
            self._new_marks.clear()
