"""The embedded index: tantivy BM25 (English stemming), a float16 embedding matrix and the
passages' fields in an Arrow file, all on disk and memory-mapped for reading.

It lives in the workdir (`index/embedded-KEY/`), built from the shard and result files. A build
goes to a new folder named after the results it was made from and becomes current by an atomic
rename of a pointer file, so a search never sees a half-built index and loading the same results
twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import tantivy

from inference.manifest import Manifest
from inference.workdir import Workdir, WorkdirError, write_json_atomic

from .index import Candidates

POINTER = "current.json"
# Two indexing threads with 500 MB of buffer each write few, large segments (2 at 1.1M
# passages, against 8 with 128 MB each): a query walks every segment's posting lists, and
# searches measured 10-20% faster at the same build speed. Buffers grow only as needed.
WRITER_HEAP_BYTES = 1_000_000_000
WRITER_THREADS = 2
# Terms in more than this share of all passages are left out of BM25 queries (see bm25).
COMMON_TERM_SHARE = 0.5
SHARD_COLUMNS = ["passage_id", "article_id", "title", "text", "authors", "year", "url", "topic"]


def _analyzer() -> tantivy.TextAnalyzer:
    """The `en_stem` analyser the title and text fields are indexed with, for query words."""
    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(40))
            .filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.stemmer("english"))
            .build())


def _schema() -> tantivy.Schema:
    """Only what BM25 and the topic filter need: passage fields live in passages.arrow."""
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("title", stored=False, tokenizer_name="en_stem")
    builder.add_text_field("text", stored=False, tokenizer_name="en_stem")
    builder.add_text_field("topic", stored=False, tokenizer_name="raw")
    # indexed: `within` filters; fast: hits read their row from a column, not the doc store
    builder.add_integer_field("row", indexed=True, fast=True)
    return builder.build()


@dataclass
class IndexSummary:
    passages: int
    built: bool
    path: str
    seconds: float


def _index_key(results_key: str) -> str:
    """Names a build after the results it holds and the index format."""
    return hashlib.sha256(f"embedded-v4:{results_key}".encode()).hexdigest()[:16]


def finished_results(workdir: Workdir) -> tuple[Manifest, str]:
    """The manifest and results key of a workdir whose every shard has a current result
    (what any backend loads); a clear error otherwise."""
    manifest = workdir.manifest().require_partitioned()
    key = manifest.result_key()
    missing = [e.shard for e in manifest.shards if not workdir.result_is_current(e, key)]
    if missing:
        raise WorkdirError(f"{workdir.root}: shards {missing[:10]} have no current result; "
                           "run `infer-corpus run` (or `shard`) first")
    return manifest, key


def read_shards(workdir: Workdir, manifest: Manifest) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Each shard's passage fields (topic: the input's, else the predicted label) and vectors."""
    for entry in manifest.shards:
        shard = pq.read_table(workdir.shard_path(entry.shard), columns=SHARD_COLUMNS)
        result = pq.read_table(workdir.result_path(entry.shard), columns=["embedding", "label"])
        topic = pc.coalesce(shard.column("topic"), result.column("label"))
        shard = shard.set_column(shard.schema.get_field_index("topic"), "topic", topic)
        vectors = result.column("embedding").combine_chunks()
        yield shard, vectors.values.to_numpy().reshape(len(vectors), -1)


def build_index(workdir: Workdir) -> IndexSummary:
    """Index every passage of a finished workdir; a no-op when the index is already current."""
    started = time.perf_counter()
    manifest, key = finished_results(workdir)
    root = workdir.root / "index"
    name = f"embedded-{_index_key(key)}"
    total = manifest.passages
    if _pointer(root).get("name") == name and (root / name / "done").is_file():
        return IndexSummary(total, False, str(root / name), time.perf_counter() - started)
    target = root / name
    if target.exists():
        shutil.rmtree(target)  # an earlier build of the same results that did not finish
    (target / "tantivy").mkdir(parents=True)
    index = tantivy.Index(_schema(), path=str(target / "tantivy"))
    writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=WRITER_THREADS)
    vectors: np.ndarray | None = None
    passages: ipc.RecordBatchFileWriter | None = None
    row = 0
    for table, matrix in read_shards(workdir, manifest):
        if vectors is None:
            vectors = np.lib.format.open_memmap(target / "vectors.npy", mode="w+",
                                                dtype=np.float16, shape=(total, matrix.shape[1]))
            passages = ipc.new_file(str(target / "passages.arrow"), table.schema)
        vectors[row : row + len(matrix)] = matrix
        passages.write_table(table)
        columns = table.select(["title", "text", "topic"]).to_pydict()
        for i, (title, text, topic) in enumerate(
            zip(columns["title"], columns["text"], columns["topic"])
        ):
            writer.add_document(tantivy.Document(title=title or "", text=text,
                                                 topic=topic or "", row=row + i))
        row += len(matrix)
    writer.commit()
    writer.wait_merging_threads()
    if vectors is None:  # every input row was rejected: an empty, searchable index
        np.save(target / "vectors.npy", np.zeros((0, 0), dtype=np.float16))
        empty = pa.schema([(column, pa.string()) for column in SHARD_COLUMNS])
        passages = ipc.new_file(str(target / "passages.arrow"), empty)
    else:
        vectors.flush()
        del vectors
    passages.close()
    (target / "done").write_text(json.dumps({"passages": total}))
    old = _pointer(root).get("name")
    write_json_atomic(root / POINTER, {"name": name, "passages": total})
    if old and old != name:
        shutil.rmtree(root / old, ignore_errors=True)
    return IndexSummary(total, True, str(target), time.perf_counter() - started)


def _pointer(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / POINTER).read_text())
    except (OSError, ValueError):
        return {}


