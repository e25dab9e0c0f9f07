"""Check that the README's five-minute walk-through behaves identically on two versions.

    python scripts/compare_walkthrough.py [--base REF] [--head REF] [--keep]

``--base`` defaults to the merge-base of HEAD and ``origin/main`` (``HEAD~1`` without that
remote branch); ``--head`` defaults to the working tree, uncommitted changes included. A ref
is checked out with ``git worktree add --detach`` into a temporary folder.

Each side runs the walk-through of README.md ("Five-minute walk-through (offline, tiny
model)"), minus the blocking ``dropforge run``, as ``python -m daemon …`` with ``PYTHONPATH``
set to that side's code, in one scratch folder whose absolute path is the same for both sides
(model paths enter job keys and manifests): the base side runs, its folder is moved aside, the
head side runs in the same place. The input images are deterministic noise written by this
script, byte-identical for both sides.

Compared: the outbox after every ``once`` (file set, sha256 of every file but manifest.json,
with the pixels and PNG text chunks of any PNG that differs), every manifest.json parsed with
``timings`` and ``versions`` removed (key order of the manifest and of ``params`` is a
warning), the inbox and the files of ``tiny-model``, the exit code and normalised stdout
(timings masked) of every command, and the failed manifest the bad sidecar leaves. A finding
that recurs unchanged in a later outbox snapshot is counted once. Differences in stderr
(library warnings) and README expectations that both sides miss are warnings. The last line
is ``IDENTICAL`` (exit 0) or ``DIFFERENT: N differences`` (exit 1); exit 2 when the comparison
itself cannot run (a ref that names no commit, ``import daemon`` finding other code).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

# --- the walk-through, as README.md writes it ----------------------------------------------

TINY_TOML = """\
[daemon]
state_dir = ".dropforge"
device = "cpu"

[[inbox]]
path = "inbox"
output = "outbox"

[models]
default = "models/sd"
mesh = "models/mesh"

[loras]
tiny = "models/lora.safetensors"

[defaults]
width = 64
height = 64
strength = 0.5

