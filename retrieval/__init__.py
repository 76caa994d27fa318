"""Search over the passages that `infer-corpus` embedded: the index backends and ranking.

`build(workdir)` loads a finished workdir into the index its config (or a flag) names, the
embedded one (`build_index`) or Elasticsearch, idempotently; `open_index` opens it as a
`PassageIndex` for `Searcher`, which answers queries in one of `MODES` (BM25 screening, dense
re-ranking, fusions).
"""

from .backends import build, open_index
from .embedded import EmbeddedIndex, IndexSummary, build_index
from .index import Candidates, PassageIndex
from .search import DEFAULT_MODE, MODES, Hit, QueryError, Searcher

__all__ = ["DEFAULT_MODE", "MODES", "Candidates", "EmbeddedIndex", "Hit", "IndexSummary",
           "PassageIndex", "QueryError", "Searcher", "build", "build_index", "open_index"]
