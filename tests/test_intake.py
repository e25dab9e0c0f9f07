"""Intake: name filtering, classification, inbox scanning and path confinement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.config import InboxConfig
from daemon.errors import InputError
from daemon.intake.candidates import Candidate, candidate_for
from daemon.intake.names import FileKind, classify, is_ignored_dir, is_ignored_name
from daemon.intake.parts import parts_of
from daemon.intake.paths import confine
from daemon.intake.scan import scan_inbox

IGNORED_NAMES = [
    ".hidden.png",
    ".DS_Store",
    "~draft.png",
    ".syncthing.cat.png.tmp",
    "~syncthing~cat.png.tmp",
    "cat.sync-conflict-20240101-120000-ABCDEFG.png",
    "cat.SYNC-CONFLICT-20240101-120000-ABCDEFG.png",
    "cat (conflicted copy 2024-01-01).png",
    "cat (Bob's Conflicted Copy).png",
    ".~lock.story.txt#",
    "cat.png.part",
    "cat.png.PART",
    "cat.png.crdownload",
    "cat.png.download",
    "cat.tmp",
    "Thumbs.db",
    "thumbs.DB",
    "desktop.ini",
    "Desktop.INI",
]
KEPT_NAMES = [
    "cat.png",
    "my.temp.png",
    "partial.png",
    "downloads.txt",
    "conflicted.png",
    "copy.png",
    "thumbs.db.png",
    "sync-conflict.txt",
    "a~b.png",
    "_underscore.png",
]


@pytest.mark.parametrize("name", IGNORED_NAMES)
def test_ignored_names(name: str) -> None:
    """Hidden names, locks and sync-tool temporaries and conflict copies are ignored."""
    assert is_ignored_name(name)


@pytest.mark.parametrize("name", KEPT_NAMES)
def test_kept_names(name: str) -> None:
    """Ordinary names that merely contain a pattern's words are kept."""
    assert not is_ignored_name(name)


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        (".git", True),
        (".stversions", True),
        ("~tmp", True),
        ("_done", True),
        ("_failed", True),
        ("photos", False),
        ("a_b", False),
    ],
)
def test_ignored_dirs(name: str, ignored: bool) -> None:
    """Hidden, ~ and _ folders are ignored; others are walked."""
    assert is_ignored_dir(name) is ignored


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("cat.png", FileKind.image),
        ("cat.PNG", FileKind.image),
        ("cat.jpg", FileKind.image),
        ("cat.JPEG", FileKind.image),
        ("cat.webp", FileKind.image),
        ("cat.bmp", FileKind.image),
        ("story.txt", FileKind.prompt),
        ("story.prompt", FileKind.prompt),
        ("Chapter 1.MD", FileKind.prompt),
        ("walk.job.toml", FileKind.job),
        ("_defaults.toml", FileKind.defaults),
        ("cat.toml", FileKind.sidecar),
        ("cat.mask.png", FileKind.mask),
        ("cat.mask.JPG", FileKind.mask),
        ("mask.png", FileKind.image),
        ("cat.gif", FileKind.other),
        ("README", FileKind.other),
        ("notes.pdf", FileKind.other),
    ],
)
def test_classify(name: str, kind: FileKind) -> None:
    """File names map to kinds by their extensions and the documented special names."""
    assert classify(name) is kind