[presets.standard]
steps = 2
mesh_resolution = 64
"""

TEXT_INPUTS: dict[str, str] = {
    "story.md": "A lighthouse at dusk\n\n* * *\n\nA storm over the harbour\n",
    "story.toml": "count = 2\nseed = 7\n",
    "cat.toml": 'count = 3\nseed = 100\nprompt = "a watercolor cat"\nlora = "tiny"\n',
    "chair.toml": 'task = "mesh"\nformats = ["glb", "ply"]\n',
    "walk/walk.job.toml": 'start = "a.png"\nend = "b.png"\ndepth = 2\n',
}
BAD_SIDECAR = ("cat.toml", "cuont = 2\n")

# Image inputs: (path in the inbox, noise seed). README uses Image.effect_noise, which is random.
IMAGE_INPUTS: dict[str, int] = {
    "cat.png": 64,
    "chair.png": 32,
    "walk/a.png": 64,  # cp inbox/cat.png inbox/walk/a.png
    "walk/b.png": 32,  # cp inbox/chair.png inbox/walk/b.png
}
IMAGE_SIZE = (64, 64)

CONFIG = "tiny.toml"


@dataclass(frozen=True)
class Step:
    """One command of the walk-through."""

    name: str
    args: tuple[str, ...]
    expected_exit: int
    snapshot: bool = False  # copy the outbox aside after this step
    before: Callable[[Path], None] | None = None  # prepares the scratch folder first


def noise_png(seed: int) -> bytes:
    """A 64x64 RGB PNG of grey noise drawn from ``random.Random(seed)``: the same bytes always."""
    rng = random.Random(seed)
    grey = Image.frombytes("L", IMAGE_SIZE, rng.randbytes(IMAGE_SIZE[0] * IMAGE_SIZE[1]))
    buffer = io.BytesIO()
    grey.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _write_inputs(walk: Path) -> None:
    """tiny.toml and the inbox of the walk-through (the images made here, not by dropforge)."""
    (walk / CONFIG).write_text(TINY_TOML, encoding="utf-8")
    inbox = walk / "inbox"
    for rel, text in TEXT_INPUTS.items():
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / rel).write_text(text, encoding="utf-8")
    for rel, seed in IMAGE_INPUTS.items():
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / rel).write_bytes(noise_png(seed))


def _write_bad_sidecar(walk: Path) -> None:
    """``printf 'cuont = 2\\n' > inbox/cat.toml``."""
    name, text = BAD_SIDECAR
    (walk / "inbox" / name).write_text(text, encoding="utf-8")


STEPS: tuple[Step, ...] = (
    Step("tiny-model", ("tiny-model", "models"), 0),
    Step("check", ("check", "-c", CONFIG, "inbox/cat.png"), 0, before=_write_inputs),
    Step("dry-run", ("once", "-c", CONFIG, "--dry-run"), 0),
    Step("once", ("once", "-c", CONFIG), 0, snapshot=True),
    Step("once-again", ("once", "-c", CONFIG), 0, snapshot=True),
    Step("once-bad-sidecar", ("once", "-c", CONFIG), 1, snapshot=True, before=_write_bad_sidecar),
    Step("status", ("status", "-c", CONFIG), 0),
)

# --- normalisation ------------------------------------------------------------------------

TIME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Total Time: .*"), "Total Time: <T>"),
    (re.compile(r"Average Time: .*"), "Average Time: <T>"),
    (re.compile(r"\b\d+(?:\.\d+)? seconds\b"), "<N> seconds"),
    (re.compile(r"\b\d+(?:\.\d+)? s so far\b"), "<N> s so far"),
    (re.compile(r"\bretry in \d+(?:\.\d+)? s\b"), "retry in <N> s"),
    (
        re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"),
        "<TIMESTAMP>",
    ),
)
VOLATILE_MANIFEST_KEYS = frozenset({"timings", "versions"})
MAX_DETAIL_LINES = 12


def normalise(text: str, code_root: Path) -> str:
    """Replace what varies from run to run (timings, clock times, the code's location)."""
    text = text.replace(str(code_root), "<code>")
    for pattern, replacement in TIME_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# --- small helpers ------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_files(root: Path) -> dict[str, Path]:
    """Every file below ``root`` by its POSIX path relative to ``root`` (empty when absent)."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def short(value: Any, limit: int = 160) -> str:
    """``repr``-like rendering of a value, cut to ``limit`` characters."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def strip_volatile(value: Any) -> Any:
    """A copy of a manifest without ``timings`` and ``versions``, at every depth."""
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE_MANIFEST_KEYS}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def json_diff(base: Any, head: Any, where: str = "") -> list[str]:
    """The paths at which two JSON values differ, each with both values."""
    here = where or "<top>"
    if type(base) is not type(head):
        return [f"{here}: base {short(base)} / head {short(head)}"]
    if isinstance(base, dict):
        lines: list[str] = []
        for key in [*base, *(k for k in head if k not in base)]:
            sub = f"{where}.{key}" if where else str(key)
            if key not in head:
                lines.append(f"{sub}: only in base ({short(base[key])})")
            elif key not in base:
                lines.append(f"{sub}: only in head ({short(head[key])})")
            else:
                lines.extend(json_diff(base[key], head[key], sub))
        return lines
    if isinstance(base, list):
        lines = []
        if len(base) != len(head):
            lines.append(f"{here}: {len(base)} items in base / {len(head)} in head")
        for i, (b, h) in enumerate(zip(base, head, strict=False)):
            name = b.get("file") if isinstance(b, dict) and isinstance(h, dict) else None
            label = f"{i}: {name}" if name is not None and name == h.get("file") else str(i)
            lines.extend(json_diff(b, h, f"{where}[{label}]"))
        return lines
    return [] if base == head else [f"{here}: base {short(base)} / head {short(head)}"]


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run git in ``repo`` without optional locks (others may be using the repository)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=check
    )


