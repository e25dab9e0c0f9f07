"""Parameter validation, sidecar reading and layering (daemon.planning.params, .checks)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings, settings_from_mapping
from daemon.errors import ConfigError, InputError
from daemon.generators.samplers import SAMPLER_NAMES
from daemon.planning.params import (
    PARAM_KEYS,
    check_settings,
    effective_params,
    read_sidecar,
    validate_layer,
)

SEED_MAX = 4294967295


def make_settings(tmp_path: Path, **tables: Any) -> Settings:
    """Build validated settings with two model aliases and two LoRA aliases."""
    data: dict[str, Any] = {
        "inbox": [{"path": "inbox", "output": "outbox"}],
        "models": {"default": "org/model", "mesh": "org/mesh"},
        "loras": {"ink": "loras/ink.safetensors", "watercolor": "loras/wc.safetensors"},
    }
    data.update(tables)
    return settings_from_mapping(data, tmp_path / "config.toml")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with the shipped presets and no [defaults]."""
    return make_settings(tmp_path)


def error_of(settings: Settings, data: dict[str, Any], source: str = "cat.toml") -> str:
    """Validate one layer that must fail and return the message."""
    with pytest.raises(InputError) as info:
        validate_layer(data, source, settings)
    return str(info.value)


def test_param_keys_are_every_documented_key() -> None:
    """PARAM_KEYS lists exactly the keys of the parameters table, each once."""
    expected = {
        "task", "preset", "prompt", "negative_prompt", "prompts", "count", "seed", "seeds",
        "steps", "guidance", "strength", "width", "height", "vary", "mask", "model", "lora",
        "lora_scale", "mesh_resolution", "formats", "texture", "depth", "paths", "pose",
        "start", "end", "endpoints", "exclude_sections", "prompt_template", "force",
        "sampler", "name_style", "scenes", "fps", "size", "base", "expressions",
        "seed_range",
        "priority",
    }  # fmt: skip
    assert set(PARAM_KEYS) == expected
    assert len(PARAM_KEYS) == len(expected)


GOOD: list[tuple[str, Any, Any]] = [
    ("task", "text2image", "text2image"),
    ("task", "tween", "tween"),
    ("preset", "draft", "draft"),
    ("prompt", "a cat", "a cat"),
    ("prompt", "", ""),
    ("prompt", "x" * 4000, "x" * 4000),
    ("negative_prompt", "blurry", "blurry"),
    ("prompts", ["a", "b"], ("a", "b")),
    ("prompts", ["p"] * 20, ("p",) * 20),
    ("count", 1, 1),
    ("count", 20, 20),
    ("seed", 0, 0),
    ("seed", SEED_MAX, SEED_MAX),
    ("seeds", [3, 1, SEED_MAX], (3, 1, SEED_MAX)),
    ("steps", 1, 1),
    ("steps", 150, 150),
    ("guidance", 0, 0.0),
    ("guidance", 30, 30.0),
    ("guidance", 7.5, 7.5),
    ("strength", 1, 1.0),
    ("strength", 0.25, 0.25),
    ("width", 64, 64),
    ("height", 2048, 2048),
    ("width", 520, 520),
    ("vary", {"guidance": [5, 9.5]}, {"guidance": (5.0, 9.5)}),
    ("vary", {"strength": [0.9, 0.1]}, {"strength": (0.9, 0.1)}),
    (
        "vary",
        {"steps": [10, 40], "lora_scale": [0, 2]},
        {"steps": (10.0, 40.0), "lora_scale": (0.0, 2.0)},
    ),
    ("vary", {}, {}),
    ("mask", "masks/cat.png", "masks/cat.png"),
    ("mask", "masks\\cat.png", "masks/cat.png"),
    ("mask", "./cat.mask.png", "./cat.mask.png"),
    ("mask", "a..b/c.png", "a..b/c.png"),
    ("start", "faces/happy.png", "faces/happy.png"),
    ("end", "sad.png", "sad.png"),
    ("endpoints", "faces", "faces"),
    ("model", "mesh", "mesh"),
    ("lora", "ink", "ink"),
    ("lora", "", ""),
    ("lora_scale", 0, 0.0),
    ("lora_scale", 2, 2.0),
    ("mesh_resolution", 64, 64),
    ("mesh_resolution", 512, 512),
    ("formats", ["glb"], ("glb",)),
    ("formats", ["obj", "glb", "ply"], ("obj", "glb", "ply")),
    ("texture", True, True),
    ("depth", 1, 1),
    ("depth", 6, 6),
    (
        "paths",
        [{"id": "p_1.a-b", "start": "happy", "end": "very sad"}],
        ({"id": "p_1.a-b", "start": "happy", "end": "very sad"},),
    ),
    ("pose", "front", "front"),
    ("exclude_sections", ["CRAFT NOTES"], ("CRAFT NOTES",)),
    ("exclude_sections", [], ()),
    ("prompt_template", "graphic novel panel, {text}", "graphic novel panel, {text}"),
    ("force", False, False),
    ("sampler", "dpm++ 2m karras", "DPM++ 2M Karras"),
    ("sampler", "", ""),
    ("name_style", "descriptive", "descriptive"),
    ("scenes", [2, 5], (2, 5)),
    ("fps", 12, 12.0),
    ("size", "1024 x 1536", "1024x1536"),
    ("base", "faces/neutral.png", "faces/neutral.png"),
    (
        "expressions",
        [{"id": "ah", "prompt": "mouth open"}],
        ({"id": "ah", "prompt": "mouth open"},),
    ),
    ("prompt_template", "panel, {subject}, {mood} mood", "panel, {subject}, {mood} mood"),
    ("seed", "random", "random"),
    ("seed_range", [0, 999999], (0, 999999)),
    ("seed_range", [7, 7], (7, 7)),
    ("priority", 5, 5),
    ("priority", -1000, -1000),
]


