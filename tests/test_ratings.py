"""Ratings in XMP sidecars: read and written as darktable, digiKam, Lightroom and Immich do,
other tools' sidecars kept whole, `dropforge rate` from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main
from daemon.outputs.discards import deleted_outputs, forget_discards, record_discards
from daemon.outputs.manifest import Manifest, ManifestStatus, OutputEntry, write_manifest
from daemon.outputs.ratings import Rating, read_rating, sidecar_paths, write_rating
from tests.helpers import noise_image

DARKTABLE = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
    xmp:Rating="{rating}"
    darktable:xmp_version="5"
    darktable:history_end="3"/>
 </rdf:RDF>
</x:xmpmeta>
"""
LIGHTROOM = """<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/">
   <xmp:Rating>{rating}</xmp:Rating>
   <xmp:Label>Red</xmp:Label>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""
NO_RATING = """<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="image/png"/>
 </rdf:RDF>
</x:xmpmeta>
"""


def test_favorite_discard_and_clear_round_trip_in_name_ext_xmp(tmp_path: Path) -> None:
    """A rating is written as ``NAME.png.xmp`` with xmp:Rating 5 or -1 and cleared by removing
    the sidecar dropforge wrote; the image is never touched."""
    image = tmp_path / "cat-1.png"
    noise_image(image)
    before = image.read_bytes()
    assert read_rating(image) is Rating.none
    assert write_rating(image, Rating.favorite) == tmp_path / "cat-1.png.xmp"
    assert 'xmp:Rating="5"' in (tmp_path / "cat-1.png.xmp").read_text(encoding="utf-8")
    assert read_rating(image) is Rating.favorite
    write_rating(image, Rating.discard)
    assert read_rating(image) is Rating.discard
    assert write_rating(image, Rating.none) is None
    assert not (tmp_path / "cat-1.png.xmp").exists()
    assert image.read_bytes() == before


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [(DARKTABLE, "5", Rating.favorite), (DARKTABLE, "-1", Rating.discard),
     (DARKTABLE, "3", Rating.none), (LIGHTROOM, "5", Rating.favorite),
     (LIGHTROOM, "-1", Rating.discard), (NO_RATING, "", Rating.none)],
)  # fmt: skip
def test_ratings_other_tools_wrote_are_read(
    tmp_path: Path, template: str, value: str, expected: Rating
) -> None:
    """darktable's attribute form and Lightroom's element form are read; 5 is a favorite,
    -1 (rejected) a discard, other stars unselected."""
    image = tmp_path / "a.png"
    (tmp_path / "a.png.xmp").write_text(template.format(rating=value), encoding="utf-8")
    assert read_rating(image) is expected


def test_name_xmp_is_read_too_and_name_ext_xmp_wins(tmp_path: Path) -> None:
    """Lightroom's ``NAME.xmp`` is read; when both exist ``NAME.png.xmp`` decides."""
    image = tmp_path / "a.png"
    assert sidecar_paths(image) == (tmp_path / "a.png.xmp", tmp_path / "a.xmp")
    (tmp_path / "a.xmp").write_text(LIGHTROOM.format(rating=5), encoding="utf-8")
    assert read_rating(image) is Rating.favorite
    (tmp_path / "a.png.xmp").write_text(DARKTABLE.format(rating=-1), encoding="utf-8")
    assert read_rating(image) is Rating.discard


@pytest.mark.parametrize("template", [DARKTABLE, LIGHTROOM, NO_RATING])
def test_rating_another_tools_sidecar_keeps_the_rest(tmp_path: Path, template: str) -> None:
    """Rating over a sidecar another tool wrote replaces (or adds) only the rating: its
    history, labels and other fields stay, and clearing sets 0 instead of deleting it."""
    image = tmp_path / "a.png"
    sidecar = tmp_path / "a.png.xmp"
    sidecar.write_text(template.format(rating=2), encoding="utf-8")
    write_rating(image, Rating.favorite)
    text = sidecar.read_text(encoding="utf-8")
    assert read_rating(image) is Rating.favorite
    assert text.replace('xmp:Rating="5"', "").replace("<xmp:Rating>5</xmp:Rating>", "") != text
    for kept in ("darktable:history_end", "xmp:Label", "dc:format"):
        if kept in template:
            assert kept in text
    write_rating(image, Rating.none)
    assert sidecar.exists() and read_rating(image) is Rating.none


