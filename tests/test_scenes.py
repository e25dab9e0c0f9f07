"""Prompt files: reading text in the accepted encodings and splitting it into scenes."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from daemon.errors import InputError
from daemon.intake.scenes import chapter_number, read_prompt_text, split_scenes
from daemon.planning.scene_prompts import fill_template

CHAPTER = """\
# Chapter 1

Emma opens the   letter
at her desk.

* * *

The harbour at dawn, gulls over the cranes.
   ***
## Night ##
Rain on the window.

### CRAFT NOTES:
Keep the rain motif going.
---
**Craft Notes**

- pacing is slow here
---
Craft notes
---
A last scene with {braces} and #hashtag.
"""


def test_split_scenes_on_every_separator_and_excludes_sections() -> None:
    """Scenes split on * * *, *** and ---; headings, excluded sections and their tails go."""
    assert split_scenes(CHAPTER, ["craft notes"]) == [
        "Emma opens the letter at her desk.",
        "The harbour at dawn, gulls over the cranes.",
        "Rain on the window.",
        "A last scene with {braces} and #hashtag.",
    ]


def test_chapter_headings_of_every_kind_stay_out_of_scenes() -> None:
    """'# Chapter 1', 'CHAPTER TWO: …', a setext title and 'Part II' are not scene text."""
    text = (
        "CHAPTER TWO: The Storm\nPart II\nThe Storm\n=====\nRain fell.\n* * *\nChapter one ended.\n"
    )
    assert split_scenes(text, []) == ["Rain fell.", "Chapter one ended."]


def test_chapter_number_from_heading_or_file_name() -> None:
    """The chapter comes from a Chapter heading (digits, words, roman) or the file name."""
    assert chapter_number("# Chapter 3: Arrival\ntext", "notes.md") == 3
    assert chapter_number("CHAPTER TWELVE\ntext", "notes.md") == 12
    assert chapter_number("Chapter IV\ntext", "notes.md") == 4
    assert chapter_number("text", "chapter_07.md") == 7
    assert chapter_number("text", "ch2.txt") == 2
    assert chapter_number("text", "05-harbour.md") == 5
    assert chapter_number("text", "story.md") is None


def test_split_scenes_without_exclusions_keeps_every_section() -> None:
    """With nothing excluded, the notes are scenes like any other."""
    scenes = split_scenes(CHAPTER, [])
    assert len(scenes) == 6
    assert scenes[2] == "Rain on the window. Keep the rain motif going."
    assert scenes[3] == "**Craft Notes** - pacing is slow here"


def test_split_scenes_single_prompt_and_empty_scenes() -> None:
    """A file without separators is one scene; empty scenes between separators are dropped."""
    assert split_scenes("  a red fox\n\n in snow  \n", ["CRAFT NOTES"]) == ["a red fox in snow"]
    assert split_scenes("***\n\n---\none\n* * *\n\n", []) == ["one"]


def test_split_scenes_only_exact_separator_lines() -> None:
    """Lines that merely contain stars or dashes do not split."""
    text = "a - b\n* * * *\n-- -\nx *** y\n"
    assert split_scenes(text, []) == ["a - b * * * * -- - x *** y"]


def test_mentioning_an_excluded_name_in_prose_keeps_the_line() -> None:
    """Only a heading or a line that is just the name cuts a scene, not a sentence using it."""
    assert split_scenes("She read the craft notes aloud.\nThen left.", ["CRAFT NOTES"]) == [
        "She read the craft notes aloud. Then left."
    ]


def test_fill_template_leaves_other_braces_alone() -> None:
    """{text} is replaced; other braces in template or text are kept verbatim."""
    assert fill_template("graphic novel panel, {text}, {style}", "a {cat}", {}) == (
        "graphic novel panel, a {cat}, {style}"
    )
    assert fill_template("{text} | {text}", "x", {}) == "x | x"


def test_fill_template_drops_pieces_whose_parts_are_empty() -> None:
    """A comma-separated piece whose placeholders found nothing is left out."""
    parts = {"subject": "Emma", "setting": "office", "time": "", "mood": "tense", "action": ""}
    template = "graphic novel panel, {subject} {action}, {setting}, at {time}, {mood} mood"
    assert fill_template(template, "text", parts) == (
        "graphic novel panel, Emma, office, tense mood"
    )


@pytest.mark.parametrize(
    "encoded",
    [
        "café\r\nline two".encode(),
        codecs.BOM_UTF8 + "café\r\nline two".encode(),
        codecs.BOM_UTF16_LE + "café\r\nline two".encode("utf-16-le"),
        codecs.BOM_UTF16_BE + "café\r\nline two".encode("utf-16-be"),
    ],
)
def test_read_prompt_text_encodings(tmp_path: Path, encoded: bytes) -> None:
    """UTF-8 with or without BOM and UTF-16 with BOM read alike, newlines normalised."""
    path = tmp_path / "notes.txt"
    path.write_bytes(encoded)
    assert read_prompt_text(path, "notes.txt") == "café\nline two"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello world!\xff more", "notes.txt: not UTF-8 text (byte 0xff at offset 12)"),
        (
            codecs.BOM_UTF8 + b"ab\xc3(",
            "notes.txt: not UTF-8 text (byte 0xc3 at offset 5)",
        ),
        (
            codecs.BOM_UTF16_LE + "ab".encode("utf-16-le") + b"\x00\xdc",
            "notes.txt: not UTF-16 text (byte 0x00 at offset 6)",
        ),
        (b"", "notes.txt: empty prompt file"),
        (b" \n\t\r\n ", "notes.txt: empty prompt file"),
        (codecs.BOM_UTF16_LE + " \n".encode("utf-16-le"), "notes.txt: empty prompt file"),
    ],
)
def test_read_prompt_text_refuses_bad_files(tmp_path: Path, data: bytes, message: str) -> None:
    """Undecodable or empty prompt files fail with a message naming the file and the problem."""
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    with pytest.raises(InputError) as caught:
        read_prompt_text(path, "notes.txt")
    assert str(caught.value) == message


def test_read_prompt_text_size_limit(tmp_path: Path) -> None:
    """A file over the limit is refused with its size and the limit; one at the limit is read."""
    path = tmp_path / "notes.txt"
    path.write_text("x" * 101, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read_prompt_text(path, "notes.txt", max_bytes=100)
    assert str(caught.value) == (
        "notes.txt: prompt file too large (101 bytes, the limit is 100 bytes)"
    )
    path.write_text("x" * 100, encoding="utf-8")
    assert read_prompt_text(path, "notes.txt", max_bytes=100) == "x" * 100


def test_read_prompt_text_missing_file(tmp_path: Path) -> None:
    """A prompt file that cannot be opened is an input error naming the file."""
    with pytest.raises(InputError) as caught:
        read_prompt_text(tmp_path / "gone.txt", "gone.txt")
    assert str(caught.value) == "gone.txt: cannot read: No such file or directory"