def resolve_commit(repo: Path, ref: str) -> str:
    """The commit id ``ref`` names; SystemExit(2) when it names none."""
    result = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if result.returncode != 0:
        raise SystemExit(f"compare_walkthrough: {ref!r} is not a commit")
    return result.stdout.strip()


def default_base(repo: Path) -> str:
    """The merge-base of HEAD and origin/main when that branch exists, else ``HEAD~1``."""
    if git(repo, "rev-parse", "--verify", "--quiet", "origin/main", check=False).returncode == 0:
        merge_base = git(repo, "merge-base", "HEAD", "origin/main", check=False)
        if merge_base.returncode == 0 and merge_base.stdout.strip():
            return merge_base.stdout.strip()
    return "HEAD~1"


# --- the two sides ------------------------------------------------------------------------


@dataclass
class Side:
    """One version of the code: a ref checked out into a worktree, or the working tree."""

    name: str  # "base" or "head"
    label: str  # what the user asked for
    code_root: Path
    commit: str
    worktree: bool  # created by this script, removed at the end


@dataclass
class StepResult:
    """What one command did."""

    step: str
    argv: list[str]
    exit_code: int | None  # None: timed out
    stdout: str
    stderr: str
    stdout_norm: str
    stderr_norm: str
    seconds: float


@dataclass
class SideResult:
    """Everything one side's walk-through produced (files live under ``folder``)."""

    side: Side
    folder: Path  # results/<side>: the moved scratch folder and the outbox snapshots
    steps: dict[str, StepResult] = field(default_factory=dict)
    seconds: float = 0.0

    def snapshot(self, step: str) -> Path:
        """Where the outbox was copied after ``step``."""
        return self.folder / "outbox-after" / step

    @property
    def walk(self) -> Path:
        """The scratch folder of this side, moved aside after its run."""
        return self.folder / "walk"


def add_worktree(repo: Path, path: Path, commit: str) -> None:
    """``git worktree add --detach``, retried a few times if another git command holds a lock."""
    for attempt in range(5):
        result = git(repo, "worktree", "add", "--detach", str(path), commit, check=False)
        if result.returncode == 0:
            return
        if attempt == 4:
            raise SystemExit(f"compare_walkthrough: git worktree add failed: {result.stderr}")
        time.sleep(2 + attempt)


def remove_worktree(repo: Path, path: Path) -> None:
    """Remove a worktree this script added, even if git refuses."""
    if git(repo, "worktree", "remove", "--force", str(path), check=False).returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        git(repo, "worktree", "prune", check=False)


def make_side(repo: Path, name: str, ref: str | None, tmp: Path) -> Side:
    """The working tree (``ref`` None) or a detached worktree of ``ref`` under ``tmp``."""
    if ref is None:
        commit = resolve_commit(repo, "HEAD")
        return Side(name, "working tree", repo, commit, worktree=False)
    commit = resolve_commit(repo, ref)
    path = tmp / f"code-{name}"
    add_worktree(repo, path, commit)
    return Side(name, ref, path, commit, worktree=True)


