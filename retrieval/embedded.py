"""The embedded index: tantivy BM25 (English stemming), a float16 embedding matrix and the
passages' fields in an Arrow file, all on disk and memory-mapped for reading.

It lives in the workdir (`index/embedded-KEY/`), built from the shard and result files. A build
goes to a new folder named after the results it was made from and becomes current by an atomic
rename of a pointer file, so a search never sees a half-built index and loading the same results
twice changes nothing. A reader that opens while a build replaces the one it found opens the
new one. A build's `done` file records the passages and the model that embedded them (see
`index_model`): searches embed queries with that model.

Builds are deterministic: passages get rows in the shards' order, whatever the indexing threads
do, and BM25 and dense searches break ties by row, so the same results give the same rankings
and scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
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

from inference.errors import DiskFullError
from inference.manifest import Manifest
from inference.workdir import Workdir, WorkdirError, write_json_atomic

from .index import Candidates
from .index_model import model_record

POINTER = "current.json"
# Two indexing threads with 500 MB of buffer each write few, large segments (2 at 1.1M
# passages, against 8 with 128 MB each): a query walks every segment's posting lists, and
# searches measured 10-20% faster at the same build speed. Buffers grow only as needed.
WRITER_HEAP_BYTES = 1_000_000_000
WRITER_THREADS = 2
# Terms in more than this share of all passages are left out of BM25 queries (see bm25).
COMMON_TERM_SHARE = 0.5
SHARD_COLUMNS = ["passage_id", "article_id", "title", "text", "authors", "year", "url", "topic"]
# A reader retries this often when the build it found is replaced while it opens it.
OPEN_ATTEMPTS = 5
# After a failed write, this much room not found in the index's file system means it is full.
ROOM_PROBE_BYTES = 1 << 20


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
    return hashlib.sha256(f"embedded-v5:{results_key}".encode()).hexdigest()[:16]


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
    """Index every passage of a finished workdir; a no-op when the index is already current.
    Holds the workdir's lock, so two builds never write one index; readers need none."""
    with workdir.lock(existing=True):
        started = time.perf_counter()
        manifest, key = finished_results(workdir)
        root = workdir.root / "index"
        name = f"embedded-{_index_key(key)}"
        total = manifest.passages
        if _pointer(root).get("name") == name and (root / name / "done").is_file():
            return IndexSummary(total, False, str(root / name), time.perf_counter() - started)
        target = root / name
        try:
            _write_build(workdir, manifest, target)
        except (OSError, ValueError) as exc:  # tantivy says only ValueError("... io::Error")
            if not (DiskFullError.caused(exc) or _out_of_room(root)):
                raise
            shutil.rmtree(target, ignore_errors=True)  # give the space back
            raise DiskFullError.writing(f"the index {target}") from None
        write_json_atomic(root / POINTER, {"name": name, "passages": total})
        # the build this one replaces, unfinished ones and pointers a killed build left half
        # written (no other writer holds the lock); a reader that was opening a replaced build
        # opens this one instead (see EmbeddedIndex)
        for old in root.glob(f".{POINTER}.tmp-*"):
            old.unlink(missing_ok=True)
        for old in root.glob("embedded-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return IndexSummary(total, True, str(target), time.perf_counter() - started)


def _write_build(workdir: Workdir, manifest: Manifest, target: Path) -> None:
    """The whole build in `target`, every file synced to disk, `done` last."""
    if target.exists():
        shutil.rmtree(target)  # an earlier build of the same results that did not finish
    (target / "tantivy").mkdir(parents=True)
    index = tantivy.Index(_schema(), path=str(target / "tantivy"))
    writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=WRITER_THREADS)
    total = manifest.passages
    vectors: np.ndarray | None = None
    passages: ipc.RecordBatchFileWriter | None = None
    row = 0
    for table, matrix in read_shards(workdir, manifest):
        if vectors is None:
            vectors = _allocated_matrix(target / "vectors.npy", (total, matrix.shape[1]))
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
        dimension = None  # nothing was embedded
    else:
        dimension = vectors.shape[1]
        vectors.flush()
        del vectors
    passages.close()
    done = {"passages": total, "model": model_record(manifest.config.model, dimension)}
    (target / "done").write_text(json.dumps(done))
    for path in (target / "vectors.npy", target / "passages.arrow", target / "done"):
        _fsync(path)  # tantivy syncs its own files at commit


