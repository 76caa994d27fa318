"""Search over the passages that `infer-corpus` embedded: the embedded index and ranking.

`build_index(workdir)` loads a finished workdir into its index (idempotent); `Searcher`
answers queries in one of `MODES` (BM25 screening, dense re-ranking, fusions);
`evaluate_collection` measures them on a BEIR-layout collection.
"""

from .embedded import EmbeddedIndex, IndexSummary, build_index
from .evaluate import evaluate_collection
from .search import DEFAULT_MODE, MODES, Hit, PassageIndex, QueryError, Searcher

__all__ = ["DEFAULT_MODE", "MODES", "EmbeddedIndex", "Hit", "IndexSummary", "PassageIndex",
           "QueryError", "Searcher", "build_index", "evaluate_collection"]
