"""`make demo`: a self-contained offline demo in ./demo with the tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from daemon.cli import main
from daemon.generators.tiny import write_tiny_models

DEMO = Path("demo")
CONFIG = """\
[daemon]
state_dir = ".dropforge"
device = "cpu"

[[inbox]]
path = "inbox"
output = "outbox"

[models]
default = "models/sd"

[defaults]
width = 64
height = 64

[presets.standard]
steps = 2
"""


def build() -> Path:
    """Write the tiny model, a config and a few inputs; return the config path."""
    inbox = DEMO / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    if not (DEMO / "models" / "sd").exists():
        write_tiny_models(DEMO / "models")
    (DEMO / "config.toml").write_text(CONFIG, encoding="utf-8")
    if not (inbox / "story.md").exists():
        (inbox / "story.md").write_text(
            "A lighthouse at dusk\n\n* * *\n\nA storm over the harbour\n", encoding="utf-8"
        )
        (inbox / "story.toml").write_text("count = 2\nseed = 7\n", encoding="utf-8")
    if not (inbox / "cat.png").exists():
        Image.effect_noise((64, 64), 64).convert("RGB").save(inbox / "cat.png")
        (inbox / "cat.toml").write_text(
            'count = 3\nseed = 100\nprompt = "a watercolor cat"\n', encoding="utf-8"
        )
    return DEMO / "config.toml"


if __name__ == "__main__":
    config = build()
    sys.exit(main(["once", "-c", str(config)]))
