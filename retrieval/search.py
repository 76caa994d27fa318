"""Search: BM25 screening, dense re-ranking, and their fusions over a passage index.

Modes (all return passages, best first):
- `feedback` (default, measured best on Cranfield): `hybrid`, then pseudo-relevance feedback:
  the first round's top passages lend the query their most frequent content words (a
  down-weighted BM25 clause) and their embedding centroid (added to the query vector), and a
  second `hybrid` round re-ranks the same candidates with both. The second BM25 lookup only
  scores those candidates, so it costs little even at millions of passages;
- `hybrid`: BM25 top-N (`screening_top_k`) re-ordered by 0.4 x z(BM25) + 0.6 x z(cosine),
  both standardised over the candidates, then regularised over the candidates: each score is
  blended half and half with those of the candidates most alike in content (the cluster
  hypothesis: passages alike in content tend to be relevant to the same queries). Only N
  embeddings are read per query, so it stays fast at millions of passages;
- `rerank`: BM25 top-N re-ordered by embedding similarity alone;
- `rrf`: reciprocal rank fusion (k=60) of BM25 top-N and an exact dense top-N;
- `bm25` and `dense` (an exact scan of all embeddings) alone.

Equal scores keep a fixed order, so the same index gives the same ranking every time: the
embedded index breaks BM25 and dense ties by row, and the fused modes sort stably, keeping the
BM25 order of the candidates (and in `rrf`, BM25's passages before those only dense found).
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.errors import UsageError
from inference.workdir import Workdir, WorkdirError

from .backends import open_index
from .index import Candidates, PassageIndex
from .index_model import recorded_model
from .text import STOPWORDS

MODES = ("feedback", "hybrid", "rerank", "rrf", "bm25", "dense")
DEFAULT_MODE = "feedback"
MAX_QUERY_CHARS = 2000
MAX_TOP_K = 1000
HYBRID_BM25_WEIGHT = 0.4
RRF_K = 60
FEEDBACK_PASSAGES = 5  # first-round passages taken as relevant
FEEDBACK_TERMS = 10  # content words they add to the BM25 query (10-30 measured alike)
FEEDBACK_TERM_WEIGHT = 0.3  # BM25 weight of the added words against the query's own
FEEDBACK_VECTOR_WEIGHT = 0.5  # weight of their embedding centroid in the query vector
NEIGHBOUR_WEIGHT = 0.5  # share of a fused score that comes from the candidate's neighbours
NEIGHBOUR_TEMPERATURE = 0.05  # cosine scale of the neighbours' softmax weights
_WORD = re.compile(r"\w+")


class QueryError(UsageError):
    """A query or search setting that cannot be served; the message says why."""


def query_words(query: str) -> str:
    """The query's words only: query-language syntax (quotes, colons, brackets, +/-) is dropped,
    so any text is a valid query. Lower case, so AND/OR/NOT are plain words."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("the query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"the query has {len(query):,} characters (limit {MAX_QUERY_CHARS:,})")
    words = _WORD.findall(query.lower())
    if not words:
        raise QueryError("the query has no searchable words")
    content = [word for word in words if word not in STOPWORDS]
    return " ".join(content or words)


def feedback_terms(passages: list[dict[str, Any]], query: str, limit: int) -> str:
    """The content words that weigh most in the given passages (each passage's word
    frequencies normalised to sum 1, as in relevance-model feedback), minus the query's own."""
    own = set(query.split())
    weights: Counter[str] = Counter()
    for passage in passages:
        words = [w for w in _WORD.findall(f"{passage.get('title') or ''} {passage['text']}".lower())
                 if len(w) > 2 and w.isalpha() and w not in STOPWORDS and w not in own]
        for word, count in Counter(words).items():
            weights[word] += count / len(words)
    return " ".join(word for word, _ in weights.most_common(limit))


@dataclass
class Hit:
    key: Hashable
    score: float
    bm25: float | None = None
    dense: float | None = None
    passage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.passage, "score": self.score, "bm25": self.bm25, "dense": self.dense}


