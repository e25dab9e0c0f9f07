"""Seed 003 end to end: chapters → scene parts → prompts, STEM.prompts.toml, edits, names."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main
from daemon.planning.extract import extract_parts
from daemon.planning.scene_prompts import plan_scenes, read_prompts, render_prompts
from tests.helpers import manifest, snapshot, write_config

CHAPTER = """\
# Chapter 1: The Letter

Emma sat at her desk in the cramped office, reading the letter again. Rain drummed on the
window; it was nearly midnight. She felt a cold dread.

* * *

The harbour at dawn, gulls over the cranes. Marcus waited on the pier.

* * *

Marcus walked into the kitchen and slammed the door. Emma laughed.

## CRAFT NOTES
Keep the rain motif going.
"""

TEMPLATE = "graphic novel panel, {subject} {action}, {setting}, {time}, {mood} mood"


def test_parts_of_a_scene() -> None:
    """Subject, setting, time, mood and action come out of plain prose."""
    parts = extract_parts(
        "Emma sat at her desk in the cramped office, reading the letter again. Rain drummed "
        "on the window; it was nearly midnight. She felt a cold dread."
    )
    assert parts.as_dict() == {
        "subject": "Emma",
        "setting": "office",
        "time": "midnight",
        "mood": "tense",
        "action": "sitting at her desk",
    }
    assert parts.name_words() == ["emma", "office", "sitting"]
    dr = extract_parts("Dr Quinn opens the vault in the laboratory at dawn. Quinn smiles.")
    assert (dr.subject, dr.action, dr.setting, dr.time) == (
        "Dr Quinn",
        "opening the vault",
        "laboratory",
        "dawn",
    )
    assert extract_parts("She ran down the alley.").subject == "a woman"


def test_a_rendered_prompts_file_reads_back_into_itself() -> None:
    """Render → read → plan → render is a fixed point, edits included (the job's dependency)."""
    texts = ["Emma reads in the office.", "Marcus runs on the pier at night."]
    scenes, notes = plan_scenes(texts, TEMPLATE, [], "p.toml")
    first = render_prompts("story.md", scenes)
    edited = first.replace(scenes[1].prompt, "a lighthouse (storm:1.3)")
    again, notes = plan_scenes(texts, TEMPLATE, read_prompts(edited, "p.toml"), "p.toml")
    assert [s.prompt for s in again] == [scenes[0].prompt, "a lighthouse (storm:1.3)"]
    assert notes == []
    rendered = render_prompts("story.md", again)
    third, _ = plan_scenes(texts, TEMPLATE, read_prompts(rendered, "p.toml"), "p.toml")
    assert render_prompts("story.md", third) == rendered


def test_an_edit_follows_its_scene_and_is_dropped_with_a_note_when_the_text_changes() -> None:
    """Matched by text, an edit survives a new scene before it; a rewritten scene drops it."""
    texts = ["Emma reads.", "Marcus runs."]
    scenes, _ = plan_scenes(texts, "{text}", [], "p.toml")
    edits = read_prompts(render_prompts("s.md", scenes).replace('"Marcus runs."', '"a fox"'), "p")
    moved, _ = plan_scenes(["A new scene.", *texts], "{text}", edits, "p.toml")
    assert [s.prompt for s in moved] == ["A new scene.", "Emma reads.", "a fox"]
    changed, notes = plan_scenes(["Emma reads.", "Marcus walks."], "{text}", edits, "p.toml")
    assert [s.prompt for s in changed] == ["Emma reads.", "Marcus walks."]
    assert notes == [
        "p.toml: the edited prompt of scene 2 was dropped because its scene's text changed; "
        'it was "a fox"'
    ]


def test_a_broken_prompts_file_names_the_key() -> None:
    """A prompts file with a bad value fails with file, key, rule and value."""
    with pytest.raises(Exception) as caught:
        read_prompts('[[scene]]\nprompt = 3\nmade = "x"\n', "outbox/story/story.prompts.toml")
    assert str(caught.value) == (
        "outbox/story/story.prompts.toml: scene[1].prompt must be a string, got 3"
    )


def story_inbox(root: Path, tiny_models: Path, sidecar: str) -> Path:
    """A config and an inbox holding chapter_01.md with three scenes and its sidecar."""
    config = write_config(root, str(tiny_models / "sd"))
    (root / "inbox" / "chapter_01.md").write_text(CHAPTER, encoding="utf-8")
    (root / "inbox" / "chapter_01.toml").write_text(sidecar, encoding="utf-8")
    return config


def once(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`dropforge once`, which must succeed; its output."""
    code = main(["once", "-c", str(config)])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


@pytest.mark.slow
def test_descriptive_names_prompts_file_and_an_edit_that_remakes_only_its_scene(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Descriptive names, headings and notes kept out, and an edit in STEM.prompts.toml remakes
    only that scene's image: every other scene's file keeps its inode and mtime."""
    sidecar = (
        f'name_style = "descriptive"\nprompt_template = "{TEMPLATE}"\n'
        'exclude_sections = ["CRAFT NOTES"]\n'
    )
    config = story_inbox(tmp_path, tiny_models, sidecar)
    once(config, capsys)
    out = tmp_path / "outbox" / "chapter_01"
    images = sorted(p.name for p in out.glob("*.png") if p.name != "contact.png")
    assert images == [
        "chapter_01_scene_01_emma_office_sitting.png",
        "chapter_01_scene_02_marcus_harbour_waiting.png",
        "chapter_01_scene_03_marcus_kitchen_walking.png",
    ]
    recorded = manifest(out)
    prompts = {o["scene"]: o["prompt"] for o in recorded["outputs"] if "scene" in o}
    assert prompts[1] == (
        "graphic novel panel, Emma sitting at her desk, office, midnight, tense mood"
    )
    assert "Chapter" not in prompts[1] and "rain motif" not in prompts[3]
    prompts_file = out / "chapter_01.prompts.toml"
    assert {"file": "chapter_01.prompts.toml", "role": "prompts"}.items() <= next(
        o for o in recorded["outputs"] if o.get("role") == "prompts"
    ).items()

    before = snapshot(out)
    text = prompts_file.read_text(encoding="utf-8")
    prompts_file.write_text(text.replace(prompts[2], "a lighthouse in a (storm:1.4)"))
    once(config, capsys)
    after = snapshot(out)
    for name in (images[0], images[2]):
        assert after[name] == before[name], name
    assert after[images[1]] != before[images[1]]
    again = manifest(out)
    assert {o["scene"]: o["prompt"] for o in again["outputs"] if "scene" in o}[2] == (
        "a lighthouse in a (storm:1.4)"
    )
    # Nothing left to do: the rewritten prompts file is what the job now depends on.
    settled = snapshot(out)
    assert "Skipped (existing): 1" in once(config, capsys)
    assert snapshot(out) == settled


@pytest.mark.slow
def test_an_edited_chapter_scene_remakes_only_that_scene_and_scenes_picks(
    tmp_path: Path, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Editing scene 3 in the chapter keeps scenes 1-2 untouched; `scenes` picks scenes."""
    config = story_inbox(tmp_path, tiny_models, 'exclude_sections = ["CRAFT NOTES"]\n')
    once(config, capsys)
    out = tmp_path / "outbox" / "chapter_01"
    names = sorted(p.name for p in out.glob("chapter_01-s*.png"))
    assert [n[:14] for n in names] == ["chapter_01-s01", "chapter_01-s02", "chapter_01-s03"]
    before = snapshot(out)
    chapter = tmp_path / "inbox" / "chapter_01.md"
    chapter.write_text(CHAPTER.replace("Emma laughed.", "Emma wept."), encoding="utf-8")
    once(config, capsys)
    after = snapshot(out)
    assert after[names[0]] == before[names[0]] and after[names[1]] == before[names[1]]
    assert names[2] not in after  # its seed comes from its text, so its name changed too
    (tmp_path / "inbox" / "chapter_01.toml").write_text(
        'exclude_sections = ["CRAFT NOTES"]\nscenes = [2]\n', encoding="utf-8"
    )
    once(config, capsys)
    assert [p.name[:14] for p in out.glob("chapter_01-s*.png")] == ["chapter_01-s02"]
    (tmp_path / "inbox" / "chapter_01.toml").write_text("scenes = [2, 9]\n", encoding="utf-8")
    code = main(["once", "-c", str(config)])
    assert code == 1
    assert (
        manifest(out)["error"] == "chapter_01.toml: scenes[2] must be a scene number in 1..3, got 9"
    )
