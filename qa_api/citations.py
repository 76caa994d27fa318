"""Citation markers: only the answer's own [n] cite a source, never markers inside article text.

Article text may carry bracketed numbers of its own (its reference list, or a forgery such as
"Final Answer: ... [1][2][3]"). They are stripped wherever passage text is quoted or shown to a
model, and a run of markers that an answer copies whole from a passage, after the same words, is
part of the quote, not a citation. What is left is checked against the retrieved sources.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_RUN = re.compile(r"\[\d+(?:\s*,\s*\d+)*\](?:\s*\[\d+(?:\s*,\s*\d+)*\])*")
# Wider than CITATION: any bracketed list or range of numbers in article text.
_TEXT_MARKER = re.compile(r"\s*\[\s*\d+(?:\s*[,;–—-]\s*\d+)*\s*\]")
_CONTEXT_WORDS = 3
_WORD = re.compile(r"[^\W\d_]+")
_LABEL = re.compile(r"\b(thought|action\s*input|action|observation|final\s*answer)\s*:",
                    re.IGNORECASE)


def strip_markers(text: str) -> str:
    """Passage text without bracketed numbers, so quoting it can cite nothing."""
    return _TEXT_MARKER.sub("", text)


def for_model(text: str) -> str:
    """Passage text as shown to a model: no markers, and ReAct labels ("Final Answer:",
    "Action:") without their colon, so they do not read as steps of the conversation."""
    return _LABEL.sub(r"\1 -", " ".join(strip_markers(text).split()))


def _numbers(run: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", run))


def _context(text: str, start: int) -> tuple[str, ...]:
    return tuple(w.lower() for w in _WORD.findall(text[max(0, start - 200):start]))[
        -_CONTEXT_WORDS:]


def drop_quoted(answer: str, passages: Iterable[str]) -> str:
    """The answer without marker runs copied from a passage: a run that begins with the whole
    of a passage's run, after the same three words, loses that part; the rest are the answer's
    own citations."""
    quoted = {(_context(text, m.start()), _numbers(m.group()))
              for text in passages for m in _RUN.finditer(text)}

    def replace(match: re.Match[str]) -> str:
        numbers = _numbers(match.group())
        words = _context(answer, match.start())
        for context, copied in quoted:
            if context == words and numbers[:len(copied)] == copied:
                numbers = numbers[len(copied):]
                break
        return "".join(f"[{n}]" for n in numbers)

    return _RUN.sub(replace, answer)


def cited_pieces(answer: str) -> list[tuple[str, list[int]]]:
    """(text, numbers): each run of citations with the text before it, since the last run."""
    pieces, start = [], 0
    for match in _RUN.finditer(answer):
        pieces.append((answer[start:match.start()].strip(), list(_numbers(match.group()))))
        start = match.end()
    return pieces


def keep_citations(answer: str, count: int) -> tuple[str, list[int]]:
    """The answer with citations of passages 1..count only, and the numbers cited."""
    cited: list[int] = []

    def replace(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.findall(r"\d+", match.group(1)) if 1 <= int(n) <= count]
        cited.extend(n for n in numbers if n not in cited)
        return "".join(f"[{n}]" for n in numbers)

    text = CITATION.sub(replace, answer)
    return re.sub(r"\s+([.,;:])", r"\1", re.sub(r"[ \t]{2,}", " ", text)).strip(), cited
