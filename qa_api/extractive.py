"""Extractive answers: the retrieved sentences that answer the question, each with its passage.

No generative model is involved, so this answer is always available: it is the `extractive`
model, the fallback when an LLM fails, and the relevance check before a model is asked. Each
sentence of the retrieved passages is scored by

- meaning: the cosine of its embedding with the question's, from the index's own query model
  (the searcher already holds it, so no second model loads);
- lexical evidence: the share of the question's content words it holds, each weighted by how
  rare it is among the retrieved sentences, so a sentence naming what the question asks about
  beats one that is merely on the same theme;
- its passage's rank: retrieval already put the best passages first;
- what it says: for a why-question, a sentence that gives a cause ("because", "due to",
  "linked to") scores more.

A framing sentence ("This review summarises ...", "We discuss how ...") says what an article
covers, not what it found: it is never an answer, unless it lists what it covers ("...,
including X and Y"). A question after a quantity ("how many", "the price of") is only
answered by sentences that hold a number.

A sentence that leans on the one before it ("They can be dated ...", "These complexes ...") is
scored, and quoted, together with it. The best sentence comes first; others follow while they
score at least RELATIVE times the best (sentences of the best sentence's article count
SAME_ARTICLE_BONUS more: the answer stays with one article unless another is as good), each
relevant on its own (THRESHOLD) and not a near repeat of one already taken (REDUNDANT), up to
MAX_SENTENCES. So an answer reads as a few sentences of one article, and a sentence of
another joins only when it is nearly as good as the best, not to fill a slot. When even the
best sentence is below THRESHOLD, nothing is taken: the passages do not answer the question.
The constants were chosen on the project's question set (`benchmarks/qa_quality.py`).
Markers such as [12] in article text are dropped from quoted sentences: the only citations
are the answer's own.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.text import STOPWORDS

from .citations import strip_markers

Embed = Callable[[list[str]], np.ndarray]  # texts -> unit-length rows (Searcher.embed)

DECLINE = "The indexed articles do not answer this."
MAX_SENTENCES = 4  # an answer's sentences, a leaning sentence's predecessor included
THRESHOLD = 0.5  # a sentence scoring less does not answer; none above it: decline
RELATIVE = 0.85  # later sentences score at least this share of the best
SAME_ARTICLE_BONUS = 0.3
REDUNDANT = 0.8  # cosine between two sentences above which the second adds nothing
LEXICAL_WEIGHT = 0.3
RANK_PENALTY = 0.02  # per place of the sentence's passage in the retrieved order
WHY_BONUS = 0.05
MAX_EMBEDDED = 8  # sentences per answer put through the embedding model
PREFILTER_RANK = 0.15  # choosing those: question words held, less this per passage place
MIN_WORDS = 4  # shorter "sentences" (headings, fragments) are not answers

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[a-z0-9]+")
# "This review summarises ...", "In this article we outline ...", "We also discuss ..."
_FRAMING = re.compile(
    r"^(?:(?:here|in this (?:article|review|paper|study|work),?)\s+)?"
    r"(?:this|the present|our)?\s*(?:article|review|paper|study|work|we)\s+(?:also\s+)?"
    r"(?:review|summari[sz]|discuss|describ|outline|examin|explain|consider|compar|introduc|"
    r"evaluat|assess|focus|synthesi[sz]|highlight|address|present|explor|investigat|identif)",
    re.IGNORECASE)
# Sentences leaning on the one before: "These complexes ...", "As a result, ..."
_ANAPHOR = re.compile(r"^(?:\w+\W+){0,8}?(?:this|these|those|such)\s+"
                      r"(?!article|review|paper|study|work)[a-z]+|"
                      r"^(?:it|its|they|their|as a result|however)\b", re.IGNORECASE)
# Questions after a quantity, and the numbers that answer them ("carbon-14" is a name)
_QUANTITY_QUESTION = re.compile(r"\bhow (?:many|much|fast|long|tall|high|old|far|deep|large|"
                                r"big)\b|\b(?:price|cost|number|half-life|percentage|amount) of\b",
                                re.IGNORECASE)
_QUANTITY = re.compile(r"(?<![\w-])\d+(?:[.,]\d+)?(?![\w-])|\b(?:one|two|three|four|five|six|"
                       r"seven|eight|nine|ten|twelve|twenty|fifty|hundred|thousand|million|"
                       r"billion|few|several|dozen|percent|half|quarter|twice|double)\b",
                       re.IGNORECASE)
_LISTS = re.compile(r":|\bincluding\b|\bsuch as\b", re.IGNORECASE)
_WHY = re.compile(r"^\s*why\b|\bwhat (?:causes|caused|drives|drove)\b|"
                  r"\b(?:cause|reason)s? (?:of|for)\b", re.IGNORECASE)
_CAUSAL = re.compile(r"\b(?:because|since|due to|as a result|therefore|thus|so that|caus\w*|"
                     r"which (?:means|explains|allows|makes|implies)|driven by|owing to|"
                     r"leads? to|result(?:s|ed)? (?:in|from)|linked to|attributed to|"
                     r"triggered by)\b", re.IGNORECASE)


@dataclass
class Sentence:
    """A sentence of passage `passage`, an index into the passages given."""

    passage: int
    text: str


def terms(text: str) -> set[str]:
    """Content words, crudely stemmed so 'records' matches 'recorded' and 'recording'."""
    return {_stem(w) for w in _WORD.findall(text.lower())
            if w not in STOPWORDS and (len(w) > 1 or w.isdigit())}


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def select(question: str, passages: Sequence[tuple[str, str]], embed: Embed) -> list[Sentence]:
    """The sentences of `passages`, (article id, text) pairs with the best passage first, that
    answer `question`, in the answer's order; empty when none is relevant enough."""
    found = []  # (passage, position, sentence, the sentence before it when it leans on it)
    for number, (_, text) in enumerate(passages):
        split = sentences(strip_markers(text))
        for position, sentence in enumerate(split):
            if len(_WORD.findall(sentence)) >= MIN_WORDS and not _framing(sentence):
                leans = position > 0 and bool(_ANAPHOR.match(sentence))
                found.append((number, position, sentence, split[position - 1] if leans else None))
    if _QUANTITY_QUESTION.search(question):
        found = [f for f in found if _QUANTITY.search(f[2])]
    read = [sentence if before is None else f"{before} {sentence}"
            for _, _, sentence, before in found]
    lexical = _coverage(question, read)
    # the embedding model is the cost (tens of ms a sentence on a CPU core): only the
    # sentences with the most question words, best passages first, are embedded
    keep = sorted(range(len(found)),
                  key=lambda i: PREFILTER_RANK * found[i][0] - lexical[i])[:MAX_EMBEDDED]
    if not keep:
        return []
    found, read, lexical = ([items[i] for i in keep] for items in (found, read, lexical))
    vectors = embed([question, *read])
    meaning = vectors[1:] @ vectors[0]
    why = bool(_WHY.search(question))
    scores = [float(meaning[i] + LEXICAL_WEIGHT * lexical[i] - RANK_PENALTY * number
                    + WHY_BONUS * (why and bool(_CAUSAL.search(sentence))))
              for i, (number, _, sentence, _) in enumerate(found)]
    first = max(range(len(found)), key=lambda i: scores[i])
    best = scores[first]
    if best < THRESHOLD:
        return []
    home = passages[found[first][0]][0]
    kept = [score + SAME_ARTICLE_BONUS * (passages[number][0] == home)
            for score, (number, _, _, _) in zip(scores, found)]

    def unit(i: int) -> list[tuple[int, int, str]]:
        """Sentence i as (passage, position, text), after the sentence it leans on."""
        number, position, sentence, before = found[i]
        return [*([(number, position - 1, before)] if before else []),
                (number, position, sentence)]

    chosen, answer = [first], unit(first)
    for i in sorted(range(len(found)), key=lambda i: -kept[i]):
        if kept[i] < RELATIVE * best:
            break
        new = [u for u in unit(i) if u not in answer]
        if (new and scores[i] >= THRESHOLD and len(answer) + len(new) <= MAX_SENTENCES
                and all(float(vectors[1 + i] @ vectors[1 + j]) <= REDUNDANT for j in chosen)):
            chosen.append(i)
            answer += new
    return [Sentence(number, sentence) for number, _, sentence in answer]


