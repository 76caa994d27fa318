"""Search: BM25 screening, dense re-ranking, and their fusions over the embedded index.

Modes (all return passages, best first):
- `hybrid` (default, measured best on Cranfield): BM25 top-N and dense top-N merged, each
  score standardised (z-score) over its own list, then weighted 0.4 BM25 + 0.6 dense;
- `rerank`: BM25 top-N (`screening_top_k`) re-ordered by embedding similarity;
- `rrf`: reciprocal rank fusion (k=60) of BM25 top-N and dense top-N;
- `bm25` and `dense` alone.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.config import config_from_dict
from inference.workdir import Workdir

from .embedded import EmbeddedIndex

MODES = ("hybrid", "rerank", "rrf", "bm25", "dense")
DEFAULT_MODE = "hybrid"
MAX_QUERY_CHARS = 2000
MAX_TOP_K = 1000
HYBRID_BM25_WEIGHT = 0.4
RRF_K = 60
_WORD = re.compile(r"\w+")


class QueryError(ValueError):
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
        if mode == "rerank":
            rows = np.array([r for r, _ in lexical], dtype=np.int64)
            sims = self._similarity(vector, rows)
            hits = [Hit(int(r), float(s), bm25=b, dense=float(s))
                    for (r, b), s in zip(lexical, sims)]
            return sorted(hits, key=lambda h: -h.score)[:depth]
        semantic = self._dense(vector, n, topic)
        if mode == "rrf":
            fused: dict[int, float] = defaultdict(float)
            for ranked in (lexical, semantic):
                for rank, (row, _) in enumerate(ranked):
                    fused[row] += 1.0 / (RRF_K + rank + 1)
            scores = fused
        else:
            scores = _standardised_sum(lexical, semantic, self._similarity(
                vector, np.array(sorted({r for r, _ in lexical} | {r for r, _ in semantic}),
                                 dtype=np.int64)))
        bm25 = dict(lexical)
        dense = dict(semantic)
        ranked = sorted(scores.items(), key=lambda item: -item[1])[:depth]
        return [Hit(r, float(s), bm25=bm25.get(r), dense=dense.get(r)) for r, s in ranked]

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


def _standardised_sum(lexical: list[tuple[int, float]], semantic: list[tuple[int, float]],
                      union_sims: np.ndarray) -> dict[int, float]:
    """0.4 x z(BM25) + 0.6 x z(cosine) over the union of both candidate lists.

    A candidate missing from the BM25 list gets that list's lowest score (it scored no higher).
    """
    rows = sorted({r for r, _ in lexical} | {r for r, _ in semantic})
    if not rows:
        return {}
    lex = dict(lexical)
    lex_scores = np.array([s for _, s in lexical] or [0.0])
    floor = float(lex_scores.min())
    lex_mean, lex_std = float(lex_scores.mean()), float(lex_scores.std()) or 1.0
    sim_mean, sim_std = float(union_sims.mean()), float(union_sims.std()) or 1.0
    return {
        row: HYBRID_BM25_WEIGHT * (lex.get(row, floor) - lex_mean) / lex_std
        + (1 - HYBRID_BM25_WEIGHT) * (float(sim) - sim_mean) / sim_std
        for row, sim in zip(rows, union_sims)
    }