def _allocated_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A float16 matrix memory-mapped from a new .npy file whose blocks are all allocated
    first: a sparse file's missing blocks would fail, on a full disk, as SIGBUS while the
    matrix is written; allocating them fails as an OSError (ENOSPC) before."""
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    with open(path, "rb+") as handle:
        os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    return matrix


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _out_of_room(folder: Path) -> bool:
    """The file system holding `folder` has not even ROOM_PROBE_BYTES left (for an error that
    does not say why a write failed)."""
    probe = folder / f".room-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, ROOM_PROBE_BYTES)
        return False
    except OSError as exc:
        return DiskFullError.caused(exc)
    finally:
        probe.unlink(missing_ok=True)


def _pointer(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / POINTER).read_text())
    except (OSError, ValueError):
        return {}


def _open_tantivy(folder: Path) -> tuple[tantivy.Index, tempfile.TemporaryDirectory | None]:
    """The tantivy index in `folder`, and the temporary folder it was opened through, if any.

    tantivy writes a lock file into the index's folder even to read it, which a read-only
    workdir (an archive of results, another user's run) refuses. Then the index is opened
    through a temporary folder of links to its files: they are read in place, and the lock
    file goes beside the links. The folder lives as long as the index object holds it."""
    try:
        return tantivy.Index.open(str(folder)), None
    except ValueError as exc:
        if "Lockfile" not in str(exc):
            raise
    links = tempfile.TemporaryDirectory(prefix="tantivy-read-")
    for entry in os.scandir(folder):
        if not entry.name.endswith(".lock"):
            os.symlink(entry.path, os.path.join(links.name, entry.name))
    return tantivy.Index.open(links.name), links


class EmbeddedIndex:
    """Read side: BM25 candidates from tantivy, embeddings from the memory-mapped matrix.
    Passages are keyed by their row in the matrix."""

    def __init__(self, workdir: Workdir) -> None:
        root = workdir.root / "index"
        for _ in range(OPEN_ATTEMPTS):
            name = _pointer(root).get("name")
            if not name:
                break
            try:
                self._open(root / name)
                return
            except (OSError, ValueError, KeyError):
                if _pointer(root).get("name") == name:  # not replaced under us: damaged
                    raise WorkdirError(f"the index in {root / name} is unreadable: delete "
                                       f"{root} and run `infer-corpus index`") from None
        raise WorkdirError(f"{workdir.root} has no index: run `infer-corpus index` first")

    def _open(self, path: Path) -> None:
        """Every part of one build: a build that replaces it may delete it meanwhile; once
        open, the files stay readable (memory maps and open files outlive their deletion)."""
        self.path = path
        done = json.loads((path / "done").read_text())
        self.index, self._links = _open_tantivy(path / "tantivy")
        self.searcher = self.index.searcher()
        self.analyzer = _analyzer()
        self.matrix = np.load(path / "vectors.npy", mmap_mode="r")
        self.passages = ipc.open_file(pa.memory_map(str(path / "passages.arrow"))).read_all()
        self.model = done.get("model")

    def model_record(self) -> dict[str, Any] | None:
        """The model that embedded the passages, as the build recorded it."""
        return self.model

    def __len__(self) -> int:
        return len(self.matrix)

    def bm25(self, words: str, limit: int, topic: str | None = None,
             within: list[int] | None = None) -> list[tuple[int, float]]:
        """(row, score) of the best `limit` passages for already-sanitised query words; only
        passages of `topic` and among the rows `within`, when given. Ties go to the lower row.

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

        def search(clauses: list[tantivy.Query]) -> list[tuple[int, float]]:
            query = tantivy.Query.boolean_query([(tantivy.Occur.Should, c) for c in clauses])
            if filters:  # filters add the same score to every hit: the order is BM25's
                query = tantivy.Query.boolean_query(
                    [(tantivy.Occur.Must, query)]
                    + [(tantivy.Occur.Must, tantivy.Query.const_score_query(f, 0.0))
                       for f in filters])
            return self._top(query, limit)

        if limit < 1:
            return []
        rare, common = self._term_clauses(words)
        hits = search(rare or common)
        if rare and common and within is None and len(hits) < limit:
            hits = search(rare + common)
        return hits

    def _top(self, query: tantivy.Query, limit: int) -> list[tuple[int, float]]:
        """(row, score) of the query's best `limit` hits, ties to the lower row.

        tantivy breaks ties by segment and document, and which passages an indexing thread
        put in which segment, and the segments' order (by random ids), differ from build to
        build. So when passages tie across the cut, the search is widened until it has all
        of them, and rows decide."""
        wanted = limit + 1
        while True:
            hits = self.searcher.search(query, wanted, count=False).hits
            if len(hits) < wanted or hits[-1][0] < hits[limit - 1][0]:
                break
            wanted *= 2
        rows = self.searcher.fast_field_values("row", [address for _, address in hits])
        return sorted(zip(rows, (score for score, _ in hits)),
                      key=lambda hit: (-hit[1], hit[0]))[:limit]

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
        """Exact nearest passages by cosine, scanning the matrix in blocks; ties go to the
        lower row."""
        if limit < 1:
            return []
        rows = self._topic_rows(topic) if topic else None
        total = len(rows) if rows is not None else len(self)
        best_rows: list[np.ndarray] = []
        best_scores: list[np.ndarray] = []
        for start in range(0, total, 65536):
            block = rows[start : start + 65536] if rows is not None else np.arange(
                start, min(total, start + 65536))
            sims = np.asarray(self.matrix[block], dtype=np.float32) @ vector
            if len(sims) > limit:  # the block's best, and every passage tied with the last
                keep = sims >= np.partition(sims, len(sims) - limit)[len(sims) - limit]
                block, sims = block[keep], sims[keep]
            best_rows.append(block)
            best_scores.append(sims)
        if not best_rows:
            return []
        all_rows, all_scores = np.concatenate(best_rows), np.concatenate(best_scores)
        order = np.lexsort((all_rows, -all_scores))[:limit]
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