def child_env(code_root: Path, threads: int) -> dict[str, str]:
    """The environment of every command: this side's code first, offline, fixed settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DROPFORGE_", "HF_"))}
    env.update(
        {
            "PYTHONPATH": str(code_root),
            "PYTHONDONTWRITEBYTECODE": "1",  # never writes into the code being compared
            "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "OMP_DYNAMIC": "FALSE",  # the pictures' last bits depend on the thread count
            "MKL_DYNAMIC": "FALSE",
            "TZ": "UTC",
            "COLUMNS": "120",
            "NO_COLOR": "1",
        }
    )
    return env


def verify_import(side: Side, walk: Path, env: dict[str, str]) -> None:
    """Check that ``import daemon`` in the children resolves to this side's code."""
    result = subprocess.run(
        [sys.executable, "-c", "import daemon; print(daemon.__file__)"],
        cwd=walk,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = result.stdout.strip()
    expected = (side.code_root / "daemon" / "__init__.py").resolve()
    print(f"  import daemon -> {found or result.stderr.strip()}")
    if result.returncode != 0 or Path(found).resolve() != expected:
        raise SystemExit(f"compare_walkthrough: {side.name}: expected {expected}, got {found!r}")


def run_step(step: Step, side: Side, walk: Path, env: dict[str, str], timeout: float) -> StepResult:
    """Run one command of the walk-through as ``python -m daemon …`` in ``walk``."""
    argv = [sys.executable, "-m", "daemon", *step.args]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            cwd=walk,
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )
        exit_code: int | None = proc.returncode
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        exit_code = None
        stdout = _text(exc.stdout)
        stderr = _text(exc.stderr) + f"\n<timed out after {timeout:.0f} s>\n"
    return StepResult(
        step=step.name,
        argv=["dropforge", *step.args],
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        stdout_norm=normalise(stdout, side.code_root),
        stderr_norm=normalise(stderr, side.code_root),
        seconds=time.monotonic() - started,
    )


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def run_side(
    side: Side,
    walk: Path,
    results: Path,
    *,
    timeout: float,
    threads: int,
) -> SideResult:
    """Run the whole walk-through for one side in ``walk``, then move ``walk`` into results."""
    print(f"\n== {side.name}: {side.label} ({side.commit[:12]}) at {side.code_root}")
    if walk.exists():
        shutil.rmtree(walk)
    walk.mkdir(parents=True)
    env = child_env(side.code_root, threads)
    verify_import(side, walk, env)
    result = SideResult(side, results / side.name)
    result.folder.mkdir(parents=True)
    started = time.monotonic()
    for step in STEPS:
        if step.before is not None:
            step.before(walk)
        outcome = run_step(step, side, walk, env, timeout)
        result.steps[step.name] = outcome
        code = "timeout" if outcome.exit_code is None else f"exit {outcome.exit_code}"
        print(f"  {step.name:<17} {' '.join(outcome.argv):<45} {code}  ({outcome.seconds:.1f} s)")
        for stream in ("stdout", "stderr"):
            (result.folder / f"{step.name}.{stream}").write_text(
                getattr(outcome, stream), encoding="utf-8"
            )
        if step.snapshot:
            target = result.snapshot(step.name)
            if (walk / "outbox").is_dir():
                shutil.copytree(walk / "outbox", target, symlinks=True)
            else:
                target.mkdir(parents=True)
    result.seconds = time.monotonic() - started
    shutil.move(str(walk), str(result.walk))
    return result


# --- the comparison -----------------------------------------------------------------------


class Report:
    """Prints the checks as they go and counts differences and warnings.

    A difference or warning given a ``key`` that was seen before (the same file with the same
    two contents in a later outbox snapshot) is counted and printed once only.
    """

    def __init__(self) -> None:
        self.differences = 0
        self.warnings = 0
        self.repeated = 0
        self._seen: set[Hashable] = set()

    def section(self, title: str) -> None:
        """Start a check."""
        print(f"\n-- {title}")

    def ok(self, message: str) -> None:
        """Something that is the same on both sides."""
        print(f"  ok    {message}")

    def differ(self, message: str, details: Sequence[str] = (), key: Hashable = None) -> None:
        """One difference, with up to MAX_DETAIL_LINES lines of detail."""
        if self._repeat(key):
            return
        self.differences += 1
        print(f"  DIFF  {message}")
        self._details(details)

    def warn(self, message: str, details: Sequence[str] = (), key: Hashable = None) -> None:
        """Worth a look, but not a difference in behaviour."""
        if self._repeat(key):
            return
        self.warnings += 1
        print(f"  WARN  {message}")
        self._details(details)

    def repeats(self, what: str) -> None:
        """Say how many findings of this check were already listed, and forget the count."""
        if self.repeated:
            print(f"  same  {what}: {self.repeated} findings as listed above (not counted again)")
        self.repeated = 0

    def _repeat(self, key: Hashable) -> bool:
        if key is None:
            return False
        if key in self._seen:
            self.repeated += 1
            return True
        self._seen.add(key)
        return False

    @staticmethod
    def _details(details: Sequence[str]) -> None:
        for line in details[:MAX_DETAIL_LINES]:
            print(f"          {line}")
        if len(details) > MAX_DETAIL_LINES:
            print(f"          … and {len(details) - MAX_DETAIL_LINES} more")


