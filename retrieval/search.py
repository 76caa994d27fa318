"""Search: BM25 screening, dense re-ranking, and their fusions over the embedded index.

Modes (all return passages, best first):
- `hybrid` (default, measured best on Cranfield): BM25 top-N (`screening_top_k`) re-ordered by
  0.4 x z(BM25) + 0.6 x z(cosine), both standardised over the candidates. Only N embeddings
  are read per query, so it stays fast at millions of passages;
- `rerank`: BM25 top-N re-ordered by embedding similarity alone;
- `rrf`: reciprocal rank fusion (k=60) of BM25 top-N and an exact dense top-N;
- `bm25` and `dense` (an exact scan of all embeddings) alone.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.config import config_from_dict
from inference.readers import InputError
from inference.workdir import Workdir

from .embedded import EmbeddedIndex

MODES = ("hybrid", "rerank", "rrf", "bm25", "dense")
DEFAULT_MODE = "hybrid"
MAX_QUERY_CHARS = 2000
MAX_TOP_K = 1000
HYBRID_BM25_WEIGHT = 0.4
RRF_K = 60
_WORD = re.compile(r"\w+")


class QueryError(InputError):
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
    return " ".join(words)


@dataclass
class Hit:
    row: int
    score: float
    bm25: float | None = None
    dense: float | None = None
    passage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.passage, "score": self.score, "bm25": self.bm25, "dense": self.dense}


class Searcher:
    """Answers queries over one workdir's index, embedding queries with the workdir's model."""

    def __init__(self, workdir: Workdir, device: str = "cpu") -> None:
        self.index = EmbeddedIndex(workdir)
        self.config = config_from_dict(workdir.read_manifest()["config"])
        self.device = device
        self._encoder = None

    def embed(self, queries: list[str]) -> np.ndarray:
        if self._encoder is None:
            from inference.embed import Encoder

            self._encoder = Encoder(self.config.model, device=self.device)
        vectors = self._encoder.encode_texts(queries)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def search(self, query: str, *, top_k: int = 5, screening_top_k: int = 100,
               mode: str = DEFAULT_MODE, topic: str | None = None) -> list[Hit]:
        words = query_words(query)
        if not 1 <= top_k <= MAX_TOP_K or not 1 <= screening_top_k <= MAX_TOP_K:
            raise QueryError(f"top_k and screening_top_k must be between 1 and {MAX_TOP_K}")
        if screening_top_k < top_k:
            raise QueryError("screening_top_k must be at least top_k")
        vector = None if mode == "bm25" else self.embed([query])[0]
        hits = self.rank(words, vector, mode=mode, depth=top_k,
                         screening_top_k=screening_top_k, topic=topic)
        for hit in hits:
            hit.passage = self.index.passage(hit.row)
        return hits

    def rank(self, words: str, vector: np.ndarray | None, *, mode: str, depth: int,
             screening_top_k: int, topic: str | None = None) -> list[Hit]:
        """The best `depth` rows for prepared query words and (unit) query vector."""
        if mode not in MODES:
            raise QueryError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        n = max(depth, screening_top_k)
        if mode == "bm25":
            return [Hit(r, s, bm25=s) for r, s in self.index.bm25(words, depth, topic)]
        assert vector is not None
        if mode == "dense":
            return [Hit(r, s, dense=s) for r, s in self._dense(vector, depth, topic)]
        lexical = self.index.bm25(words, n, topic)
        if mode in ("hybrid", "rerank"):
            rows = np.array([r for r, _ in lexical], dtype=np.int64)
            sims = self._similarity(vector, rows)
            lex = np.array([b for _, b in lexical], dtype=np.float32)
            scores = sims if mode == "rerank" else (
                HYBRID_BM25_WEIGHT * _standardise(lex)
                + (1 - HYBRID_BM25_WEIGHT) * _standardise(sims))
            hits = [Hit(int(r), float(score), bm25=float(b), dense=float(sim))
                    for r, b, sim, score in zip(rows, lex, sims, scores)]
            return sorted(hits, key=lambda h: -h.score)[:depth]
        semantic = self._dense(vector, n, topic)
        fused: dict[int, float] = defaultdict(float)
        for ranked in (lexical, semantic):
            for rank, (row, _) in enumerate(ranked):
                fused[row] += 1.0 / (RRF_K + rank + 1)
        bm25, dense = dict(lexical), dict(semantic)
        best = sorted(fused.items(), key=lambda item: -item[1])[:depth]
        return [Hit(r, float(s), bm25=bm25.get(r), dense=dense.get(r)) for r, s in best]

    def _similarity(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.index.vectors[rows], dtype=np.float32) @ vector

    def _dense(self, vector: np.ndarray, limit: int,
               topic: str | None) -> list[tuple[int, float]]:
        """Exact nearest passages by cosine, scanning the matrix in blocks."""
        rows = self.index.topic_rows(topic) if topic else None
        total = len(rows) if rows is not None else len(self.index)
        best_rows: list[np.ndarray] = []
        best_scores: list[np.ndarray] = []
        for start in range(0, total, 65536):
            block = rows[start : start + 65536] if rows is not None else np.arange(
                start, min(total, start + 65536))
            sims = self._similarity(vector, block)
            keep = np.argpartition(-sims, min(limit, len(sims)) - 1)[:limit]
            best_rows.append(block[keep])
            best_scores.append(sims[keep])
        if not best_rows:
            return []
        all_rows, all_scores = np.concatenate(best_rows), np.concatenate(best_scores)
        order = np.argsort(-all_scores, kind="stable")[:limit]
        return [(int(all_rows[i]), float(all_scores[i])) for i in order]


def _standardise(scores: np.ndarray) -> np.ndarray:
    """z-scores, so BM25 and cosine weigh in on one scale whatever their ranges."""
    if len(scores) == 0:
        return scores
    spread = float(scores.std()) or 1.0
    return (scores - float(scores.mean())) / spread