def supported(text: str, source: str, share: float) -> bool:
    """Whether `source` holds at least `share` of the content words of `text`: a quote or a
    close paraphrase of it, not a claim from elsewhere."""
    words = terms(text)
    return len(words & terms(source)) >= share * len(words)


def _framing(sentence: str) -> bool:
    """Says what an article covers, not what it found; a list of what it covers ("...:
    X, Y", "including X") is content."""
    return bool(_FRAMING.match(sentence)) and not _LISTS.search(sentence)


def _coverage(question: str, texts: list[str]) -> list[float]:
    """For each text, the share of the question's content words it holds, each word weighted
    by its rarity among the texts (a word no text holds still counts in the whole)."""
    wanted = terms(question)
    held = [terms(text) & wanted for text in texts]
    frequency = Counter(word for words in held for word in words)
    weight = {w: math.log(1 + len(texts) / max(frequency[w], 0.5)) for w in wanted}
    total = sum(weight.values()) or 1.0
    return [sum(weight[w] for w in words) / total for words in held]


class SentenceVectors:
    """`embed` that keeps the vectors of the last `size` texts it embedded: the same passages
    come back for many questions, and embedding their sentences is what an extractive answer
    costs. Safe to call from several threads."""

    def __init__(self, embed: Embed, size: int = 50_000) -> None:
        self.embed = embed
        self.size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            known = {t: self._vectors[t] for t in texts if t in self._vectors}
            for text in known:
                self._vectors.move_to_end(text)
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            known.update(zip(missing, self.embed(missing)))
            with self._lock:
                for text in missing:
                    self._vectors[text] = known[text]
                while len(self._vectors) > self.size:
                    self._vectors.popitem(last=False)
        return np.stack([known[t] for t in texts])