class EmbeddedIndex:
    """Read side: BM25 candidates from tantivy, embeddings from the memory-mapped matrix.
    Passages are keyed by their row in the matrix."""

    def __init__(self, workdir: Workdir) -> None:
        root = workdir.root / "index"
        name = _pointer(root).get("name")
        if not name or not (root / name / "done").is_file():
            raise WorkdirError(f"{workdir.root} has no index: run `infer-corpus index` first")
        self.path = root / name
        self.index = tantivy.Index.open(str(self.path / "tantivy"))
        self.searcher = self.index.searcher()
        self.analyzer = _analyzer()
        self.matrix = np.load(self.path / "vectors.npy", mmap_mode="r")
        self.passages = ipc.open_file(pa.memory_map(str(self.path / "passages.arrow"))).read_all()

    def __len__(self) -> int:
        return len(self.matrix)

    def bm25(self, words: str, limit: int, topic: str | None = None,
             within: list[int] | None = None) -> list[tuple[int, float]]:
        """(row, score) of the best `limit` passages for already-sanitised query words; only
        passages of `topic` and among the rows `within`, when given.

        Terms found in over COMMON_TERM_SHARE of all passages are left out when the others
        find `limit` passages (or when scoring given rows): such terms weigh almost nothing
        in BM25 (idf < 0.7, against 5-10 for a rare word) but have the longest posting lists,
        and tantivy's Python binding always collects hits through a multi-collector, which
        turns off the block-max WAND pruning that would skip them; they would set the
        search's speed. When the rest find fewer passages, all terms are searched, so no
        passage that matches a query word goes missing from a short list.
        """
        schema = self.index.schema
        filters = [tantivy.Query.term_query(schema, "topic", topic)] if topic else []
        if within is not None:
            if not within:
                return []
            # one term query per row: a term set query took 6 ms by itself at a million
            # passages, against 0.7 ms for 100 rows this way
            filters.append(tantivy.Query.boolean_query(
                [(tantivy.Occur.Should, tantivy.Query.term_query(schema, "row", row))
                 for row in within]))

        def search(clauses: list[tantivy.Query]) -> list[tuple[float, tantivy.DocAddress]]:
            query = tantivy.Query.boolean_query([(tantivy.Occur.Should, c) for c in clauses])
            if filters:  # filters add the same score to every hit: the order is BM25's
                query = tantivy.Query.boolean_query(
                    [(tantivy.Occur.Must, query)]
                    + [(tantivy.Occur.Must, tantivy.Query.const_score_query(f, 0.0))
                       for f in filters])
            return self.searcher.search(query, limit, count=False).hits

        rare, common = self._term_clauses(words)
        hits = search(rare or common)
        if rare and common and within is None and len(hits) < limit:
            hits = search(rare + common)
        rows = self.searcher.fast_field_values("row", [address for _, address in hits])
        return [(row, score) for row, (score, _) in zip(rows, hits)]

    def _term_clauses(self, words: str) -> tuple[list[tantivy.Query], list[tantivy.Query]]:
        """One BM25 term query per stemmed word and field (title, text), as tantivy's query
        parser builds them: (those of rare terms, those of terms in over COMMON_TERM_SHARE
        of all passages)."""
        rare, common = [], []
        limit = COMMON_TERM_SHARE * self.searcher.num_docs
        tokens = [t for word in dict.fromkeys(words.split())  # as parsed: each word once
                  for t in self.analyzer.analyze(word)]
        for token in tokens:
            for field in ("title", "text"):
                frequency = self.searcher.doc_freq(field, token)
                if frequency:
                    term = tantivy.Query.term_query(self.index.schema, field, token)
                    (common if frequency > limit else rare).append(term)
        return rare, common

    def candidates(self, words: str, limit: int, topic: str | None = None) -> Candidates:
        """What `bm25` finds, with the passages' (unit) embeddings as float32."""
        found = self.bm25(words, limit, topic)
        rows = np.array([row for row, _ in found], dtype=np.int64)
        return Candidates.of(found, self.matrix[rows])

    def dense(self, vector: np.ndarray, limit: int,
              topic: str | None = None) -> list[tuple[int, float]]:
        """Exact nearest passages by cosine, scanning the matrix in blocks."""
        rows = self._topic_rows(topic) if topic else None
        total = len(rows) if rows is not None else len(self)
        best_rows: list[np.ndarray] = []
        best_scores: list[np.ndarray] = []
        for start in range(0, total, 65536):
            block = rows[start : start + 65536] if rows is not None else np.arange(
                start, min(total, start + 65536))
            sims = np.asarray(self.matrix[block], dtype=np.float32) @ vector
            keep = np.argpartition(-sims, min(limit, len(sims)) - 1)[:limit]
            best_rows.append(block[keep])
            best_scores.append(sims[keep])
        if not best_rows:
            return []
        all_rows, all_scores = np.concatenate(best_rows), np.concatenate(best_scores)
        order = np.argsort(-all_scores, kind="stable")[:limit]
        return [(int(all_rows[i]), float(all_scores[i])) for i in order]

    def _topic_rows(self, topic: str) -> np.ndarray:
        if not len(self.passages):
            return np.zeros(0, dtype=np.int64)
        mask = pc.fill_null(pc.equal(self.passages.column("topic"), topic), False)
        return np.flatnonzero(mask.to_numpy(zero_copy_only=False))

    def topics(self) -> list[str]:
        """The topics the passages are indexed under (the input's, else the predicted label)."""
        return sorted(t for t in pc.unique(self.passages.column("topic")).to_pylist() if t)

    def passages_for(self, keys: list[int]) -> list[dict[str, Any]]:
        """The stored fields of the given passages (memory-mapped: no copy of the whole table)."""
        return [self.passages.slice(row, 1).to_pylist()[0] for row in keys]
