"""Security: a file dropped in a shared inbox cannot read, unpickle or write outside its place.

Sidecar paths stay inside the inbox, symlinks out of it are refused, model and LoRA keys
take aliases only, pickle weights are never loaded, and every write lands under the
output root with a sanitised name.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import load_config
from daemon.intake.paths import REFUSED_SYMLINK
from daemon.outputs.names import sanitize_name
from daemon.planning.model import output_dir
from daemon.runtime.once import OnceReport, run_once
from daemon.runtime.worker import Outcome
from daemon.store.sqlite import SqliteJournal
from daemon.values import JobState
from tests.fakes import SolidGenerator
from tests.helpers import manifest, mask_image, noise_image, snapshot, write_config

INSIDE = "a relative path inside the inbox"  # the rule for a path written in a sidecar
RESOLVED = "a path inside the inbox"  # the rule for one that leads out once resolved

# STEM.png + STEM.toml → the error of its failed manifest.
IMAGE_SIDECARS: dict[str, tuple[str, str]] = {
    "mask-abs": (
        'task = "inpaint"\nmask = "{outside}/m.png"\n',
        'mask-abs.toml: mask must be {INSIDE}, got "{outside}/m.png"',
    ),
    "mask-dotdot": (
        'task = "inpaint"\nmask = "../outside/m.png"\n',
        'mask-dotdot.toml: mask must be {INSIDE}, got "../outside/m.png"',
    ),
    "mask-inner-dotdot": (
        'task = "inpaint"\nmask = "sub/../../outside/m.png"\n',
        'mask-inner-dotdot.toml: mask must be {INSIDE}, got "sub/../../outside/m.png"',
    ),
    "mask-backslash": (
        "task = \"inpaint\"\nmask = '..\\outside\\m.png'\n",
        'mask-backslash.toml: mask must be {INSIDE}, got "..\\\\outside\\\\m.png"',
    ),
    "mask-drive": (
        "task = \"inpaint\"\nmask = 'C:\\Windows\\m.png'\n",
        'mask-drive.toml: mask must be {INSIDE}, got "C:\\\\Windows\\\\m.png"',
    ),
    "mask-unc": (
        "task = \"inpaint\"\nmask = '\\\\server\\share\\m.png'\n",
        'mask-unc.toml: mask must be {INSIDE}, got "\\\\\\\\server\\\\share\\\\m.png"',
    ),
    "mask-filelink": (
        'task = "inpaint"\nmask = "links/m.png"\n',
        'mask-filelink.toml: mask must be {RESOLVED}, got "links/m.png"',
    ),
    "mask-dirlink": (
        'task = "inpaint"\nmask = "outdir/m.png"\n',
        'mask-dirlink.toml: mask must be {RESOLVED}, got "outdir/m.png"',
    ),
    "model-path": (
        'model = "/etc/x"\n',
        "model-path.toml: model must be one of the [models] "
        'aliases: default, pickled, got "/etc/x"',
    ),
    "model-relative": (
        'model = "../pickled"\n',
        "model-relative.toml: model must be one of the [models] aliases: default, pickled, "
        'got "../pickled"',
    ),
    "lora-path": (
        'lora = "{outside}/ink.safetensors"\n',
        'lora-path.toml: lora must be one of the [loras] aliases: ink, or "" for none, '
        'got "{outside}/ink.safetensors"',
    ),
}

# NAME.job.toml → the error of its failed manifest.
JOBS: dict[str, tuple[str, str]] = {
    "start-abs": (
        'start = "{outside}/a__front.png"\nend = "eps/b__front.png"\n',
        'start-abs.job.toml: start must be {INSIDE}, got "{outside}/a__front.png"',
    ),
    "end-dotdot": (
        'start = "eps/a__front.png"\nend = "../outside/b__front.png"\n',
        'end-dotdot.job.toml: end must be {INSIDE}, got "../outside/b__front.png"',
    ),
    "start-link": (
        'start = "outdir/a__front.png"\nend = "eps/b__front.png"\n',
        'start-link.job.toml: start must be {RESOLVED}, got "outdir/a__front.png"',
    ),
    "endpoints-abs": (
        'endpoints = "{outside}"\npaths = [{{id = "p", start = "a", end = "b"}}]\n',
        'endpoints-abs.job.toml: endpoints must be {INSIDE}, got "{outside}"',
    ),
    "endpoints-dotdot": (
        'endpoints = "../outside"\npaths = [{{id = "p", start = "a", end = "b"}}]\n',
        'endpoints-dotdot.job.toml: endpoints must be {INSIDE}, got "../outside"',
    ),
    "endpoints-link": (
        'endpoints = "outdir"\npaths = [{{id = "p", start = "a", end = "b"}}]\n',
        'endpoints-link.job.toml: endpoints must be {RESOLVED}, got "outdir"',
    ),
    "id-slash": (
        'endpoints = "eps"\npaths = [{{id = "../x", start = "a", end = "b"}}]\n',
        'id-slash.job.toml: paths[1].id must be a name made of letters, digits, "_", "-" '
        'and ".", got "../x"',
    ),
    "expr-slash": (
        'endpoints = "eps"\npaths = [{{id = "p", start = "../a", end = "b"}}]\n',
        'expr-slash.job.toml: paths[1].start must be a non-empty name without slashes, got "../a"',
    ),
    "pose-slash": (
        'endpoints = "eps"\npose = "../front"\npaths = [{{id = "p", start = "a", end = "b"}}]\n',
        'pose-slash.job.toml: pose must be a non-empty name without slashes, got "../front"',
    ),
}


def _fill(template: str, outside: Path) -> str:
    return template.format(outside=outside, INSIDE=INSIDE, RESOLVED=RESOLVED)


def build_inbox(root: Path) -> Path:
    """An inbox full of escape attempts, an outside folder they aim at, and one good input."""
    outside = root / "outside"
    outside.mkdir()
    noise_image(outside / "secret.png")
    mask_image(outside / "m.png")
    noise_image(outside / "a__front.png", seed=1)
    noise_image(outside / "b__front.png", seed=2)
    (outside / "evil.toml").write_text("count = 20\n", encoding="utf-8")
    pickled = root / "pickled"
    pickled.mkdir()
    config = write_config(
        root,
        str(root / "no-model"),
        models={"pickled": str(pickled)},
        loras={"ink": str(root / "ink.safetensors")},
    )
    inbox = root / "inbox"
    for n, (stem, (text, _)) in enumerate(IMAGE_SIDECARS.items()):
        noise_image(inbox / f"{stem}.png", seed=n)
        (inbox / f"{stem}.toml").write_text(_fill(text, outside), encoding="utf-8")
    for name, (text, _) in JOBS.items():
        (inbox / f"{name}.job.toml").write_text(_fill(text, outside), encoding="utf-8")
    (inbox / "eps").mkdir()
    noise_image(inbox / "eps" / "a__front.png", seed=3)
    noise_image(inbox / "eps" / "b__front.png", seed=4)
    (inbox / "links").mkdir()
    os.symlink(outside / "m.png", inbox / "links" / "m.png")
    os.symlink(outside, inbox / "outdir")
    os.symlink(outside / "secret.png", inbox / "leak.png")
    os.symlink(outside / "secret.png", inbox / "leak.mask.png")
    noise_image(inbox / "plain.png", seed=9)
    os.symlink(outside / "evil.toml", inbox / "plain.toml")
    return config


@pytest.fixture(scope="module")
def escapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OnceReport]:
    """Build the escape-attempt inbox and process it with one `once` run."""
    root = tmp_path_factory.mktemp("escapes")
    config = build_inbox(root)
    before = snapshot(root / "outside")
    report = run_once(load_config(config), SolidGenerator)
    assert snapshot(root / "outside") == before  # nothing outside was written or replaced
    return root, report


CASES = [(f"{s}.png", e) for s, (_, e) in IMAGE_SIDECARS.items()] + [
    (f"{n}.job.toml", e) for n, (_, e) in JOBS.items()
]


@pytest.mark.parametrize(("input_name", "error"), CASES, ids=[c[0] for c in CASES])
def test_escaping_sidecar_paths_and_keys_are_refused(
    input_name: str, error: str, escapes: tuple[Path, OnceReport]
) -> None:
    """A sidecar path or key that leads out of the inbox fails the job with the exact rule."""
    root, report = escapes
    expected = _fill(error, root / "outside")
    folder = input_name.removesuffix(".job.toml").removesuffix(".png")
    out = manifest(root / "outbox" / folder)
    assert (out["status"], out["error"], out["outputs"]) == ("failed", expected, [])
    result = next(r for r in report.results if r.rel == input_name)
    assert (result.outcome, result.message) == (Outcome.failed, expected)


def test_symlinks_out_of_the_inbox_are_refused_and_never_read(
    escapes: tuple[Path, OnceReport],
) -> None:
    """Inputs, masks, sidecars and folders that are symlinks out are listed as Refused."""
    root, report = escapes
    inbox = root / "inbox"
    assert sorted(report.refused) == sorted(
        (str(inbox / name), f"{name}: {REFUSED_SYMLINK}")
        for name in ("leak.png", "leak.mask.png", "links/m.png", "outdir", "plain.toml")
    )
    processed = {r.rel for r in report.results}
    assert not {"leak.png", "leak.mask.png", "outdir/secret.png"} & processed
    assert not (root / "outbox" / "leak").exists()
    # plain.png runs without the outside sidecar: the default single output, not count = 20.
    plain = manifest(root / "outbox" / "plain")
    assert (plain["status"], plain["sidecars"], len(plain["outputs"])) == ("done", [], 1)


def test_nothing_is_written_outside_the_output_and_state_folders(
    escapes: tuple[Path, OnceReport],
) -> None:
    """Every file the run created lies in the outbox or the state folder."""
    root, _ = escapes
    created = {
        p.relative_to(root).parts[0]
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and p.relative_to(root).parts[0] != "inbox"
    }
    assert created == {"outbox", "state", "outside", "config.toml"}


def test_a_planted_manifest_cannot_make_the_daemon_delete_outside_its_folder(
    tmp_path: Path,
) -> None:
    """Obsolete outputs listed as ../ names in a manifest someone planted are left alone."""
    config = write_config(tmp_path, str(tmp_path / "no-model"))
    noise_image(tmp_path / "inbox" / "cat.png")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    out = tmp_path / "outbox" / "cat"
    out.mkdir(parents=True)
    planted = {
        "status": "done",
        "job_key": "x",
        "outputs": [{"file": "../../victim.txt"}, {"file": str(victim)}],
    }
    (out / "manifest.json").write_text(json.dumps(planted), encoding="utf-8")
    report = run_once(load_config(config), SolidGenerator)
    assert [(r.rel, r.outcome) for r in report.results] == [("cat.png", Outcome.done)]
    assert victim.read_text(encoding="utf-8") == "keep me"


def test_output_folder_symlinked_out_of_the_output_root_is_not_written_through(
    tmp_path: Path,
) -> None:
    """An output folder replaced by a symlink that leads out makes the job wait, writing nothing."""
    config = write_config(tmp_path, str(tmp_path / "no-model"))
    noise_image(tmp_path / "inbox" / "cat.png")
    (tmp_path / "inbox" / "cat.toml").write_text("count = = 1\n", encoding="utf-8")
    noise_image(tmp_path / "inbox" / "sub" / "dog.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "outbox").mkdir()
    os.symlink(outside, tmp_path / "outbox" / "cat")
    os.symlink(outside, tmp_path / "outbox" / "sub")
    settings = load_config(config)
    report = run_once(settings, SolidGenerator)
    assert list(outside.iterdir()) == []
    outbox = tmp_path / "outbox"
    assert [(r.rel, r.outcome, r.message) for r in report.results] == [
        (
            "cat.png",
            Outcome.waiting,
            f"cat.png: output folder cat goes through a symlink, which could lead outside "
            f"{outbox}: remove the symlink; the job resumes by itself",
        ),
        (
            "sub/dog.png",
            Outcome.waiting,
            f"sub/dog.png: output folder sub/dog goes through a symlink, which could lead outside "
            f"{outbox}: remove the symlink; the job resumes by itself",
        ),
    ]
    (outbox / "cat").unlink()
    (outbox / "sub").unlink()
    again = run_once(settings, SolidGenerator)
    assert [(r.rel, r.outcome) for r in again.results] == [
        ("cat.png", Outcome.failed),
        ("sub/dog.png", Outcome.done),
    ]
    assert manifest(outbox / "cat")["error"].startswith("cat.toml: not valid TOML")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("../../etc/passwd.png", "_/_/etc/passwd"),
        ("a/./b.png", "a/b"),
        ("CON/aux.png", "CON_/aux_"),
        ("..png", "_"),
        ("x:y/a|b.txt", "x_y/a_b"),
    ],
)
def test_output_dirs_stay_under_the_output_root(tmp_path: Path, rel: str, expected: str) -> None:
    """Even a hostile input path maps to a sanitised folder below the output root."""
    config = write_config(tmp_path, str(tmp_path / "no-model"))
    inbox = load_config(config).inboxes[0]
    assert output_dir(inbox, rel) == inbox.output / expected
    assert sanitize_name("..") == "_" and sanitize_name(".") == "_"


@pytest.mark.slow
def test_pickle_weights_are_never_unpickled(tmp_path: Path) -> None:
    """A model folder or file with only .bin/.ckpt pickles waits, and no pickle runs."""
    marker = tmp_path / "UNPICKLED"

    class Trap:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Trap())
    folder = tmp_path / "pickled"
    (folder / "unet").mkdir(parents=True)
    (folder / "text_encoder").mkdir()
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    (folder / "unet" / "config.json").write_text("{}", encoding="utf-8")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(payload)
    (folder / "text_encoder" / "pytorch_model.bin").write_bytes(payload)
    (tmp_path / "model.ckpt").write_bytes(payload)
    config = write_config(tmp_path, str(folder), models={"ckpt": str(tmp_path / "model.ckpt")})
    (tmp_path / "inbox" / "cat.txt").write_text("a cat", encoding="utf-8")
    (tmp_path / "inbox" / "dog.txt").write_text("a dog", encoding="utf-8")
    (tmp_path / "inbox" / "dog.toml").write_text('model = "ckpt"\n', encoding="utf-8")

    assert main(["once", "-c", str(config)]) == 0
    assert not marker.exists()
    assert not any((tmp_path / "outbox").rglob("*.png"))
    settings = load_config(config)
    with SqliteJournal(settings.journal_path) as journal:
        waiting = {j.input: j.error for j in journal.jobs([JobState.waiting])}
    assert waiting == {
        "cat.txt": f'model "default" ({folder}) has no .safetensors weights '
        "(dropforge never loads .bin/.ckpt pickle files)",
        "dog.txt": f'model "ckpt" ({tmp_path / "model.ckpt"}) is not a folder: '
        "point [models] ckpt at a diffusers folder",
    }
    pickle.loads(payload)  # the trap is live: unpickling it does create the marker
    assert marker.exists()
