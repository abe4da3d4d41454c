"""Readability of plain-language texts: Flesch-Kincaid grade and Flesch reading ease.

Both use the standard formulas on counts of sentences, words and syllables. A word is a run of
letters or digits (a hyphenated compound or a contraction is one word). Syllables are counted by
vowel groups (``a e i o u y``, accents removed) with the usual silent-e rule, at least one a
word. Markdown markup is stripped first, and every heading, list item, table cell and line ends a
sentence, so a heading without a full stop does not merge into the sentence after it."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

#: Flesch-Kincaid grade level: 0.39 * words/sentence + 11.8 * syllables/word - 15.59.
_FK_SENTENCE, _FK_SYLLABLE, _FK_BASE = 0.39, 11.8, 15.59
#: Flesch reading ease: 206.835 - 1.015 * words/sentence - 84.6 * syllables/word.
_FRE_BASE, _FRE_SENTENCE, _FRE_SYLLABLE = 206.835, 1.015, 84.6

_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")
_HISSING = ("se", "ze", "xe", "ce", "ge", "che", "she")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_BLOCK_PREFIX = re.compile(r"^\s*(?:#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")


@dataclass(frozen=True)
class TextCounts:
    """Sentences, words and syllables of a text (after Markdown is stripped)."""

    sentences: int
    words: int
    syllables: int


def _silent_e(lower: str, plain: str) -> bool:
    """Whether the word ends in a silent ``e``, ``es`` or ``ed`` (``make``, ``moles``,
    ``checked``), but not a sounded one: after a vowel (``agree``), in a consonant + ``le``
    (``table``), ``es`` after a hissing sound (``changes``), ``ed`` after ``t``/``d`` (``treated``),
    or an accented ``é`` (``café``)."""
    stem = plain.removesuffix("s") if plain.endswith("es") else plain
    if stem.endswith("ed") and len(stem) > 3:
        return stem[-3] not in "aeiouytd"
    if not (stem.endswith("e") and lower.rstrip("s").endswith("e") and len(stem) > 2):
        return False
    if stem[-2] in "aeiouy" or (stem[-2] == "l" and stem[-3] not in "aeiouy"):
        return False
    return stem == plain or not stem.endswith(_HISSING)


def syllables(word: str) -> int:
    """Syllables of one word: vowel groups (accents removed), less a silent final ``e``, at
    least one."""
    lower = word.lower()
    plain = "".join(c for c in unicodedata.normalize("NFKD", lower) if c.isascii() and c.isalpha())
    count = len(_VOWEL_GROUP.findall(plain))
    return max(1, count - 1 if count > 1 and _silent_e(lower, plain) else count)


def plain_blocks(text: str) -> list[str]:
    """The text's blocks (lines, table cells) with Markdown markup removed, empty ones dropped."""
    blocks = []
    for line in text.splitlines():
        if _TABLE_RULE.match(line):
            continue
        line = _EMPHASIS.sub("", _LINK.sub(r"\1", _BLOCK_PREFIX.sub("", line)))
        cells = line.strip().strip("|").split("|") if line.lstrip().startswith("|") else [line]
        blocks.extend(cell.strip() for cell in cells if cell.strip())
    return blocks


def text_counts(text: str) -> TextCounts:
    """Count sentences, words and syllables; a :class:`ValueError` when there is no word."""
    sentences = words = syllable_count = 0
    for block in plain_blocks(text):
        for sentence in _SENTENCE_END.split(block):
            found = _WORD.findall(sentence)
            if found:
                sentences += 1
                words += len(found)
                syllable_count += sum(syllables(w) for w in found)
    if not words:
        raise ValueError("readability: the text has no words to measure")
    return TextCounts(sentences=sentences, words=words, syllables=syllable_count)


def flesch_kincaid_grade(text: str) -> float:
    """Flesch-Kincaid grade level (US school grade needed to read the text)."""
    c = text_counts(text)
    return _FK_SENTENCE * c.words / c.sentences + _FK_SYLLABLE * c.syllables / c.words - _FK_BASE


def flesch_reading_ease(text: str) -> float:
    """Flesch reading ease (higher is easier; 60-70 is plain English)."""
    c = text_counts(text)
    return _FRE_BASE - _FRE_SENTENCE * c.words / c.sentences - _FRE_SYLLABLE * c.syllables / c.words


__all__ = [
    "TextCounts",
    "flesch_kincaid_grade",
    "flesch_reading_ease",
    "plain_blocks",
    "syllables",
    "text_counts",
]
