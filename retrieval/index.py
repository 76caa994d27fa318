"""What a search backend provides: the `PassageIndex` protocol that the embedded index and
Elasticsearch implement and `search.Searcher` ranks over.

Keys identify passages within one backend (row numbers in the embedded index, passage ids in
Elasticsearch); vectors are unit length, float32. Every method answers from its arguments
alone, so one index serves many searches at once.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Candidates:
    """BM25 screening: the best passages for a query's words, best first, with the vectors
    that re-rank them (`vectors[i]` is `keys[i]`'s)."""

    keys: list[Hashable]
    scores: np.ndarray  # float64, as the backend scored them
    vectors: np.ndarray  # float32, one row per key

    @classmethod
    def of(cls, found: list[tuple[Hashable, float]], vectors: np.ndarray) -> Candidates:
        """From (key, score) pairs and their vectors in the same order."""
        return cls([key for key, _ in found], np.array([score for _, score in found],
                                                       dtype=np.float64),
                   np.asarray(vectors, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.keys)


class PassageIndex(Protocol):
    """A searchable set of passages."""

    def bm25(self, words: str, limit: int, topic: str | None = None,
             within: list | None = None) -> list[tuple[Hashable, float]]:
        """(key, score) of the best `limit` passages for already-sanitised query words; only
        those of `topic` and among the keys `within`, when given."""

    def candidates(self, words: str, limit: int, topic: str | None = None) -> Candidates:
        """What `bm25` finds, with the passages' vectors."""

    def dense(self, vector: np.ndarray, limit: int,
              topic: str | None = None) -> list[tuple[Hashable, float]]:
        """(key, cosine) of the passages nearest a unit query vector."""

    def passages_for(self, keys: list) -> list[dict[str, Any]]:
        """The stored fields of the given passages, in order."""

    def topics(self) -> list[str]:
        """The topics the passages are indexed under, sorted."""

    def model_record(self) -> dict[str, Any] | None:
        """The model that embedded the passages, as the build recorded it
        (`query_encoder.model_record`); None for an index that records none."""
