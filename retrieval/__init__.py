"""Search over the passages that `infer-corpus` embedded: the index backends and ranking.

`build(workdir)` loads a finished workdir into the index its config (or a flag) names, the
embedded one (`build_index`) or Elasticsearch, idempotently; `open_index` opens it for `Searcher`,
which answers queries in one of `MODES` (BM25 screening, dense re-ranking, fusions);
`evaluate_collection` measures them on a BEIR-layout collection.
"""

from .backends import build, open_index
from .embedded import EmbeddedIndex, IndexSummary, build_index
from .evaluate import evaluate_collection
from .search import DEFAULT_MODE, MODES, Hit, PassageIndex, QueryError, Searcher

__all__ = ["DEFAULT_MODE", "MODES", "EmbeddedIndex", "Hit", "IndexSummary", "PassageIndex",
           "QueryError", "Searcher", "build", "build_index", "evaluate_collection", "open_index"]
