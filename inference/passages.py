"""Sentence-aware splitting of article text into passages of about min..max words.

Embedding models see a bounded number of tokens (256 for MiniLM), so long texts are cut at
sentence boundaries into balanced passages; a text that fits in one passage is left whole.
"""

from __future__ import annotations

import math
import re

# A sentence ends at . ! or ? (optionally followed by quotes or brackets) before whitespace and
# an upper-case letter, digit or opening quote. Common abbreviations do not end sentences.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_ABBREVIATIONS = frozenset(
    "e.g i.e et al etc ca cf fig figs eq eqs vs approx no nos vol dr mr mrs ms prof st jr sr "
    "inc ltd co corp dept univ sect ch pp ref refs resp".split()
)


def split_sentences(text: str) -> list[str]:
    """Split text into sentences, keeping abbreviations and initials inside their sentence."""
    pieces = _BOUNDARY.split(text.strip())
    sentences: list[str] = []
    for piece in pieces:
        if sentences and _ends_with_abbreviation(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return [s for s in sentences if s]


def _ends_with_abbreviation(sentence: str) -> bool:
    last = sentence.rsplit(None, 1)[-1].rstrip(".").lower()
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())


def split_passages(text: str, min_words: int = 100, max_words: int = 250) -> list[str]:
    """Cut `text` into passages of at most `max_words` words, as even as sentences allow.

    The number of passages is the fewest that keep each under `max_words`; sentences are
    then packed towards an even share, so the last passage is not a short leftover. A single
    sentence longer than `max_words` is cut between words.
    """
    words = text.split()
    total = len(words)
    if total <= max_words:
        return [" ".join(words)] if total else []
    units: list[list[str]] = []
    for sentence in split_sentences(" ".join(words)):
        sentence_words = sentence.split()
        for start in range(0, len(sentence_words), max_words):
            units.append(sentence_words[start : start + max_words])
    count = math.ceil(total / max_words)
    target = max(min_words, math.ceil(total / count))
    passages: list[str] = []
    current: list[str] = []
    for unit in units:
        if current and len(current) + len(unit) > max_words:
            passages.append(" ".join(current))
            current = []
        current.extend(unit)
        if len(current) >= target:
            passages.append(" ".join(current))
            current = []
    if current:
        # Fold a short tail into the previous passage when it still fits.
        if passages and len(current) < min_words and (
            len(passages[-1].split()) + len(current) <= max_words
        ):
            passages[-1] = f"{passages[-1]} {' '.join(current)}"
        else:
            passages.append(" ".join(current))
    return passages