@pytest.mark.parametrize(("key", "value", "expected"), GOOD)
def test_valid_values_are_normalised(
    settings: Settings, key: str, value: Any, expected: Any
) -> None:
    """A valid value passes and comes back normalised (floats for numbers, tuples for lists)."""
    result = validate_layer({key: value}, "cat.toml", settings)
    assert result == {key: expected}
    assert type(result[key]) is type(expected)


def test_every_key_has_a_good_example() -> None:
    """The table of good values covers every parameter key."""
    assert {key for key, _, _ in GOOD} == set(PARAM_KEYS)


BAD: list[tuple[str, Any, str]] = [
    (
        "task",
        "sculpt",
        'task must be one of text2image, variations, inpaint, mesh, tween, got "sculpt"',
    ),
    ("task", 3, "task must be one of text2image, variations, inpaint, mesh, tween, got 3"),
    ("preset", "ultra", 'preset must be one of the presets: draft, high, standard, got "ultra"'),
    ("prompt", 5, "prompt must be a string, got 5"),
    ("prompt", "x" * 4001, "prompt must be at most 4000 characters, got 4001 characters"),
    ("negative_prompt", ["a"], 'negative_prompt must be a string, got ["a"]'),
    ("prompts", "a cat", 'prompts must be a list of 0..20 non-empty strings, got "a cat"'),
    (
        "prompts",
        ["p"] * 21,
        "prompts must be a list of 0..20 non-empty strings, got [" + '"p", ' * 15 + '"...',
    ),
    ("prompts", ["a", ""], 'prompts[2] must be a non-empty string, got ""'),
    ("prompts", ["a", 7], "prompts[2] must be a non-empty string, got 7"),
    ("prompts", ["x" * 4001], "prompts[1] must be at most 4000 characters, got 4001 characters"),
    ("count", 50, "count must be 1..20, got 50"),
    ("count", 0, "count must be 1..20, got 0"),
    ("count", "4", 'count must be an integer in 1..20, got "4"'),
    ("count", 4.0, "count must be an integer in 1..20, got 4.0"),
    ("count", True, "count must be an integer in 1..20, got true"),
    ("seed", -1, "seed must be 0..4294967295, got -1"),
    ("seed", SEED_MAX + 1, "seed must be 0..4294967295, got 4294967296"),
    ("seed", 1.5, 'seed must be an integer in 0..4294967295 or "random", got 1.5'),
    ("seed", "rand", 'seed must be an integer in 0..4294967295 or "random", got "rand"'),
    (
        "seed_range",
        [9, 1],
        "seed_range must be [low, high]: two integers in 0..4294967295, low ≤ high, got [9, 1]",
    ),
    (
        "seed_range",
        [1],
        "seed_range must be [low, high]: two integers in 0..4294967295, low ≤ high, got [1]",
    ),
    (
        "seed_range",
        [-1, 5],
        "seed_range must be [low, high]: two integers in 0..4294967295, low ≤ high, got [-1, 5]",
    ),
    ("seeds", 5, "seeds must be a list of 1..20 unique integers in 0..4294967295, got 5"),
    ("seeds", [], "seeds must be a list of 1..20 unique integers in 0..4294967295, got []"),
    ("seeds", [1, "2"], 'seeds[2] must be an integer in 0..4294967295, got "2"'),
    ("seeds", [1, -2], "seeds[2] must be 0..4294967295, got -2"),
    ("seeds", [7, 8, 7], "seeds[3] must be unique (it repeats an earlier seed), got 7"),
    ("seeds", [False], "seeds[1] must be an integer in 0..4294967295, got false"),
    ("steps", 0, "steps must be 1..150, got 0"),
    ("steps", 151, "steps must be 1..150, got 151"),
    ("steps", 30.5, "steps must be an integer in 1..150, got 30.5"),
    ("guidance", 31, "guidance must be 0..30, got 31"),
    ("guidance", -0.5, "guidance must be 0..30, got -0.5"),
    ("guidance", "7", 'guidance must be a number in 0..30, got "7"'),
    ("guidance", True, "guidance must be a number in 0..30, got true"),
    ("guidance", math.nan, "guidance must be 0..30, got nan"),
    ("guidance", math.inf, "guidance must be 0..30, got inf"),
    ("strength", 1.5, "strength must be 0..1, got 1.5"),
    ("strength", False, "strength must be a number in 0..1, got false"),
    ("width", 500, "width must be a multiple of 8 in 64..2048, got 500"),
    ("width", 56, "width must be a multiple of 8 in 64..2048, got 56"),
    ("height", 2056, "height must be a multiple of 8 in 64..2048, got 2056"),
    ("height", 512.0, "height must be a multiple of 8 in 64..2048, got 512.0"),
    ("vary", [5, 9], "vary must be a table of [low, high] ranges, got [5, 9]"),
    (
        "vary",
        {"guidance": 5},
        "vary.guidance must be a list [low, high] of two numbers in 0..30, got 5",
    ),
    (
        "vary",
        {"guidance": [5]},
        "vary.guidance must be a list [low, high] of two numbers in 0..30, got [5]",
    ),
    (
        "vary",
        {"guidance": [5, 40]},
        "vary.guidance must be a list [low, high] of two numbers in 0..30, got [5, 40]",
    ),
    (
        "vary",
        {"strength": [0, "1"]},
        'vary.strength must be a list [low, high] of two numbers in 0..1, got [0, "1"]',
    ),
    (
        "vary",
        {"steps": [0, 10]},
        "vary.steps must be a list [low, high] of two numbers in 1..150, got [0, 10]",
    ),
    (
        "vary",
        {"lora_scale": [True, 1]},
        "vary.lora_scale must be a list [low, high] of two numbers in 0..2, got [true, 1]",
    ),
    ("vary", {"guidnce": [5, 9]}, "vary.guidnce: unknown key, did you mean guidance?"),
    ("vary", {"width": [64, 512]}, "vary.width: unknown key"),
    ("mask", "/etc/passwd", 'mask must be a relative path inside the inbox, got "/etc/passwd"'),
    ("mask", "C:\\x", 'mask must be a relative path inside the inbox, got "C:\\\\x"'),
    ("mask", "c:x.png", 'mask must be a relative path inside the inbox, got "c:x.png"'),
    (
        "mask",
        "\\\\server\\x",
        'mask must be a relative path inside the inbox, got "\\\\\\\\server\\\\x"',
    ),
    ("mask", "../secret.png", 'mask must be a relative path inside the inbox, got "../secret.png"'),
    (
        "mask",
        "a\\..\\..\\b.png",
        'mask must be a relative path inside the inbox, got "a\\\\..\\\\..\\\\b.png"',
    ),
    ("mask", "a/b/..", 'mask must be a relative path inside the inbox, got "a/b/.."'),
    ("mask", "a\0b.png", 'mask must be a relative path inside the inbox, got "a\\u0000b.png"'),
    ("mask", "", 'mask must be a relative path inside the inbox, got ""'),
    ("start", 1, "start must be a relative path inside the inbox, got 1"),
    ("end", "/x.png", 'end must be a relative path inside the inbox, got "/x.png"'),
    ("endpoints", "../faces", 'endpoints must be a relative path inside the inbox, got "../faces"'),
    ("model", "sdxl", 'model must be one of the [models] aliases: default, mesh, got "sdxl"'),
    (
        "model",
        "org/model",
        'model must be one of the [models] aliases: default, mesh, got "org/model"',
    ),
    (
        "lora",
        "oil",
        'lora must be one of the [loras] aliases: ink, watercolor, or "" for none, got "oil"',
    ),
    (
        "lora",
        False,
        'lora must be one of the [loras] aliases: ink, watercolor, or "" for none, got false',
    ),
    ("lora_scale", 2.5, "lora_scale must be 0..2, got 2.5"),
    ("lora_scale", "1", 'lora_scale must be a number in 0..2, got "1"'),
    ("mesh_resolution", 32, "mesh_resolution must be 64..512, got 32"),
    ("mesh_resolution", 1024, "mesh_resolution must be 64..512, got 1024"),
    ("formats", [], "formats must be a non-empty list of unique values from glb, ply, obj, got []"),
    (
        "formats",
        "glb",
        'formats must be a non-empty list of unique values from glb, ply, obj, got "glb"',
    ),
    ("formats", ["glb", "stl"], 'formats[2] must be one of glb, ply, obj, got "stl"'),
    (
        "formats",
        ["glb", "ply", "glb"],
        'formats[3] must be unique (it repeats an earlier format), got "glb"',
    ),
    ("texture", 1, "texture must be true or false, got 1"),
    ("texture", "yes", 'texture must be true or false, got "yes"'),
    ("depth", 7, "depth must be 1..6, got 7"),
    ("depth", 0, "depth must be 1..6, got 0"),
    ("paths", [], "paths must be a list of 1..100 tables {id, start, end}, got []"),
    (
        "paths",
        {"id": "a"},
        'paths must be a list of 1..100 tables {id, start, end}, got {"id": "a"}',
    ),
    ("paths", ["a"], 'paths[1] must be a table {id, start, end}, got "a"'),
    ("paths", [{"id": "a", "start": "x"}], "paths[1].end is required"),
    (
        "paths",
        [{"id": "a", "start": "x", "end": "y", "ends": "z"}],
        "paths[1].ends: unknown key, did you mean end?",
    ),
    (
        "paths",
        [{"id": "a", "start": "x", "end": "y"}, {"id": "b c", "start": "x", "end": "y"}],
        'paths[2].id must be a name made of letters, digits, "_", "-" and ".", got "b c"',
    ),
    (
        "paths",
        [{"id": "", "start": "x", "end": "y"}],
        'paths[1].id must be a name made of letters, digits, "_", "-" and ".", got ""',
    ),
    (
        "paths",
        [{"id": "a", "start": "x", "end": "y"}, {"id": "a", "start": "y", "end": "z"}],
        'paths[2].id must be unique (it repeats an earlier id), got "a"',
    ),
    (
        "paths",
        [{"id": "a", "start": "../x", "end": "y"}],
        'paths[1].start must be a non-empty name without slashes, got "../x"',
    ),
    (
        "paths",
        [{"id": "a", "start": "x", "end": 3}],
        "paths[1].end must be a non-empty name without slashes, got 3",
    ),
    ("pose", "a/b", 'pose must be a non-empty name without slashes, got "a/b"'),
    ("pose", "", 'pose must be a non-empty name without slashes, got ""'),
    (
        "exclude_sections",
        "CRAFT NOTES",
        'exclude_sections must be a list of strings, got "CRAFT NOTES"',
    ),
    ("exclude_sections", ["a", 2], "exclude_sections[2] must be a string, got 2"),
    (
        "prompt_template",
        "panel, {txt}",
        "prompt_template must be a string containing {text}, {subject}, {setting}, {time}, "
        '{mood} or {action}, got "panel, {txt}"',
    ),
    (
        "prompt_template",
        1,
        "prompt_template must be a string containing {text}, {subject}, {setting}, {time}, "
        "{mood} or {action}, got 1",
    ),
    ("name_style", "fancy", 'name_style must be plain or descriptive, got "fancy"'),
    ("fps", 0, "fps must be 1..60, got 0"),
    (
        "size",
        "1001x1536",
        'size must be "WIDTHxHEIGHT", each a multiple of 8 in 64..2048, e.g. "1024x1536", '
        'got "1001x1536"',
    ),
    ("base", "../face.png", 'base must be a relative path inside the inbox, got "../face.png"'),
    ("expressions", [{"id": "ah"}], "expressions[1].prompt is required"),
    (
        "expressions",
        [{"id": "ah", "prompt": "x", "promt": "y"}],
        "expressions[1].promt: unknown key, did you mean prompt?",
    ),
    (
        "sampler",
        "Euler b",
        "sampler must be an A1111 sampler name: "
        + ", ".join(SAMPLER_NAMES)
        + ' (or "" for the model\'s own), got "Euler b", did you mean "Euler a"?',
    ),
    (
        "scenes",
        [],
        "scenes must be a list of 1..1000 unique scene numbers (1 is the first scene), got []",
    ),
    ("scenes", [2, 0], "scenes[2] must be 1..100000, got 0"),
    ("scenes", [2, 2], "scenes[2] must be unique (it repeats an earlier scene), got 2"),
    ("force", "true", 'force must be true or false, got "true"'),
    ("force", 0, "force must be true or false, got 0"),
    ("priority", 1001, "priority must be -1000..1000, got 1001"),
    ("priority", 1.5, "priority must be an integer in -1000..1000, got 1.5"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD)
def test_invalid_values_name_file_key_rule_and_value(
    settings: Settings, key: str, value: Any, message: str
) -> None:
    """An invalid value raises InputError with the file, the key, the rule and the value."""
    assert error_of(settings, {key: value}) == f"cat.toml: {message}"


def test_every_key_has_a_bad_example() -> None:
    """The table of bad values covers every parameter key."""
    assert {key for key, _, _ in BAD} == set(PARAM_KEYS)


def test_bad_value_error_carries_its_parts(settings: Settings) -> None:
    """The raised InputError exposes file, key, rule and value for callers."""
    with pytest.raises(InputError) as info:
        validate_layer({"count": 50}, "a/b/_defaults.toml", settings)
    assert (info.value.file, info.value.key, info.value.rule, info.value.value) == (
        "a/b/_defaults.toml",
        "count",
        "1..20",
        50,
    )
    assert str(info.value) == "a/b/_defaults.toml: count must be 1..20, got 50"


def test_lora_without_aliases_says_only_empty_is_allowed(tmp_path: Path) -> None:
    """With no [loras] defined the lora rule says so instead of listing nothing."""
    settings = settings_from_mapping(
        {"inbox": [{"path": "in", "output": "out"}]}, tmp_path / "config.toml"
    )
    assert error_of(settings, {"lora": "ink"}) == (
        'cat.toml: lora must be "" (config.toml defines no [loras] aliases), got "ink"'
    )
    assert error_of(settings, {"model": "x"}) == (
        'cat.toml: model must be one of the [models] aliases: (none defined), got "x"'
    )


def test_preset_rule_lists_custom_presets_sorted(tmp_path: Path) -> None:
    """Presets defined in config.toml appear in the rule, sorted by name."""
    settings = make_settings(tmp_path, presets={"best": {"steps": 80}})
    assert error_of(settings, {"preset": "hi"}) == (
        'cat.toml: preset must be one of the presets: best, draft, high, standard, got "hi"'
    )
    assert validate_layer({"preset": "best"}, "cat.toml", settings) == {"preset": "best"}


def test_unknown_key_suggests_a_close_match(settings: Settings) -> None:
    """A misspelt key is an error that suggests the intended key."""
    assert error_of(settings, {"cuont": 4}) == "cat.toml: cuont: unknown key, did you mean count?"
    assert error_of(settings, {"negative": "x"}, "a/b/_defaults.toml") == (
        "a/b/_defaults.toml: negative: unknown key, did you mean negative_prompt?"
    )


def test_unknown_key_without_close_match(settings: Settings) -> None:
    """A key resembling nothing is reported without a suggestion."""
    assert error_of(settings, {"foo": 1}) == "cat.toml: foo: unknown key"


def test_seeds_and_matching_count_in_one_layer(settings: Settings) -> None:
    """A count equal to the number of seeds in the same layer is accepted."""
    result = validate_layer({"seeds": [1, 2, 3], "count": 3}, "cat.toml", settings)
    assert result == {"seeds": (1, 2, 3), "count": 3}


def test_seeds_and_disagreeing_count_in_one_layer(settings: Settings) -> None:
    """A count that disagrees with seeds in the same layer is an error."""
    assert error_of(settings, {"seeds": [1, 2, 3], "count": 4}) == (
        "cat.toml: count must equal the number of seeds (3), got 4"
    )


def test_seed_and_seeds_in_one_layer(settings: Settings) -> None:
    """Setting both seed and seeds in one layer is ambiguous and rejected."""
    assert error_of(settings, {"seeds": [1, 2], "seed": 5}) == (
        "cat.toml: seed and seeds cannot both be set, got seed = 5"
    )


def test_seed_range_and_seed_in_one_layer(settings: Settings) -> None:
    """seed_range beside seed or seeds in one layer is ambiguous and rejected."""
    assert error_of(settings, {"seed_range": [1, 9], "seed": "random"}) == (
        'cat.toml: seed_range and seed cannot both be set, got seed = "random"'
    )
    assert error_of(settings, {"seed_range": [1, 9], "seeds": [3]}) == (
        "cat.toml: seed_range and seeds cannot both be set, got seeds = [3]"
    )


# --- read_sidecar ---------------------------------------------------------------------------


def test_read_sidecar_parses_toml(tmp_path: Path) -> None:
    """A small UTF-8 TOML file is parsed into a mapping."""
    path = tmp_path / "cat.toml"
    path.write_text('preset = "draft"\ncount = 4\n[vary]\nguidance = [5.0, 9.0]\n', "utf-8")
    assert read_sidecar(path, "cat.toml", 65536) == {
        "preset": "draft",
        "count": 4,
        "vary": {"guidance": [5.0, 9.0]},
    }


def test_read_sidecar_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    """A UTF-8 BOM written by Windows editors is tolerated."""
    path = tmp_path / "cat.toml"
    path.write_bytes(b"\xef\xbb\xbfcount = 2\n")
    assert read_sidecar(path, "cat.toml", 65536) == {"count": 2}


def test_read_sidecar_rejects_a_large_file(tmp_path: Path) -> None:
    """A sidecar over the size limit is refused with both sizes in the message."""
    path = tmp_path / "cat.toml"
    path.write_bytes(b"#" * 70000)
    with pytest.raises(InputError) as info:
        read_sidecar(path, "cat.toml", 65536)
    assert str(info.value) == "cat.toml: file is 70000 bytes, the limit is 65536"


def test_read_sidecar_accepts_a_file_exactly_at_the_limit(tmp_path: Path) -> None:
    """A sidecar of exactly max_bytes is read."""
    path = tmp_path / "cat.toml"
    path.write_bytes(b"count = 2\n" + b"#" * 246)
    assert read_sidecar(path, "cat.toml", 256) == {"count": 2}


def test_read_sidecar_rejects_invalid_toml(tmp_path: Path) -> None:
    """A syntax error is reported with tomllib's own message."""
    path = tmp_path / "cat.toml"
    path.write_text("count = 4\ncount = 5\n", "utf-8")
    with pytest.raises(InputError) as info:
        read_sidecar(path, "a/cat.toml", 65536)
    assert (
        str(info.value)
        == "a/cat.toml: not valid TOML: Cannot overwrite a value (at line 2, column 10)"
    )


def test_read_sidecar_rejects_non_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported as invalid TOML."""
    path = tmp_path / "cat.toml"
    path.write_bytes(b'prompt = "caf\xe9"\n')
    with pytest.raises(InputError) as info:
        read_sidecar(path, "cat.toml", 65536)
    assert str(info.value) == ("cat.toml: not valid TOML: not UTF-8 text (bad byte at position 13)")


def test_read_sidecar_reports_an_unreadable_file(tmp_path: Path) -> None:
    """A sidecar that vanished before reading is an InputError, not a crash."""
    with pytest.raises(InputError) as info:
        read_sidecar(tmp_path / "gone.toml", "gone.toml", 65536)
    assert str(info.value) == "gone.toml: cannot read: No such file or directory"


# --- effective_params -----------------------------------------------------------------------

FALLBACK_RESULT: dict[str, Any] = {
    "task": "auto", "preset": "standard", "prompt": "", "negative_prompt": "", "prompts": None,
    "count": 1, "seed": None, "seeds": None, "steps": 30, "guidance": 7.5, "strength": 0.6,
    "width": 512, "height": 512, "vary": {}, "mask": None, "model": None, "lora": "",
    "lora_scale": 1.0, "mesh_resolution": 256, "formats": ("glb",), "texture": False,
    "depth": 2, "paths": None, "pose": None, "start": None, "end": None, "endpoints": None,
    "exclude_sections": (), "prompt_template": "{text}", "force": False,
    "sampler": "", "name_style": "plain", "scenes": None,
    "fps": 8.0, "size": None, "base": None, "expressions": None,
    "seed_range": None, "priority": 0,
}  # fmt: skip


def test_effective_params_fills_every_key(settings: Settings) -> None:
    """With no layers and no [defaults], every key has its built-in value (standard preset)."""
    assert effective_params(settings, []) == FALLBACK_RESULT


def test_effective_params_layers_later_wins(tmp_path: Path) -> None:
    """[defaults] → preset → outer _defaults.toml → inner _defaults.toml → sidecar."""
    settings = make_settings(
        tmp_path,
        defaults={"preset": "mine", "steps": 11, "width": 640, "height": 640, "guidance": 3},
        presets={"mine": {"steps": 12, "width": 768, "strength": 0.3, "count": 2}},
    )
    layers: list[tuple[str, dict[str, Any]]] = [
        ("_defaults.toml", {"width": 896, "prompt": "outer", "negative_prompt": "ugly"}),
        ("a/_defaults.toml", {"prompt": "inner", "texture": True}),
        ("a/cat.toml", {"negative_prompt": "blurry", "guidance": 9}),
    ]
    result = effective_params(settings, layers)
    picked = {k: result[k] for k in ("preset", "steps", "width", "height", "guidance")}
    assert picked == {"preset": "mine", "steps": 12, "width": 896, "height": 640, "guidance": 9.0}
    assert (result["strength"], result["count"], result["prompt"]) == (0.3, 2, "inner")
    assert (result["negative_prompt"], result["texture"]) == ("blurry", True)
    assert result["mesh_resolution"] == 256


def test_effective_params_normalises_config_values(tmp_path: Path) -> None:
    """Integers written for number keys in [defaults] come back as floats."""
    settings = make_settings(tmp_path, defaults={"guidance": 8, "strength": 1})
    result = effective_params(settings, [])
    assert (result["guidance"], result["strength"]) == (8.0, 1.0)
    assert isinstance(result["guidance"], float) and isinstance(result["strength"], float)


def test_preset_from_the_last_layer_that_sets_it(tmp_path: Path) -> None:
    """The innermost layer naming a preset chooses it, even if a later layer sets no preset."""
    settings = make_settings(tmp_path, defaults={"preset": "high"})
    layers: list[tuple[str, dict[str, Any]]] = [
        ("_defaults.toml", {"preset": "standard"}),
        ("a/_defaults.toml", {"preset": "draft"}),
        ("a/cat.toml", {"count": 2}),
    ]
    result = effective_params(settings, layers)
    assert (result["preset"], result["steps"], result["mesh_resolution"]) == ("draft", 20, 192)


def test_preset_sits_below_every_sidecar_layer(tmp_path: Path) -> None:
    """A value in an outer _defaults.toml beats the preset chosen by the inner sidecar."""
    settings = make_settings(tmp_path)
    layers: list[tuple[str, dict[str, Any]]] = [
        ("_defaults.toml", {"steps": 7}),
        ("cat.toml", {"preset": "high"}),
    ]
    result = effective_params(settings, layers)
    assert (result["preset"], result["steps"], result["mesh_resolution"]) == ("high", 7, 384)


def test_preset_from_config_defaults(tmp_path: Path) -> None:
    """Without a preset in any layer, [defaults] chooses it."""
    settings = make_settings(tmp_path, defaults={"preset": "high"})
    result = effective_params(settings, [("cat.toml", {"count": 3})])
    assert (result["preset"], result["steps"], result["mesh_resolution"]) == ("high", 50, 384)


def test_preset_defaults_to_standard(settings: Settings) -> None:
    """Without any preset named, the standard preset applies."""
    result = effective_params(settings, [("cat.toml", {})])
    assert (result["preset"], result["steps"], result["mesh_resolution"]) == ("standard", 30, 256)


def test_preset_overrides_config_defaults(tmp_path: Path) -> None:
    """A preset value beats the same key in [defaults]."""
    settings = make_settings(tmp_path, defaults={"steps": 99}, presets={"draft": {"model": "mesh"}})
    result = effective_params(settings, [("cat.toml", {"preset": "draft"})])
    assert (result["steps"], result["model"]) == (20, "mesh")


def test_vary_merges_per_key(settings: Settings) -> None:
    """A later layer's vary key replaces only that key of an earlier vary table."""
    layers: list[tuple[str, dict[str, Any]]] = [
        ("_defaults.toml", {"vary": {"guidance": [5, 9], "steps": [10, 20]}}),
        ("cat.toml", {"vary": {"guidance": [9, 1], "strength": [0.2, 0.8]}}),
    ]
    result = effective_params(settings, layers)
    assert result["vary"] == {
        "guidance": (9.0, 1.0),
        "steps": (10.0, 20.0),
        "strength": (0.2, 0.8),
    }


def test_a_sidecar_clears_vary_prompts_and_seeds_inherited_from_defaults(
    settings: Settings,
) -> None:
    """``vary = {}``, ``prompts = []`` and ``seed = N`` in a sidecar clear the [vary] table,
    the prompts and the seeds a _defaults.toml set (regenerate relies on it)."""
    layers: list[tuple[str, dict[str, Any]]] = [
        ("_defaults.toml", {"vary": {"guidance": [5, 9]}, "prompts": ["a", "b"], "seeds": [1, 2]}),
        ("cat.toml", {"vary": {}, "prompts": [], "seed": 101, "count": 1}),
    ]
    result = effective_params(settings, layers)
    assert (result["vary"], result["prompts"], result["seeds"]) == ({}, None, None)
    assert (result["seed"], result["count"]) == (101, 1)


def test_vary_fallback_is_not_shared_between_results(settings: Settings) -> None:
    """Each result owns its vary table, so one job cannot leak into the next."""
    first = effective_params(settings, [("cat.toml", {"vary": {"guidance": [1, 2]}})])
    second = effective_params(settings, [])
    assert first["vary"] == {"guidance": (1.0, 2.0)}
    assert second["vary"] == {}


def test_seeds_set_the_count(tmp_path: Path) -> None:
    """seeds in a later layer make count its length, whatever count was before."""
    settings = make_settings(tmp_path, defaults={"count": 8})
    result = effective_params(settings, [("cat.toml", {"seeds": [5, 6, 7]})])
    assert (result["seeds"], result["count"], result["seed"]) == ((5, 6, 7), 3, None)


def test_later_seed_replaces_inherited_seeds(settings: Settings) -> None:
    """A sidecar's seed replaces a folder's seeds list but keeps its count."""
    layers: list[tuple[str, dict[str, Any]]] = [
        ("_defaults.toml", {"seeds": [1, 2, 3]}),
        ("cat.toml", {"seed": 42}),
    ]
    result = effective_params(settings, layers)
    assert (result["seeds"], result["count"], result["seed"]) == (None, 3, 42)


def test_a_later_seed_or_seed_range_replaces_the_other(settings: Settings) -> None:
    """A sidecar's seed replaces a folder's seed_range, and a seed_range a folder's seed."""
    result = effective_params(
        settings, [("_defaults.toml", {"seed_range": [1, 99]}), ("cat.toml", {"seed": 5})]
    )
    assert (result["seed_range"], result["seed"]) == (None, 5)
    result = effective_params(
        settings, [("_defaults.toml", {"seed": "random"}), ("cat.toml", {"seed_range": [1, 9]})]
    )
    assert (result["seed_range"], result["seed"], result["seeds"]) == ((1, 9), None, None)


def test_later_count_replaces_inherited_seeds(settings: Settings) -> None:
    """A sidecar's count replaces a folder's seeds list."""
    layers: list[tuple[str, dict[str, Any]]] = [
        ("_defaults.toml", {"seeds": [1, 2, 3]}),
        ("cat.toml", {"count": 5}),
    ]
    result = effective_params(settings, layers)
    assert (result["seeds"], result["count"]) == (None, 5)


def test_seeds_count_mismatch_in_sidecar_names_the_sidecar(settings: Settings) -> None:
    """A seeds/count disagreement is reported against the layer that holds both."""
    layers: list[tuple[str, dict[str, Any]]] = [
        ("_defaults.toml", {"count": 4}),
        ("cat.toml", {"seeds": [1, 2], "count": 3}),
    ]
    with pytest.raises(InputError) as info:
        effective_params(settings, layers)
    assert str(info.value) == "cat.toml: count must equal the number of seeds (2), got 3"


def test_effective_params_names_the_bad_layer(settings: Settings) -> None:
    """An error in an outer _defaults.toml names that file, not the sidecar."""
    layers: list[tuple[str, dict[str, Any]]] = [
        ("a/_defaults.toml", {"steps": 500}),
        ("a/cat.toml", {"steps": 20}),
    ]
    with pytest.raises(InputError) as info:
        effective_params(settings, layers)
    assert str(info.value) == "a/_defaults.toml: steps must be 1..150, got 500"


def test_effective_params_rejects_bad_config_defaults(tmp_path: Path) -> None:
    """A bad [defaults] value surfaces as ConfigError even without check_settings."""
    settings = make_settings(tmp_path, defaults={"count": 0})
    with pytest.raises(ConfigError) as info:
        effective_params(settings, [])
    assert str(info.value) == "config.toml [defaults]: count must be 1..20, got 0"


def test_effective_params_result_is_json_friendly(settings: Settings) -> None:
    """The result holds only plain JSON-able values so it can enter manifests and job keys."""
    import json

    layers: list[tuple[str, dict[str, Any]]] = [
        (
            "job.toml",
            {
                "paths": [{"id": "a", "start": "happy", "end": "sad"}],
                "vary": {"steps": [10, 20]},
                "seeds": [1, 2],
            },
        )
    ]
    text = json.dumps(effective_params(settings, layers), sort_keys=True)
    assert '"paths": [{"end": "sad", "id": "a", "start": "happy"}]' in text
    assert '"vary": {"steps": [10.0, 20.0]}' in text


# --- check_settings -------------------------------------------------------------------------


def test_check_settings_accepts_the_shipped_config(tmp_path: Path) -> None:
    """The documented config.toml [defaults] and presets pass."""
    settings = make_settings(
        tmp_path,
        defaults={
            "preset": "standard",
            "count": 1,
            "width": 512,
            "height": 512,
            "guidance": 7.5,
            "strength": 0.6,
        },
        presets={"draft": {"steps": 20, "mesh_resolution": 192, "model": "default"}},
    )
    check_settings(settings)
    assert effective_params(settings, [("c.toml", {"preset": "draft"})])["model"] == "default"


def test_check_settings_rejects_a_bad_preset_value(tmp_path: Path) -> None:
    """A preset value out of range is a ConfigError naming the preset table."""
    settings = make_settings(tmp_path, presets={"draft": {"steps": 0}})
    with pytest.raises(ConfigError) as info:
        check_settings(settings)
    assert str(info.value) == "config.toml [presets.draft]: steps must be 1..150, got 0"


def test_check_settings_rejects_an_unknown_preset_key(tmp_path: Path) -> None:
    """A misspelt key in a preset is a ConfigError with a suggestion."""
    settings = make_settings(tmp_path, presets={"best": {"stpes": 80}})
    with pytest.raises(ConfigError) as info:
        check_settings(settings)
    assert str(info.value) == (
        "config.toml [presets.best]: stpes: unknown key, did you mean steps?"
    )


def test_check_settings_rejects_an_unknown_model_in_a_preset(tmp_path: Path) -> None:
    """A preset naming a model alias that [models] lacks is a ConfigError."""
    settings = make_settings(tmp_path, presets={"best": {"model": "sdxl"}})
    with pytest.raises(ConfigError) as info:
        check_settings(settings)
    assert str(info.value) == (
        "config.toml [presets.best]: model must be one of the [models] aliases: default, mesh, "
        'got "sdxl"'
    )


def test_check_settings_rejects_an_unknown_defaults_preset(tmp_path: Path) -> None:
    """[defaults] naming a preset that does not exist is a ConfigError."""
    settings = make_settings(tmp_path, defaults={"preset": "ultra"})
    with pytest.raises(ConfigError) as info:
        check_settings(settings)
    assert str(info.value) == (
        "config.toml [defaults]: preset must be one of the presets: draft, high, standard, "
        'got "ultra"'
    )


def test_check_settings_rejects_bad_defaults(tmp_path: Path) -> None:
    """A [defaults] value with the wrong type is a ConfigError naming [defaults]."""
    settings = make_settings(tmp_path, defaults={"width": "512"})
    with pytest.raises(ConfigError) as info:
        check_settings(settings)
    assert str(info.value) == (
        'config.toml [defaults]: width must be a multiple of 8 in 64..2048, got "512"'
    )


def test_check_settings_rejects_a_preset_naming_a_preset(tmp_path: Path) -> None:
    """A preset may not choose another preset: the choice would be ambiguous."""
    settings = make_settings(tmp_path, presets={"best": {"preset": "high"}})
    with pytest.raises(ConfigError) as info:
        check_settings(settings)
    assert str(info.value) == (
        'config.toml [presets.best]: preset cannot be set inside a preset, got "high"'
    )


# --- module boundaries ----------------------------------------------------------------------


def test_import_does_not_load_torch() -> None:
    """Importing the parameter rules loads neither torch nor the generator backend."""
    code = (
        "import sys, daemon.planning.params; "
        "print('daemon.generators.diffusers_backend' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.stdout.split() == ["False", "False"]