def text_diff(base: str, head: str, name: str) -> list[str]:
    """A unified diff of two texts, without the header lines."""
    lines = difflib.unified_diff(
        base.splitlines(), head.splitlines(), f"base/{name}", f"head/{name}", lineterm="", n=1
    )
    return [line for line in lines if not line.startswith(("---", "+++"))]


def png_details(base: Path, head: Path) -> list[str]:
    """Why two PNGs differ: their pixels, and each text chunk that is not the same."""
    try:
        with Image.open(base) as b, Image.open(head) as h:
            b.load()
            h.load()
            same_pixels = b.mode == h.mode and b.size == h.size and b.tobytes() == h.tobytes()
            lines = [
                "pixels identical"
                if same_pixels
                else f"pixels differ ({b.mode} {b.size} / {h.mode} {h.size})"
            ]
            b_text: dict[str, Any] = dict(getattr(b, "text", {}))
            h_text: dict[str, Any] = dict(getattr(h, "text", {}))
            b_info = {k: v for k, v in b.info.items() if k not in b_text}
            h_info = {k: v for k, v in h.info.items() if k not in h_text}
    except OSError as exc:
        return [f"cannot read as PNG: {exc}"]
    for key in [*b_text, *(k for k in h_text if k not in b_text)]:
        if b_text.get(key) != h_text.get(key):
            lines.append(f"chunk {key!r} differs:")
            lines.extend(
                f"  {line}"
                for line in text_diff(str(b_text.get(key, "")), str(h_text.get(key, "")), key)
            )
    if repr(b_info) != repr(h_info):
        lines.append(f"other PNG info: base {short(repr(b_info))} / head {short(repr(h_info))}")
    return lines


def compare_files(report: Report, base: dict[str, Path], head: dict[str, Path], what: str) -> None:
    """(a) the same relative paths, (b) the same bytes for every file but manifest.json."""
    only_base = sorted(set(base) - set(head))
    only_head = sorted(set(head) - set(base))
    if only_base or only_head:
        report.differ(
            f"{what}: the file sets differ",
            [f"only in base: {p}" for p in only_base] + [f"only in head: {p}" for p in only_head],
            key=("file set", tuple(only_base), tuple(only_head)),
        )
    else:
        report.ok(f"{what}: the same {len(base)} files")
    same = 0
    for rel in sorted(set(base) & set(head)):
        if Path(rel).name == "manifest.json":
            continue
        b_sha, h_sha = sha256_file(base[rel]), sha256_file(head[rel])
        if b_sha == h_sha:
            same += 1
            continue
        b_size, h_size = base[rel].stat().st_size, head[rel].stat().st_size
        details = [f"sha256 base {b_sha[:12]}… / head {h_sha[:12]}…, bytes {b_size} / {h_size}"]
        if rel.lower().endswith(".png"):
            details.extend(png_details(base[rel], head[rel]))
        report.differ(f"{what}: {rel} differs", details, key=("file", rel, b_sha, h_sha))
    manifests = sum(Path(rel).name == "manifest.json" for rel in base)
    aside = f" ({manifests} manifest.json compared as JSON below)" if manifests else ""
    report.ok(f"{what}: {same} files byte-identical (sha256){aside}")