class Searcher:
    """Answers queries over one workdir's index (by default the backend its config names;
    `workdir`: a `Workdir` or its path), embedding queries with the model the index was built
    with (not the one the workdir's config names now: that may have changed since); a
    WorkdirError when that model cannot be had.

    `low_latency`: for servers and other long-lived searchers; on a CPU, queries are embedded
    through an ONNX Runtime export of the model, which takes about 2 s on the first query and
    makes each later one about 3x faster (see `query_encoder`). Several threads may search at
    once.
    """

    def __init__(self, workdir: Workdir | str | os.PathLike[str], device: str = "cpu",
                 index: PassageIndex | None = None, low_latency: bool = False) -> None:
        if not isinstance(workdir, Workdir):
            workdir = Workdir(workdir)
        self.index = index or open_index(workdir)  # default: the backend the workdir names
        self.recorded = self.index.model_record()
        self.model = recorded_model(self.recorded, f"the index of {workdir.root}")
        self.device = device
        self.low_latency = low_latency
        self._encoder = None
        self._loading = threading.Lock()  # one model load, whichever thread asks first
        self._background = ThreadPoolExecutor(1, thread_name_prefix="query-embedding")

    def embed(self, queries: list[str]) -> np.ndarray:
        """Unit-length query embeddings (the model loads on first use)."""
        with self._loading:
            if self._encoder is None:
                from .query_encoder import QueryEncoder

                encoder = QueryEncoder(self.model, device=self.device,
                                       low_latency=self.low_latency)
                if self.recorded["dimension"] not in (None, encoder.encoder.dimension):
                    raise WorkdirError(
                        f"model {self.model.name!r} now gives {encoder.encoder.dimension}-"
                        f"dimensional embeddings, the index holds "
                        f"{self.recorded['dimension']}-dimensional ones: re-embed and "
                        "re-index with `infer-corpus run`")
                self._encoder = encoder
        return self._encoder.encode(queries)

    def search(self, query: str, *, top_k: int = 5, screening_top_k: int = 100,
               mode: str = DEFAULT_MODE, topic: str | None = None) -> list[Hit]:
        words = query_words(query)
        if not 1 <= top_k <= MAX_TOP_K or not 1 <= screening_top_k <= MAX_TOP_K:
            raise QueryError(f"top_k and screening_top_k must be between 1 and {MAX_TOP_K}")
        if screening_top_k < top_k:
            raise QueryError("screening_top_k must be at least top_k")
        _check_mode(mode)
        vector, candidates = None, None
        if mode == "dense":
            vector = self.embed([query])[0]
        elif mode != "bm25":  # embed the query while BM25 screens: both release the GIL
            embedding = self._background.submit(self.embed, [query])
            # screening_top_k >= top_k, checked above
            candidates = self.index.candidates(words, screening_top_k, topic)
            vector = embedding.result()[0]
        hits = self.rank(words, vector, mode=mode, depth=top_k, screening_top_k=screening_top_k,
                         topic=topic, candidates=candidates)
        for hit, passage in zip(hits, self.index.passages_for([hit.key for hit in hits])):
            hit.passage = passage
        return hits

    def rank(self, words: str, vector: np.ndarray | None, *, mode: str, depth: int,
             screening_top_k: int, topic: str | None = None,
             candidates: Candidates | None = None) -> list[Hit]:
        """The best `depth` passages for prepared query words and (unit) query vector;
        `candidates`: the BM25 screening of the words (top max(depth, screening_top_k)) when
        the caller already has it."""
        _check_mode(mode)
        n = max(depth, screening_top_k)
        if mode == "bm25":
            return [Hit(k, s, bm25=s) for k, s in self.index.bm25(words, depth, topic)]
        assert vector is not None
        if mode == "dense":
            return [Hit(k, s, dense=s) for k, s in self.index.dense(vector, depth, topic)]
        if candidates is None:
            candidates = self.index.candidates(words, n, topic)
        if mode == "rrf":
            return self._rrf(candidates, vector, n, depth, topic)
        hits = self._screen(candidates, candidates.scores, vector, mode)
        if mode == "feedback" and hits:
            top = [hit.key for hit in hits[:FEEDBACK_PASSAGES]]
            expansion = feedback_terms(self.index.passages_for(top), words, FEEDBACK_TERMS)
            row = {key: i for i, key in enumerate(candidates.keys)}
            centroid = candidates.vectors[[row[key] for key in top]].mean(axis=0)
            vector = vector + FEEDBACK_VECTOR_WEIGHT * centroid
            vector /= max(float(np.linalg.norm(vector)), 1e-12)
            # BM25 sums over query words: the candidates' scores gain the added words' only
            added = dict(self.index.bm25(expansion, len(candidates), topic,
                                         within=candidates.keys)) if expansion else {}
            scores = candidates.scores + FEEDBACK_TERM_WEIGHT * np.array(
                [added.get(key, 0.0) for key in candidates.keys], dtype=np.float64)
            hits = self._screen(candidates, scores, vector, mode)
        return hits[:depth]

    def _screen(self, candidates: Candidates, lexical: np.ndarray, vector: np.ndarray,
                mode: str) -> list[Hit]:
        """The candidates, scored `lexical` by BM25, re-ordered by cosine (`rerank`) or by the
        regularised z-score fusion."""
        vectors = candidates.vectors
        sims = vectors @ vector if len(candidates) else np.zeros(0, dtype=np.float32)
        lex = lexical.astype(np.float32)
        scores = sims if mode == "rerank" else regularise(
            HYBRID_BM25_WEIGHT * _standardise(lex)
            + (1 - HYBRID_BM25_WEIGHT) * _standardise(sims), vectors)
        hits = [Hit(k, float(score), bm25=float(b), dense=float(sim))
                for k, b, sim, score in zip(candidates.keys, lex, sims, scores)]
        return sorted(hits, key=lambda h: -h.score)

    def _rrf(self, candidates: Candidates, vector: np.ndarray, n: int, depth: int,
             topic: str | None) -> list[Hit]:
        lexical = list(zip(candidates.keys, candidates.scores.tolist()))
        semantic = self.index.dense(vector, n, topic)
        fused: dict[Hashable, float] = defaultdict(float)
        for ranked in (lexical, semantic):
            for rank, (key, _) in enumerate(ranked):
                fused[key] += 1.0 / (RRF_K + rank + 1)
        bm25, dense = dict(lexical), dict(semantic)
        best = sorted(fused.items(), key=lambda item: -item[1])[:depth]
        return [Hit(k, float(s), bm25=bm25.get(k), dense=dense.get(k)) for k, s in best]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise QueryError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def regularise(scores: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Score regularisation over a candidate set: each candidate's score blended with the
    mean of the others' scores, weighted by a softmax of their cosine similarity to it. A
    passage that only its own words lift falls below one whose close neighbours score well
    too: +0.024 nDCG@10 for `hybrid` and +0.015 for `feedback` on Cranfield
    (docs/benchmarks.md)."""
    if len(scores) < 2:
        return scores
    # einsum, not `@`: a BLAS product this small wakes the BLAS threads, whose spinning then
    # slows the BM25 and query-embedding threads of the next searches (+5-10 ms a query)
    sims = np.einsum("ik,jk->ij", vectors, vectors)
    np.fill_diagonal(sims, -np.inf)  # the neighbours only, not the candidate itself
    weights = np.exp((sims - sims.max(axis=1, keepdims=True)) / NEIGHBOUR_TEMPERATURE)
    weights /= weights.sum(axis=1, keepdims=True)
    return (1 - NEIGHBOUR_WEIGHT) * scores + NEIGHBOUR_WEIGHT * (weights @ scores)


def _standardise(scores: np.ndarray) -> np.ndarray:
    """z-scores, so BM25 and cosine weigh in on one scale whatever their ranges."""
    if len(scores) == 0:
        return scores
    spread = float(scores.std()) or 1.0
    return (scores - float(scores.mean())) / spread
