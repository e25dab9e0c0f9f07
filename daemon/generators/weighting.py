"""Prompt weighting as AUTOMATIC1111 writes it: ``(word)``, ``(word:1.3)``, ``[word]``.

A prompt is read into fragments of text with a weight each, following A1111's own parser
(``modules/prompt_parser.parse_prompt_attention``): ``(…)`` multiplies by 1.1, ``[…]`` divides
by 1.1, ``(…:w)`` multiplies by ``w``, brackets nest, ``\\(`` ``\\)`` ``\\[`` ``\\]`` are literal,
and unclosed brackets apply to the end. The fragments are encoded by compel
(``conditioning``). Plain text: nothing here imports torch.
"""

from __future__ import annotations

import re

ROUND = 1.1
SQUARE = 1 / 1.1

_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes
    \(|\[|                        # openers
    :\s*([+-]?[.\d]+)\s*\)|       # (text:weight) closer
    \)|]|                         # closers
    [^\\()\[\]:]+|                # text
    :
    """,
    re.VERBOSE,
)


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into ``(text, weight)`` fragments, neighbours of equal weight merged.

    ``"a (red:1.3) cat"`` → ``[("a ", 1.0), ("red", 1.3), (" cat", 1.0)]``.
    """
    fragments: list[list[str | float]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in fragments[start:]:
            item[1] = float(item[1]) * factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:] or "\\", 1.0])
        elif token == "(":
            round_open.append(len(fragments))
        elif token == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open and _is_number(weight):
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            fragments.append([token, 1.0])
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    merged: list[tuple[str, float]] = []
    for frag_text, frag_weight in fragments:
        piece, value = str(frag_text), float(frag_weight)
        if merged and merged[-1][1] == value:
            merged[-1] = (merged[-1][0] + piece, value)
        else:
            merged.append((piece, value))
    return merged or [("", 1.0)]


def plain_text(text: str) -> str:
    """The prompt's words without weighting syntax (what a pooled embedding reads)."""
    return "".join(piece for piece, _ in parse_weights(text))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