def write(root: Path, files: dict[str, str]) -> None:
    """Create each file (parents included) with the given text."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def make_inbox(
    tmp_path: Path, *, recursive: bool = True, default_task: str = "auto"
) -> InboxConfig:
    """An inbox at tmp_path/inbox whose output folder lies inside it."""
    root = tmp_path / "inbox"
    root.mkdir()
    return InboxConfig(
        path=root, output=root / "outbox", default_task=default_task, recursive=recursive
    )


TREE = {
    "_defaults.toml": 'preset = "draft"\n',
    "cat.png": "png",
    "cat.toml": "count = 2\n",
    "cat.mask.png": "mask",
    "dog.JPG": "jpg",
    "story.txt": "a scene",
    "story.toml": 'prompt_template = "panel, {text}"\n',
    "notes.pdf": "pdf",
    ".hidden.png": "x",
    "~lock.png": "x",
    "cat.png.part": "x",
    "cat.sync-conflict-20240101-120000-ABC.png": "x",
    "cat (conflicted copy).png": "x",
    "Thumbs.db": "x",
    "_done/old.png": "x",
    ".stfolder/x.png": "x",
    "outbox/cat/cat-1.png": "x",
    "a/_defaults.toml": 'preset = "high"\n',
    "a/b/deep.webp": "webp",
    "inpaint/face.png": "x",
    "inpaint/face.toml": 'mask = "../shared/m.png"\n',
    "shared/m.png": "x",
    "shared/other.png": "x",
    "tween/_defaults.toml": 'task = "tween"\n',
    "tween/neutral.png": "x",
    "tween/smile.png": "x",
    "tween/walk.job.toml": 'start = "neutral.png"\nend = "smile.png"\n',
    "seq/faces.job.toml": (
        'endpoints = "ends"\npaths = [{id = "n2a", start = "neutral", end = "ah"}]\n'
    ),
    "seq/ends/neutral__center.png": "x",
    "seq/ends/ah__left.png": "x",
    "seq/ends/smile__center.png": "x",
    "seq/ends/unrelated.png": "x",
    "pair/blend.job.toml": 'start = "x.png"\nend = "y.png"\n',
    "pair/x.png": "x",
    "pair/y.png": "x",
    "pair/z.png": "x",
    "broken/b.png": "x",
    "broken/b.toml": "mask = [unclosed\n",
    "broken/big.png": "x",
    "broken/big.toml": 'mask = "b.png"\n' + "#" * 70_000 + "\n",
}


def test_scan_finds_inputs_and_skips_everything_else(tmp_path: Path) -> None:
    """A scan returns only real inputs, sorted, leaving out ignored names, outputs and parts."""
    inbox = make_inbox(tmp_path)
    write(inbox.path, TREE)
    result = scan_inbox(inbox)
    assert [c.rel for c in result.candidates] == [
        "a/b/deep.webp",
        "broken/b.png",
        "broken/big.png",
        "cat.png",
        "dog.JPG",
        "inpaint/face.png",
        "pair/blend.job.toml",
        "pair/z.png",
        "seq/ends/smile__center.png",
        "seq/ends/unrelated.png",
        "seq/faces.job.toml",
        "shared/other.png",
        "story.txt",
        "tween/walk.job.toml",
    ]
    assert result.rejected == []


def test_scan_pairs_sidecars_masks_and_defaults(tmp_path: Path) -> None:
    """Each candidate carries its sidecar, its STEM.mask image and the _defaults chain."""
    inbox = make_inbox(tmp_path)
    write(inbox.path, TREE)
    by_rel = {c.rel: c for c in scan_inbox(inbox).candidates}
    root = inbox.path
    assert by_rel["cat.png"] == Candidate(
        inbox=inbox,
        path=root / "cat.png",
        rel="cat.png",
        kind=FileKind.image,
        sidecar=root / "cat.toml",
        defaults=(root / "_defaults.toml",),
        mask=root / "cat.mask.png",
    )
    assert by_rel["dog.JPG"].sidecar is None
    assert by_rel["dog.JPG"].mask is None
    assert by_rel["story.txt"].kind is FileKind.prompt
    assert by_rel["story.txt"].sidecar == root / "story.toml"
    assert by_rel["a/b/deep.webp"].defaults == (
        root / "_defaults.toml",
        root / "a" / "_defaults.toml",
    )
    job = by_rel["tween/walk.job.toml"]
    assert (job.kind, job.sidecar) == (FileKind.job, root / "tween" / "walk.job.toml")
    assert job.defaults == (root / "_defaults.toml", root / "tween" / "_defaults.toml")


def test_scan_not_recursive(tmp_path: Path) -> None:
    """A non-recursive inbox yields only the files at its top level."""
    inbox = make_inbox(tmp_path, recursive=False)
    write(inbox.path, TREE)
    rels = [c.rel for c in scan_inbox(inbox).candidates]
    assert rels == ["cat.png", "dog.JPG", "story.txt"]


def test_inbox_default_task_tween_makes_every_image_an_endpoint(tmp_path: Path) -> None:
    """With default_task tween, images anywhere are endpoints until a folder says otherwise."""
    inbox = make_inbox(tmp_path, default_task="tween")
    write(
        inbox.path,
        {
            "a.png": "x",
            "walk.job.toml": "depth = 2\n",
            "stills/_defaults.toml": 'task = "variations"\n',
            "stills/b.png": "x",
        },
    )
    assert [c.rel for c in scan_inbox(inbox).candidates] == ["stills/b.png", "walk.job.toml"]


def test_defaults_mask_key_makes_that_image_a_part(tmp_path: Path) -> None:
    """A mask named by a _defaults.toml is resolved in each folder below it and never an input."""
    inbox = make_inbox(tmp_path)
    write(
        inbox.path,
        {
            "_defaults.toml": 'mask = "m.png"\n',
            "m.png": "x",
            "a.png": "x",
            "sub/m.png": "x",
            "sub/b.png": "x",
        },
    )
    assert [c.rel for c in scan_inbox(inbox).candidates] == ["a.png", "sub/b.png"]


def test_job_pose_limits_which_endpoints_are_parts(tmp_path: Path) -> None:
    """A job file's pose keeps endpoints of other poses as inputs of their own."""
    inbox = make_inbox(tmp_path)
    write(
        inbox.path,
        {
            "faces.job.toml": 'pose = "center"\npaths = [{id = "x", start = "n", end = "ah"}]\n',
            "n__center.png": "x",
            "ah__center.png": "x",
            "n__left.png": "x",
        },
    )
    assert [c.rel for c in scan_inbox(inbox).candidates] == ["faces.job.toml", "n__left.png"]