def compare_manifests(
    report: Report, base: dict[str, Path], head: dict[str, Path], what: str
) -> None:
    """(c) every manifest.json equal once timings and versions are gone; key order a warning."""
    names = sorted(r for r in set(base) & set(head) if Path(r).name == "manifest.json")
    same = 0
    orders: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for rel in names:
        try:
            b = json.loads(base[rel].read_text(encoding="utf-8"))
            h = json.loads(head[rel].read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            report.differ(f"{what}: {rel} is not readable JSON: {exc}")
            continue
        b_stable, h_stable = strip_volatile(b), strip_volatile(h)
        lines = json_diff(b_stable, h_stable)
        if lines:
            key = ("manifest", rel, canonical(b_stable), canonical(h_stable))
            report.differ(f"{what}: {rel} differs (timings and versions aside)", lines, key=key)
        else:
            same += 1
        if isinstance(b, dict) and isinstance(h, dict):
            for label, b_obj, h_obj in (
                ("top-level", b, h),
                ("params", b.get("params"), h.get("params")),
            ):
                order = key_order(b_obj, h_obj)
                if order is not None:
                    orders.setdefault((label, *order), []).append(rel)
    for (label, b_keys, h_keys), rels in orders.items():
        report.warn(
            f"{what}: {label} key order differs in {', '.join(rels)}",
            [f"base {list(b_keys)}", f"head {list(h_keys)}"],
            key=("order", label, b_keys, h_keys),
        )
    report.ok(f"{what}: {same} of {len(names)} manifests equal (timings and versions aside)")


def canonical(value: Any) -> str:
    """A JSON value as one string, keys sorted: equal strings, equal values."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def key_order(base: Any, head: Any) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The two orders of the keys two dicts share, or None when the order is the same."""
    if not isinstance(base, dict) or not isinstance(head, dict):
        return None
    b_keys = tuple(k for k in base if k in head)
    h_keys = tuple(k for k in head if k in base)
    return None if b_keys == h_keys else (b_keys, h_keys)


def compare_commands(report: Report, base: SideResult, head: SideResult) -> None:
    """(d) exit codes and normalised stdout of every command; stderr only as a warning."""
    for step in STEPS:
        b, h = base.steps[step.name], head.steps[step.name]
        command = f"[{step.name}] {' '.join(b.argv)}"
        if b.exit_code != h.exit_code:
            report.differ(f"{command}: exit code base {b.exit_code} / head {h.exit_code}")
        if b.stdout_norm != h.stdout_norm:
            report.differ(
                f"{command}: stdout differs", text_diff(b.stdout_norm, h.stdout_norm, "stdout")
            )
        if b.exit_code == h.exit_code and b.stdout_norm == h.stdout_norm:
            lines = len(b.stdout_norm.splitlines())
            report.ok(f"{command}: exit {b.exit_code}, the same stdout ({lines} lines)")
        if b.stderr_norm != h.stderr_norm:
            report.warn(
                f"{command}: stderr differs (library warnings and logs; not counted)",
                text_diff(b.stderr_norm, h.stderr_norm, "stderr"),
            )


def failed_manifest(result: SideResult) -> dict[str, Any] | None:
    """outbox/cat/manifest.json after the bad sidecar, or None."""
    path = result.snapshot("once-bad-sidecar") / "cat" / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def compare_bad_sidecar(report: Report, base: SideResult, head: SideResult) -> None:
    """(e) the failed manifest the bad sidecar leaves in outbox/cat."""
    seen = {}
    for result in (base, head):
        manifest = failed_manifest(result)
        seen[result.side.name] = (
            None if manifest is None else (manifest.get("status"), manifest.get("error"))
        )
        print(f"  {result.side.name}: {short(seen[result.side.name])}")
    if seen["base"] != seen["head"]:
        report.differ("outbox/cat/manifest.json: status and error differ between the sides")
    else:
        report.ok("outbox/cat/manifest.json: the same status and error")


def check_expectations(report: Report, result: SideResult) -> None:
    """What README.md promises on each side; a broken promise is a warning, not a difference."""
    name = result.side.name
    for step in STEPS:
        code = result.steps[step.name].exit_code
        if code != step.expected_exit:
            report.warn(f"{name}: {step.name} exited {code}, README says {step.expected_exit}")
    first = {r: sha256_file(p) for r, p in tree_files(result.snapshot("once")).items()}
    again = {r: sha256_file(p) for r, p in tree_files(result.snapshot("once-again")).items()}
    if not first:
        report.warn(f"{name}: the first once left an empty outbox")
    if first != again:
        report.warn(f"{name}: the second once changed the outbox (README: everything is skipped)")
    manifest = failed_manifest(result)
    if (
        manifest is None
        or manifest.get("status") != "failed"
        or "cuont" not in str(manifest.get("error"))
    ):
        report.warn(f"{name}: outbox/cat/manifest.json is not failed with the cuont error")


def compare(base: SideResult, head: SideResult) -> Report:
    """Run every check and print the report."""
    report = Report()
    report.section("(a, b, c) outbox after each `dropforge once`")
    for step in STEPS:
        if not step.snapshot:
            continue
        b_files = tree_files(base.snapshot(step.name))
        h_files = tree_files(head.snapshot(step.name))
        compare_files(report, b_files, h_files, f"after {step.name}")
        compare_manifests(report, b_files, h_files, f"after {step.name}")
        report.repeats(f"after {step.name}")
    report.section("inputs written by this script, and models by `dropforge tiny-model models`")
    compare_files(report, tree_files(base.walk / "inbox"), tree_files(head.walk / "inbox"), "inbox")
    compare_files(
        report, tree_files(base.walk / "models"), tree_files(head.walk / "models"), "models"
    )
    report.section("(d) exit codes and normalised stdout")
    compare_commands(report, base, head)
    report.section("(e) the bad sidecar's failed manifest")
    compare_bad_sidecar(report, base, head)
    report.section("README expectations on each side")
    before = report.warnings
    check_expectations(report, base)
    check_expectations(report, head)
    if report.warnings == before:
        report.ok("exit codes, a skipped second run and the failed cat manifest as README says")
    return report


# --- the command line ---------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options."""
    parser = argparse.ArgumentParser(
        description="Run the README walk-through on two versions and compare what it makes."
    )
    parser.add_argument(
        "--base", help="git ref (default: merge-base of HEAD and origin/main, else HEAD~1)"
    )
    parser.add_argument(
        "--head", help="git ref (default: the working tree, uncommitted changes too)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the worktrees, scratch and results"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per command (default 1800)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of both sides (default 1: pixels depend on the thread count)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Compare the walk-through on --base and --head; 0 identical, 1 different, 2 error."""
    args = parse_args(argv)
    here = Path(__file__).resolve().parent
    repo = Path(git(here, "rev-parse", "--show-toplevel").stdout.strip())
    base_ref = args.base or default_base(repo)
    tmp = Path(tempfile.mkdtemp(prefix="dropforge-compare-"))
    walk, results = tmp / "walk", tmp / "results"
    sides: list[Side] = []
    started = time.monotonic()
    try:
        sides.append(make_side(repo, "base", base_ref, tmp))
        sides.append(make_side(repo, "head", args.head, tmp))
        if args.head is None:
            changed = git(repo, "status", "--porcelain", check=False).stdout.splitlines()
            head = sides[1].commit[:12]
            print(f"head is the working tree: HEAD {head} + {len(changed)} uncommitted changes")
        print(f"scratch folder (both sides): {walk}")
        done = [
            run_side(s, walk, results, timeout=args.timeout, threads=args.threads) for s in sides
        ]
        report = compare(*done)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        for side in sides:
            if side.worktree and not args.keep:
                remove_worktree(repo, side.code_root)
        if args.keep:
            print(f"\nkept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nbase {done[0].seconds:.0f} s, head {done[1].seconds:.0f} s, "
        f"{time.monotonic() - started:.0f} s in all; {report.warnings} warnings"
    )
    if report.differences:
        print(f"DIFFERENT: {report.differences} differences")
        return 1
    print("IDENTICAL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