def test_rate_command_prints_each_file_and_refuses_what_it_cannot_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dropforge rate` rates each file, names the sidecar, and exits 1 naming a missing file
    or a file that is not an image; without exactly one action it is a usage error."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    noise_image(a)
    noise_image(b)
    assert main(["rate", str(a), str(b), "--favorite"]) == 0
    assert capsys.readouterr().out == f"{a}: favorite (a.png.xmp)\n{b}: favorite (b.png.xmp)\n"
    assert main(["rate", str(a), "--discard"]) == 0
    assert read_rating(a) is Rating.discard and a.is_file()
    assert main(["rate", str(b), "--clear"]) == 0
    assert capsys.readouterr().out == f"{a}: discard (a.png.xmp)\n{b}: unrated\n"
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    assert main(["rate", str(tmp_path / "gone.png"), str(tmp_path / "notes.txt"), "--clear"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"{tmp_path / 'gone.png'}: no such file, not rated\n"
        f"{tmp_path / 'notes.txt'}: not an image or mesh, not rated\n"
    )
    assert main(["rate", str(a)]) == 2
    assert capsys.readouterr().err == (
        "Error: rate needs exactly one of --favorite, --discard or --clear\n"
    )


def _done_folder(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True)
    entries = []
    for n, name in enumerate(names):
        noise_image(folder / name, seed=n)
        entries.append(OutputEntry(name, "0" * 64, (folder / name).stat().st_size, seed=n))
    write_manifest(folder, Manifest(ManifestStatus.done, "key", "text2image", None,
                                    outputs=tuple(entries)))  # fmt: skip


def test_deleted_outputs_of_a_done_job_are_recorded_as_discards_and_can_be_forgotten(
    tmp_path: Path,
) -> None:
    """A file gone from a done folder is a deletion to record; once recorded the folder is
    intact; a damaged file makes it not intact; forgetting removes the record."""
    folder = tmp_path / "cat"
    _done_folder(folder, ["cat-1.png", "cat-2.png"])
    assert deleted_outputs(folder, "key") == ([], True)
    assert deleted_outputs(folder, "other key") is None
    (folder / "cat-1.png").unlink()
    assert deleted_outputs(folder, "key") == ([folder / "cat-1.png"], True)
    record_discards([folder / "cat-1.png"])
    assert read_rating(folder / "cat-1.png") is Rating.discard
    assert deleted_outputs(folder, "key") == ([], True)
    (folder / "cat-2.png").write_bytes(b"damaged")
    assert deleted_outputs(folder, "key") == ([], False)
    assert forget_discards(folder) == [folder / "cat-1.png"]
    assert not (folder / "cat-1.png.xmp").exists()


def test_retry_force_forgets_the_discards_of_deleted_outputs(tmp_path: Path) -> None:
    """`retry --force` on a job clears the discards recorded for its deleted outputs, so the
    forced run makes them again (and they show unrated)."""
    from daemon.runtime import control
    from daemon.store.sqlite import SqliteJournal

    folder = tmp_path / "outbox" / "cat"
    _done_folder(folder, ["cat-1.png", "cat-2.png"])
    (folder / "cat-1.png").unlink()
    record_discards([folder / "cat-1.png"])
    write_rating(folder / "cat-2.png", Rating.discard)  # rated, not deleted: kept
    with SqliteJournal(tmp_path / "journal.sqlite3") as journal:
        job, _ = journal.upsert_job(
            inbox=str(tmp_path / "inbox"), input="cat.png", kind="image", fingerprint="f",
            job_key="key", out_dir=str(folder),
        )  # fmt: skip
        assert control.retry(journal, [job], force=True) == 1
    assert read_rating(folder / "cat-1.png") is Rating.none
    assert read_rating(folder / "cat-2.png") is Rating.discard