def test_excluded_roots_are_skipped(tmp_path: Path) -> None:
    """Folders passed as excluded_roots (another inbox's output) are not walked."""
    inbox = make_inbox(tmp_path)
    write(inbox.path, {"keep.png": "x", "elsewhere/out.png": "x"})
    result = scan_inbox(inbox, excluded_roots=[inbox.path / "elsewhere"])
    assert [c.rel for c in result.candidates] == ["keep.png"]


def test_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    """A symlinked file or folder leading outside the inbox is reported and not used."""
    inbox = make_inbox(tmp_path)
    write(tmp_path, {"secret/x.png": "x", "secret/cat.toml": 'mask = "x.png"\n'})
    write(inbox.path, {"photos/cat.png": "x", "photos/readme.pdf": "x"})
    (inbox.path / "photos" / "x.png").symlink_to(tmp_path / "secret" / "x.png")
    (inbox.path / "photos" / "cat.toml").symlink_to(tmp_path / "secret" / "cat.toml")
    (inbox.path / "photos" / "doc.pdf").symlink_to(tmp_path / "secret" / "x.png")
    (inbox.path / "linked").symlink_to(tmp_path / "secret", target_is_directory=True)
    result = scan_inbox(inbox)
    photos = inbox.path / "photos"
    assert result.rejected == [
        (inbox.path / "linked", "linked: refused: a symlink that leads outside the inbox"),
        (photos / "cat.toml", "photos/cat.toml: refused: a symlink that leads outside the inbox"),
        (photos / "x.png", "photos/x.png: refused: a symlink that leads outside the inbox"),
    ]
    assert [(c.rel, c.sidecar) for c in result.candidates] == [("photos/cat.png", None)]


def test_symlink_inside_is_allowed_and_folders_are_not_followed(tmp_path: Path) -> None:
    """A file symlink into the inbox is an input at the link's place; folder links are skipped."""
    inbox = make_inbox(tmp_path)
    write(inbox.path, {"library/cat.png": "x"})
    (inbox.path / "alias.png").symlink_to(inbox.path / "library" / "cat.png")
    (inbox.path / "mirror").symlink_to(inbox.path / "library", target_is_directory=True)
    (inbox.path / "dangling.png").symlink_to(inbox.path / "missing.png")
    result = scan_inbox(inbox)
    assert [(c.rel, c.path) for c in result.candidates] == [
        ("alias.png", inbox.path / "alias.png"),
        ("library/cat.png", inbox.path / "library" / "cat.png"),
    ]
    assert result.rejected == []


