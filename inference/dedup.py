"""The partition's merge: global, exact de-duplication decided from the map's keys alone.

Whatever the number of parts, the decisions are those of one pass over the inputs in order:
- an article whose id an earlier article holds is dropped as a duplicate when its title and
  text are the same (their SHA-256), and rejected as `duplicate_id` otherwise;
- a passage of a kept article whose text (with its title) an earlier kept passage has is
  dropped as a duplicate.
"Earlier" is input order: parts in order, records in order within a part. Both are found by
sorting the keys stably (ids by a 128-bit hash, passages by a 128-bit prefix of their SHA-256)
and keeping the first of each run of equal keys, so the merge never reads text. Passages are
sorted in 16 runs by their digests' first four bits, which keeps the sort's working memory to
a sixteenth of the passages' keys (see benchmarks/partition_throughput.py for measured
figures and docs/scale.md for them at 180 million passages).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

KEPT, DUPLICATE, CLASH = 0, 1, 2
PREFIX_RUNS = 16


@dataclass
class PartKeys:
    """One mapped part's keys (see partition_map.map_part)."""

    article_ids: np.ndarray  # (articles, 2) uint64: hash of the id
    article_digests: np.ndarray  # (articles, 1) uint64: first 8 bytes of the content SHA-256
    passage_digests: np.ndarray  # (passages, 2) uint64
    passage_articles: np.ndarray  # (passages,) int32: the article, numbered within the part

    @classmethod
    def load(cls, path: Path) -> PartKeys:
        with np.load(path) as keys:
            return cls(keys["article_ids"], keys["article_digests"], keys["passage_digests"],
                       keys["passage_articles"])


@dataclass
class PartDecisions:
    keep: np.ndarray  # (passages,) bool: which candidate passages become shard rows
    clashes: np.ndarray  # article numbers rejected as duplicate_id
    articles: int  # kept
    duplicate_articles: int
    duplicate_passages: int


def _firsts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows of uint64 words: the stable sort order, and in that order, whether each row
    is the first of its run of equal rows."""
    order = np.lexsort(keys.T[::-1]) if len(keys) else np.zeros(0, dtype=np.int64)
    ordered = keys[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    return order, first


def decide(parts: list[PartKeys]) -> list[PartDecisions]:
    """Each part's decisions; the parts must be given in input order."""
    if not parts:
        return []
    article_ids = np.concatenate([p.article_ids for p in parts])
    digests = np.concatenate([p.article_digests for p in parts])[:, 0]
    order, first = _firsts(article_ids)
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))
    in_order = digests[order]
    status = np.empty(len(order), dtype=np.int8)
    status[order] = np.where(first, KEPT, np.where(in_order == in_order[run_start],
                                                   DUPLICATE, CLASH))
    del article_ids, digests, order, first, run_start, in_order

    article_offsets = np.cumsum([0] + [len(p.article_ids) for p in parts])
    passage_offsets = np.cumsum([0] + [len(p.passage_digests) for p in parts])
    candidates = np.flatnonzero(np.concatenate(
        [status[article_offsets[i] + p.passage_articles] == KEPT for i, p in enumerate(parts)]))
    keep = np.zeros(int(passage_offsets[-1]), dtype=bool)
    all_digests = np.concatenate([p.passage_digests for p in parts])
    for run in range(PREFIX_RUNS):
        rows = candidates[(all_digests[candidates, 0] >> np.uint64(60)) == run]
        order, first = _firsts(all_digests[rows])
        keep[rows[order[first]]] = True
    del all_digests

    decisions = []
    for i, part in enumerate(parts):
        own = status[article_offsets[i] : article_offsets[i + 1]]
        part_keep = keep[passage_offsets[i] : passage_offsets[i + 1]]
        kept_articles = own[part.passage_articles] == KEPT
        decisions.append(PartDecisions(
            keep=part_keep, clashes=np.flatnonzero(own == CLASH),
            articles=int((own == KEPT).sum()), duplicate_articles=int((own == DUPLICATE).sum()),
            duplicate_passages=int((kept_articles & ~part_keep).sum())))
    return decisions
