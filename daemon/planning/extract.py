"""Scene text → prompt parts (seed 003): subject, setting, time, mood and action, by rules.

The rules read words through lemminflect's English lexicon (lemmas and inflections, shipped in
its wheel; no model download): characters are capitalised words that are not dictionary words
starting a sentence; the setting, time and mood come from the word lists in ``lexicon``; the
action is the first telling verb of a sentence about the subject, as an ``-ing`` form with its
object (``sat at her desk`` → ``sitting at her desk``). Pure and deterministic.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from daemon.planning.lexicon import (
    LIGHT_VERBS,
    MOODS,
    NOT_BEFORE_VERB,
    NOT_NAMES,
    PHRASE_ENDS,
    PLACE_PREPOSITIONS,
    SETTINGS,
    SUBJECTS,
    TIMES,
    TITLES,
)

PART_NAMES = ("subject", "setting", "time", "mood", "action")

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’\-]*|[^\sA-Za-z]")
_OBJECT_WORDS = 4


@dataclass(frozen=True)
class SceneParts:
    """What a scene shows, in words a prompt can use; empty strings where nothing was found."""

    subject: str = ""
    setting: str = ""
    time: str = ""
    mood: str = ""
    action: str = ""
    verb: str = ""  # the action's verb alone (``reading``), for file names

    def as_dict(self) -> dict[str, str]:
        """The five prompt parts by name (``PART_NAMES``)."""
        return {name: getattr(self, name) for name in PART_NAMES}

    def name_words(self) -> list[str]:
        """Words for a descriptive file name: the subject's first name, the setting, the verb."""
        first = self.subject.split(" and ")[0].split()
        if first[:1] == ["a"]:  # "a woman"
            first = first[-1:]
        name = [w for w in first if w.lower().rstrip(".") not in TITLES][:1] or first[-1:]
        return [w.lower() for w in [*name, self.setting, self.verb] if w]


@functools.lru_cache(maxsize=1)
def _lemminflect() -> Any:
    import lemminflect  # its tables load on first use (about half a second)

    return lemminflect


@functools.lru_cache(maxsize=65536)
def _lemmas(word: str) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = _lemminflect().getAllLemmas(word)
    return found


def _sentences(text: str) -> list[list[str]]:
    return [_TOKEN.findall(s) for s in _SENTENCE_END.split(text) if s.strip()]


def _is_word(token: str) -> bool:
    return token[:1].isalpha()


def _bare(word: str) -> str:
    """A word without a possessive ``'s``."""
    return re.sub(r"['’]s$", "", word)


def extract_parts(text: str) -> SceneParts:
    """The subject, setting, time, mood and action of one scene."""
    sentences = _sentences(text)
    lowered = {t.lower() for s in sentences for t in s if _is_word(t) and t.islower()}
    names, places = _names(sentences, lowered)
    subject = _subject(names, sentences)
    setting = _setting(sentences) or (places[0] if places else "")
    verb, action = _action(sentences, names)
    return SceneParts(
        subject=subject,
        setting=setting,
        time=_time(sentences),
        mood=_mood(sentences),
        action=action,
        verb=verb,
    )


def _names(sentences: list[list[str]], lowered: set[str]) -> tuple[Counter[str], list[str]]:
    """Capitalised names by how often they occur, and capitalised places (``in Paris``)."""
    names: Counter[str] = Counter()
    places: list[str] = []
    for sentence in sentences:
        words = [t for t in sentence if _is_word(t)]
        for i, word in enumerate(words):
            base = _bare(word)
            low = base.lower()
            if not base[0].isupper() or low in lowered:
                continue
            if low in NOT_NAMES and low not in TITLES:
                continue
            if i == 0 and _lemmas(low):
                continue  # a dictionary word starting a sentence, not a name
            if i > 0 and words[i - 1].lower() in TITLES:
                continue  # counted with its title
            full = base
            if low in TITLES and i + 1 < len(words) and words[i + 1][0].isupper():
                full = f"{base} {_bare(words[i + 1])}"
            elif low in TITLES:
                continue
            if i > 0 and words[i - 1].lower() in PLACE_PREPOSITIONS:
                places.append(full)
                continue
            names[full] += 1
    # "Quinn" alone is the "Dr Quinn" named elsewhere.
    for full in [n for n in names if " " in n]:
        names[full] += names.pop(full.split()[-1], 0)
    return names, places