def test_symlinked_output_folder_is_skipped_not_refused(tmp_path: Path) -> None:
    """An output folder that is a symlink inside the inbox is left alone without a complaint."""
    elsewhere = tmp_path / "disk2"
    write(elsewhere, {"cat/cat-1.png": "x"})
    root = tmp_path / "inbox"
    root.mkdir()
    (root / "out").symlink_to(elsewhere, target_is_directory=True)
    inbox = InboxConfig(path=root, output=root / "out")
    write(root, {"cat.png": "x"})
    result = scan_inbox(inbox)
    assert ([c.rel for c in result.candidates], result.rejected) == (["cat.png"], [])


def test_unreadable_inbox_is_reported(tmp_path: Path) -> None:
    """A folder the scan cannot list is reported instead of silently skipped."""
    inbox = InboxConfig(path=tmp_path / "gone", output=tmp_path / "out")
    result = scan_inbox(inbox)
    assert (result.candidates, result.rejected) == (
        [],
        [(tmp_path / "gone", ".: cannot read this folder (No such file or directory)")],
    )


def every_file(root: Path) -> list[Path]:
    """Every file and file symlink below root, hidden and ignored ones included."""
    found = []
    for folder, dirs, files in os.walk(root):
        found += [Path(folder, name) for name in files]
        found += [Path(folder, d) for d in dirs if Path(folder, d).is_symlink()]
    return sorted(found)


def test_candidate_for_agrees_with_scan(tmp_path: Path) -> None:
    """Given the scan's parts, candidate_for says of every file exactly what the scan said."""
    inbox = make_inbox(tmp_path)
    write(inbox.path, TREE)
    write(tmp_path, {"secret/x.png": "x"})
    (inbox.path / "out.png").symlink_to(tmp_path / "secret" / "x.png")
    (inbox.path / "in.png").symlink_to(inbox.path / "cat.png")
    result = scan_inbox(inbox)
    by_path = {c.path: c for c in result.candidates}
    files = every_file(inbox.path)
    assert len(files) > len(by_path) > 10
    for path in files:
        assert candidate_for(inbox, path, parts=result.parts) == by_path.get(path), path


def test_candidate_for_without_parts_and_parts_of(tmp_path: Path) -> None:
    """Alone, candidate_for knows masks by name and tween folders; parts_of adds named parts."""
    inbox = make_inbox(tmp_path)
    write(inbox.path, TREE)
    root = inbox.path
    assert candidate_for(inbox, root / "cat.mask.png") is None
    assert candidate_for(inbox, root / "tween" / "smile.png") is None
    assert candidate_for(inbox, root / "outbox" / "cat" / "cat-1.png") is None
    assert candidate_for(inbox, root / "_done" / "old.png") is None
    mask = root / "shared" / "m.png"
    endpoint = root / "seq" / "ends" / "neutral__center.png"
    assert candidate_for(inbox, mask) is not None
    assert candidate_for(inbox, endpoint) is not None
    assert candidate_for(inbox, mask, parts=parts_of(inbox, root / "inpaint" / "face.toml")) is None
    job_parts = parts_of(inbox, root / "seq" / "faces.job.toml")
    assert candidate_for(inbox, endpoint, parts=job_parts) is None
    assert parts_of(inbox, root / "cat.png") == parts_of(inbox, root / "broken" / "b.toml")


def test_candidate_for_refuses_paths_it_must_not_take(tmp_path: Path) -> None:
    """Outside the inbox, missing, a folder, or behind a symlinked folder: no candidate."""
    inbox = make_inbox(tmp_path)
    write(tmp_path, {"outside.png": "x", "secret/x.png": "x"})
    write(inbox.path, {"dir.png/inner.txt": "x"})
    (inbox.path / "linked").symlink_to(tmp_path / "secret", target_is_directory=True)
    assert candidate_for(inbox, tmp_path / "outside.png") is None
    assert candidate_for(inbox, inbox.path / "missing.png") is None
    assert candidate_for(inbox, inbox.path / "dir.png") is None
    assert candidate_for(inbox, inbox.path / "linked" / "x.png") is None
    assert candidate_for(inbox, inbox.path) is None


