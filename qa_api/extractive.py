"""Extractive answers: the retrieved sentences that best match the question, each cited.

No model is involved, so this answer is always available: it is the `extractive` model and the
fallback when an LLM fails. Sentences are scored by the question words they contain, weighted
by how rare each word is among the retrieved sentences, per square root of the sentence's
length and of its passage's rank (retrieval already put the best passages first).
"""

from __future__ import annotations

import math
import re
from collections import Counter

from retrieval.text import STOPWORDS

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[a-z0-9]+")
MAX_SENTENCES = 3


def terms(text: str) -> set[str]:
    """Content words, crudely stemmed so 'records' matches 'recorded' and 'recording'."""
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def extractive_answer(question: str, passages: list[str]) -> str:
    """Up to three sentences from `passages` (numbered [1].. in the given order), best first,
    each followed by its citation; empty when no sentence shares a word with the question."""
    wanted = terms(question)
    candidates = [(number, sentence, terms(sentence))
                  for number, text in enumerate(passages, start=1)
                  for sentence in sentences(text)]
    document_frequency = Counter(t for _, _, words in candidates for t in words)
    total = max(len(candidates), 1)

    def score(item: tuple[int, str, set[str]]) -> float:
        number, _, words = item
        overlap = sum(math.log(1 + total / document_frequency[t]) for t in wanted & words)
        return overlap / math.sqrt(max(len(words), 1) * number)

    ranked = sorted((c for c in candidates if wanted & c[2]), key=score, reverse=True)
    chosen: list[tuple[int, str]] = []
    per_passage: Counter[int] = Counter()
    for number, sentence, _ in ranked:
        if per_passage[number] < 2:
            chosen.append((number, sentence))
            per_passage[number] += 1
        if len(chosen) == MAX_SENTENCES:
            break
    return " ".join(f"{sentence} [{number}]" for number, sentence in chosen)