def _subject(names: Counter[str], sentences: list[list[str]]) -> str:
    """The one or two most named characters; else who the pronouns point at."""
    top = [name for name, _ in names.most_common(2)]
    if top:
        return " and ".join(top)
    pronouns = Counter(t.lower() for s in sentences for t in s if _is_word(t))
    if pronouns["she"] + pronouns["her"] > pronouns["he"] + pronouns["him"] + pronouns["his"]:
        return "a woman"
    if pronouns["he"] + pronouns["him"] + pronouns["his"]:
        return "a man"
    if pronouns["they"] + pronouns["them"]:
        return "a group of people"
    return ""


def _noun(word: str) -> str:
    lemmas = _lemmas(word)
    return lemmas["NOUN"][0] if "NOUN" in lemmas else word


def _setting(sentences: list[list[str]]) -> str:
    """The first place noun after ``in``/``at``…, else the first place noun at all."""
    first = ""
    for sentence in sentences:
        words = [t.lower() for t in sentence if _is_word(t)]
        for i, word in enumerate(words):
            noun = _noun(_bare(word))
            if noun not in SETTINGS:
                continue
            if any(w in PLACE_PREPOSITIONS for w in words[max(0, i - 3) : i]):
                return noun
            first = first or noun
    return first


def _time(sentences: list[list[str]]) -> str:
    for sentence in sentences:
        for token in sentence:
            found = TIMES.get(token.lower())
            if found:
                return found
    return ""


def _mood(sentences: list[list[str]]) -> str:
    """The mood whose words occur most (ties: the order of ``MOODS``)."""
    scores: Counter[str] = Counter()
    for sentence in sentences:
        for token in sentence:
            if not _is_word(token):
                continue
            low = token.lower()
            forms = {low} | {lemma for lemmas in _lemmas(low).values() for lemma in lemmas}
            for mood, words in MOODS.items():
                if forms & words:
                    scores[mood] += 1
    best = max(scores.values(), default=0)
    return next((mood for mood in MOODS if best and scores[mood] == best), "")


def _verb_lemma(words: list[str], i: int, names: set[str]) -> str | None:
    """The lemma of ``words[i]`` if it is used as a verb there, by its form and neighbours."""
    word = words[i].lower()
    lemmas = _lemmas(word).get("VERB")
    if not lemmas:
        return None
    prev = words[i - 1] if i > 0 else ""
    if prev.lower() in NOT_BEFORE_VERB:
        return None
    lemma = lemmas[0]
    after_subject = prev.lower() in SUBJECTS or _bare(prev) in names
    if word.endswith("ed") or word.endswith("ing") or (lemma != word and not word.endswith("s")):
        return lemma
    return lemma if after_subject else None


def _action(sentences: list[list[str]], names: Counter[str]) -> tuple[str, str]:
    """The first telling verb (preferring sentences naming the subject) as ``-ing`` + object."""
    top = {name.split()[-1] for name, _ in names.most_common(2)}
    name_words = {w for name in names for w in name.split()}
    ordered = [s for s in sentences if top & {_bare(t) for t in s}] + sentences
    for sentence in ordered:
        words = [t for t in sentence if _is_word(t) or t in ",;:"]
        for i, word in enumerate(words):
            if not _is_word(word):
                continue
            lemma = _verb_lemma(words, i, name_words)
            if lemma is None or lemma in LIGHT_VERBS:
                continue
            verb = _ing(lemma)
            return verb, " ".join([verb, *_object(words[i + 1 :])])
    return "", ""


def _object(rest: list[str]) -> list[str]:
    """The words after a verb up to a comma, a conjunction or the end of its first noun."""
    phrase: list[str] = []
    for word in rest:
        low = word.lower()
        if not _is_word(word) or low in PHRASE_ENDS or len(phrase) == _OBJECT_WORDS:
            break
        if phrase and low in PLACE_PREPOSITIONS and "NOUN" in _lemmas(phrase[-1].lower()):
            break
        phrase.append(word)
    return phrase


def _ing(lemma: str) -> str:
    forms: tuple[str, ...] = _lemminflect().getInflection(lemma, tag="VBG")
    return forms[0] if forms else lemma + "ing"