def test_candidate_for_excluded_roots(tmp_path: Path) -> None:
    """candidate_for skips excluded roots just as the scan does."""
    inbox = make_inbox(tmp_path)
    write(inbox.path, {"other-out/a.png": "x"})
    path = inbox.path / "other-out" / "a.png"
    assert candidate_for(inbox, path) is not None
    assert candidate_for(inbox, path, excluded_roots=[inbox.path / "other-out"]) is None


def test_one_look_up_finds_the_sidecar_and_defaults_chain(tmp_path: Path) -> None:
    """candidate_for finds STEM.toml (a job file is its own) and the _defaults chain on disk."""
    inbox = InboxConfig(path=tmp_path / "inbox", output=tmp_path / "outbox")
    root = inbox.path
    write(
        root,
        {
            "_defaults.toml": "",
            "a/b/cat.png": "x",
            "a/b/cat.toml": "",
            "a/b/dog.png": "x",
            "a/b/walk.job.toml": "",
            "a/b/_defaults.toml": "",
            "top.png": "x",
        },
    )
    folder = root / "a" / "b"
    cat = candidate_for(inbox, folder / "cat.png")
    assert cat is not None and cat.sidecar == folder / "cat.toml"
    assert cat.defaults == (root / "_defaults.toml", folder / "_defaults.toml")
    dog = candidate_for(inbox, folder / "dog.png")
    assert dog is not None and dog.sidecar is None
    walk = candidate_for(inbox, folder / "walk.job.toml")
    assert walk is not None and walk.sidecar == folder / "walk.job.toml"
    top = candidate_for(inbox, root / "top.png")
    assert top is not None and top.defaults == (root / "_defaults.toml",)


def test_confine_accepts_paths_inside(tmp_path: Path) -> None:
    """Relative paths that stay inside the inbox resolve to real paths, symlinks followed."""
    root = tmp_path / "inbox"
    write(root, {"a/cat.toml": "", "masks/m.png": "x"})
    (root / "a" / "link.png").symlink_to(root / "masks" / "m.png")
    base = root / "a"

    def resolve(value: str) -> Path:
        return confine(root, value, base=base, display="a/cat.toml", key="mask")

    assert resolve("../masks/m.png") == root / "masks" / "m.png"
    assert resolve("..\\masks\\m.png") == root / "masks" / "m.png"
    assert resolve("link.png") == root / "masks" / "m.png"
    assert resolve("not-yet.png") == base / "not-yet.png"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("../secret.png", '"../secret.png"'),
        ("..\\secret.png", '"..\\\\secret.png"'),
        ("/etc/passwd", '"/etc/passwd"'),
        ("C:\\secret.png", '"C:\\\\secret.png"'),
        ("\\\\server\\share\\x.png", '"\\\\\\\\server\\\\share\\\\x.png"'),
        ("a/../../secret.png", '"a/../../secret.png"'),
        ("escape/x.png", '"escape/x.png"'),
        ("", '""'),
    ],
)
def test_confine_refuses_paths_leading_out(tmp_path: Path, value: str, shown: str) -> None:
    """Absolute paths, .. past the root and symlinks out are refused with file, key and value."""
    root = tmp_path / "inbox"
    write(root, {"cat.toml": ""})
    write(tmp_path, {"secret/x.png": "x"})
    (root / "escape").symlink_to(tmp_path / "secret", target_is_directory=True)
    with pytest.raises(InputError) as caught:
        confine(root, value, base=root, display="cat.toml", key="mask")
    assert str(caught.value) == f"cat.toml: mask must be a path inside the inbox, got {shown}"
    assert (caught.value.file, caught.value.key, caught.value.value) == ("cat.toml", "mask", value)
