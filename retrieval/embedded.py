"""The embedded index: tantivy BM25 (English stemming), a float16 embedding matrix and the
passages' fields in Arrow files, all on disk and memory-mapped for reading.

It lives in the workdir's `index/` folder, built from the shard and result files in pieces:
each piece (`pieces/piece-KEY/`) indexes a run of consecutive shards, and pieces are built in
parallel (processes here, CPU jobs on a pool). A piece is named after its shards' contents and
where its rows start, so adding shards builds pieces for the new ones only. A build
(`embedded-KEY/`) combines its pieces without rewriting them: hard links to their files, and
one tantivy index whose segments are all the pieces' segments. tantivy takes BM25's statistics
(document frequencies, average length) over all segments of an index, so the scores are those
of a single index of all passages, however the pieces were cut.

A build goes to a new folder named after the results it was made from and becomes current by
an atomic rename of a pointer file, so a search never sees a half-built index and loading the
same results twice changes nothing. A reader that opens while a build replaces the one it found
opens the new one. A build's `done` file records its pieces, the passages and the model that
embedded them (see `index_model`): searches embed queries with that model.

Builds are deterministic: passages get rows in the shards' order, whatever the indexing
processes do, and BM25 and dense searches break ties by row, so the same results give the same
rankings and scores.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import tantivy
from tqdm import tqdm

from inference.devices import usable_cpus
from inference.errors import DiskFullError
from inference.manifest import Manifest
from inference.results import result_key
from inference.workdir import Workdir, WorkdirError, write_json_atomic

from .index import Candidates
from .index_model import model_record

POINTER = "current.json"
PIECES = "pieces"
# One indexing thread per piece with up to 1 GB of buffer: a piece of a million passages is
# written as one or two large segments (a query walks every segment's posting lists), and
# several pieces build at once in processes. Buffers grow only as needed.
WRITER_HEAP_BYTES = 1_000_000_000
# A local build cuts the shards it has no piece for into pieces of PIECE_PASSAGES passages at
# most, and into as many pieces as it has worker processes where each still gets at least
# PIECE_MIN_PASSAGES: a process takes seconds to start, and each piece adds segments that
# every query walks.
PIECE_PASSAGES = 1_000_000
PIECE_MIN_PASSAGES = 100_000
# Terms in more than this share of all passages are left out of BM25 queries (see bm25).
COMMON_TERM_SHARE = 0.5
# An index of at least this many passages in several pieces is searched in row spans of whole
# pieces, one thread a span and a core (see _top): measured on 2 cores, BM25 p95 7.9 -> 4.9 ms
# at 1M passages and 76.5 -> 43.5 ms at 10M (docs/benchmarks.md); a smaller index searches in
# a few milliseconds in one thread (the threshold itself is a judgement, not a measurement).
SPLIT_SEARCH_PASSAGES = 500_000
SHARD_COLUMNS = ["passage_id", "article_id", "title", "text", "authors", "year", "url", "topic"]
# How far a passage's half-precision cosine (see EmbeddedIndex.dense) may be from its float32
# one, for unit vectors: the query rounded to float16 moves it by at most 2^-11, the result's
# rounding by 2^-12, and float32 sums of 384 products by about 2^-15; 2.5 times their sum.
HALF_SCORE_ERROR = 2 ** -9
# Rows that `dense` gathers and converts at a time (100 MB as float32 at 384 dimensions).
SCAN_BLOCK_ROWS = 65536
# `dense` reads the read-only memory maps of the embeddings through torch tensors, which warns
# that a tensor could write to them; none does. (A copy-on-write map would silence it, but
# charges the whole matrix to the system's committed memory: 7.4 GB at 10M passages, which a
# machine that does not overcommit refuses.)
warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                        category=UserWarning)
# A reader retries this often when the build it found is replaced while it opens it.
OPEN_ATTEMPTS = 5
# After a failed write, this much room not found in the index's file system means it is full.
ROOM_PROBE_BYTES = 1 << 20
# tantivy's own files in an index folder; the rest are the segments' files
TANTIVY_META = ("meta.json", ".managed.json", ".tantivy-meta.lock", ".tantivy-writer.lock")


def _analyzer() -> tantivy.TextAnalyzer:
    """The `en_stem` analyser the title and text fields are indexed with, for query words."""
    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(40))
            .filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.stemmer("english"))
            .build())


def _schema() -> tantivy.Schema:
    """Only what BM25 and the topic filter need: passage fields live in the passages files."""
    builder = tantivy.SchemaBuilder()
    # term frequencies, no positions: BM25 needs no more, and no query is a phrase
    builder.add_text_field("title", stored=False, tokenizer_name="en_stem", index_option="freq")
    builder.add_text_field("text", stored=False, tokenizer_name="en_stem", index_option="freq")
    builder.add_text_field("topic", stored=False, tokenizer_name="raw", index_option="basic")
    # indexed: `within` filters; fast: hits read their row from a column, not the doc store
    builder.add_integer_field("row", indexed=True, fast=True)
    # -row: a row span's search excludes the rows after it with a range that tantivy finds
    # empty or whole in each segment from the column's bounds (see _top)
    builder.add_integer_field("minus_row", indexed=False, fast=True)
    return builder.build()


@dataclass
class IndexSummary:
    passages: int
    built: bool
    path: str
    seconds: float
    pieces_built: int = 0
    pieces_reused: int = 0


@dataclass
class Piece:
    """Consecutive shards indexed together, as rows first_row .. first_row + rows - 1."""

    shards: list[int]
    first_row: int
    rows: int
    files: list[dict[str, Any]]  # each shard file's name, size, mtime_ns and content digest
    key: str

    @property
    def name(self) -> str:
        return f"piece-{self.key}"


def _index_key(pieces: list[Piece]) -> str:
    """Names a build after the pieces it combines and the index format."""
    blob = json.dumps(["embedded-v7", [piece.key for piece in pieces]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finished_results(workdir: Workdir, shards: list[int] | None = None) -> tuple[Manifest, str]:
    """The manifest and results key of a workdir whose every shard (or every one of `shards`)
    has a current result (what any backend loads); a clear error otherwise."""
    manifest = workdir.manifest().require_partitioned()
    key = manifest.result_key()
    wanted = manifest.shards if shards is None else [manifest.shard(n) for n in shards]
    missing = [e.shard for e in wanted if not workdir.result_is_current(e, key)]
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


def build_index(workdir: Workdir, workers: int = 1,
                progress: bool | None = None) -> IndexSummary:
    """Index every passage of a finished workdir, building the pieces it lacks in `workers`
    processes; a no-op when the index is already current. Holds the workdir's lock, so two
    builds never write one index; readers need none. `progress`: a bar of the passages
    indexed (default: on a terminal)."""
    with workdir.lock(existing=True):
        started = time.perf_counter()
        manifest, _ = finished_results(workdir)
        root = workdir.root / "index"
        pieces = plan_pieces(workdir, manifest, workers)
        name = f"embedded-{_index_key(pieces)}"
        total = manifest.passages
        if _current(root) == name and (root / name / "done").is_file():
            return IndexSummary(total, False, str(root / name), time.perf_counter() - started,
                                pieces_reused=len(pieces))
        target = root / name
        with _room(root, target):
            missing = [p for p in pieces if not (root / PIECES / p.name / "piece.json").is_file()]
            with tqdm(total=sum(p.rows for p in missing), desc="index", unit=" passages",
                      disable=None if progress is None else not progress,
                      mininterval=0.5) as bar:
                _build_pieces(workdir, missing, workers, bar.update)
            _combine(root, pieces, manifest, target)
        write_json_atomic(root / POINTER, {"name": name, "passages": total})
        # the build this one replaces, pieces no longer used, unfinished ones and pointers a
        # killed build left half written (no other writer holds the lock); a reader that was
        # opening a replaced build opens this one instead (see EmbeddedIndex)
        for old in root.glob(f".{POINTER}.tmp-*"):
            old.unlink(missing_ok=True)
        for old in root.glob(".embedded-*.old-*"):
            shutil.rmtree(old, ignore_errors=True)
        for old in root.glob("embedded-*"):
            if old.name != name:
                _remove(old)
        used = {p.name for p in pieces}
        for old in (root / PIECES).glob("*"):
            if old.name not in used:
                shutil.rmtree(old, ignore_errors=True)
        return IndexSummary(total, True, str(target), time.perf_counter() - started,
                            pieces_built=len(missing), pieces_reused=len(pieces) - len(missing))


def build_piece(workdir: Workdir, shards: list[int]) -> IndexSummary:
    """Index shards A..B alone as one piece in index/pieces/ (one job of a parallel build on a
    pool; a later `build_index` combines the pieces). Needs only those shards' files."""
    started = time.perf_counter()
    manifest, _ = finished_results(workdir, shards)
    piece = _piece(manifest, shards, [_file_record(workdir, manifest.shard(n), {})
                                      for n in shards])
    root = workdir.root / "index"
    target = root / PIECES / piece.name
    with _room(root, target):
        _write_piece(workdir.root, piece)
    return IndexSummary(piece.rows, True, str(target), time.perf_counter() - started,
                        pieces_built=1)


def plan_pieces(workdir: Workdir, manifest: Manifest, workers: int) -> list[Piece]:
    """The pieces that make the index of the manifest's shards: every finished piece in
    index/pieces/ that still holds the same shards at the same rows, and new pieces for the
    other shards, cut into at least `workers` pieces of at most PIECE_PASSAGES passages."""
    existing = [_read_json(path) for path in
                sorted((workdir.root / "index" / PIECES).glob("piece-*/piece.json"))]
    known = {(f.get("file"), f.get("size"), f.get("mtime_ns")): f.get("digest")
             for piece in existing for f in piece.get("files", []) if isinstance(f, dict)}
    files = [_file_record(workdir, entry, known) for entry in manifest.shards]
    starts = np.cumsum([0] + [entry.rows for entry in manifest.shards])
    by_row: dict[int, list[dict[str, Any]]] = {}
    for piece in existing:
        by_row.setdefault(piece.get("first_row", -1), []).append(piece)
    pieces: list[Piece] = []
    new: list[int] = []  # shards that no finished piece holds, in order

    def cut_new() -> None:
        rows = sum(manifest.shards[n].rows for n in new)
        size = min(PIECE_PASSAGES, max(PIECE_MIN_PASSAGES, -(-rows // max(1, workers))))
        group: list[int] = []
        held = 0
        for n in new:
            group.append(n)
            held += manifest.shards[n].rows
            if held >= size:
                pieces.append(_piece(manifest, group, [files[m] for m in group]))
                group, held = [], 0
        if group:
            pieces.append(_piece(manifest, group, [files[m] for m in group]))
        new.clear()

    shard = 0
    while shard < len(manifest.shards):
        found = None
        for record in by_row.get(int(starts[shard]), []):
            count = len(record.get("shards", []))
            if count and shard + count <= len(files):
                candidate = _piece(manifest, list(range(shard, shard + count)),
                                   files[shard : shard + count])
                if candidate.key == record.get("key"):
                    found = candidate
                    break
        if found is None:
            new.append(shard)
            shard += 1
            continue
        cut_new()
        pieces.append(found)
        shard += len(found.shards)
    cut_new()
    return pieces


def _piece(manifest: Manifest, shards: list[int], files: list[dict[str, Any]]) -> Piece:
    """The piece of the given consecutive shards, keyed by their files' contents, the
    settings that made their results (model and predictions: the results key of an empty
    partition) and the row it starts at; not by the partition as a whole, so the pieces of
    unchanged shards are reused when other shards are added."""
    first_row = sum(entry.rows for entry in manifest.shards[: shards[0]]) if shards else 0
    settings = result_key("", manifest.config)
    blob = json.dumps(["piece-v2", settings, first_row, [f["digest"] for f in files]])
    return Piece(shards, first_row, sum(manifest.shard(n).rows for n in shards), files,
                 hashlib.sha256(blob.encode()).hexdigest()[:16])


def _file_record(workdir: Workdir, entry: Any,
                 known: dict[tuple[str, int, int], str]) -> dict[str, Any]:
    """A shard file's name, size, mtime and content digest; the digest is taken from `known`
    when a piece recorded it for the same name, size and mtime (shard files are written once,
    atomically), and read from the file otherwise."""
    path = workdir.shard_path(entry.shard)
    stat = path.stat()
    record = {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = known.get((path.name, stat.st_size, stat.st_mtime_ns))
    if not isinstance(digest, str):
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()[:32]
    return {**record, "digest": digest}


def _build_pieces(workdir: Workdir, pieces: list[Piece], workers: int,
                  on_rows: Callable[[int], None]) -> None:
    """Each piece in its own folder under index/pieces/, `workers` at a time in processes;
    `on_rows` hears of the passages indexed, a shard at a time."""
    if workers <= 1 or len(pieces) <= 1:
        for piece in pieces:
            _write_piece(workdir.root, piece, on_rows)
        return
    context = multiprocessing.get_context("fork")  # as the tokenizer pool: no re-imports
    written = context.Value("q", 0)  # passages indexed by all the processes
    reported = 0
    with ProcessPoolExecutor(min(workers, len(pieces)), mp_context=context,
                             initializer=_count_rows_in, initargs=(written,)) as pool:
        pending = {pool.submit(_write_piece, workdir.root, piece, _count_rows)
                   for piece in pieces}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            now = written.value
            on_rows(now - reported)
            reported = now
            for future in done:
                future.result()  # a failed piece fails the build


_written: Any = None  # in an indexing process: the count of passages all of them indexed


def _count_rows_in(written: Any) -> None:
    global _written
    _written = written


def _count_rows(rows: int) -> None:
    with _written.get_lock():
        _written.value += rows


def _write_piece(root: Path, piece: Piece,
                 on_rows: Callable[[int], None] | None = None) -> None:
    """One piece, in a temporary folder renamed into place once every file is synced; its
    `piece.json` records what it holds. `on_rows` hears of each shard's passages as they are
    added."""
    workdir = Workdir(root)
    manifest = workdir.manifest()
    target = root / "index" / PIECES / piece.name
    temporary = target.with_name(f".{piece.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    (temporary / "tantivy").mkdir(parents=True)
    index = tantivy.Index(_schema(), path=str(temporary / "tantivy"))
    writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
    vectors: np.ndarray | None = None
    passages: ipc.RecordBatchFileWriter | None = None
    row = piece.first_row
    shards = manifest.with_shards([manifest.shard(n) for n in piece.shards])
    for table, matrix in read_shards(workdir, shards):
        if vectors is None:
            vectors = _allocated_matrix(temporary / "vectors.npy", (piece.rows, matrix.shape[1]))
            passages = ipc.new_file(str(temporary / "passages.arrow"), table.schema)
        vectors[row - piece.first_row : row - piece.first_row + len(matrix)] = matrix
        passages.write_table(table)
        columns = table.select(["title", "text", "topic"]).to_pydict()
        for i, (title, text, topic) in enumerate(
            zip(columns["title"], columns["text"], columns["topic"])
        ):
            writer.add_document(tantivy.Document(title=title or "", text=text,
                                                 topic=topic or "", row=row + i,
                                                 minus_row=-(row + i)))
        row += len(matrix)
        if on_rows is not None:
            on_rows(len(matrix))
    writer.commit()
    writer.wait_merging_threads()
    if vectors is None:  # shards whose every row was rejected
        np.save(temporary / "vectors.npy", np.zeros((0, 0), dtype=np.float16))
        empty = pa.schema([(column, pa.string()) for column in SHARD_COLUMNS])
        passages = ipc.new_file(str(temporary / "passages.arrow"), empty)
        dimension = None
    else:
        dimension = vectors.shape[1]
        vectors.flush()
        del vectors
    passages.close()
    record = {"key": piece.key, "shards": piece.shards, "first_row": piece.first_row,
              "rows": piece.rows, "files": piece.files, "dimension": dimension}
    (temporary / "piece.json").write_text(json.dumps(record))
    for path in (temporary / "vectors.npy", temporary / "passages.arrow",
                 temporary / "piece.json"):
        _fsync(path)  # tantivy syncs its own files at commit
    shutil.rmtree(target, ignore_errors=True)  # an earlier copy that a job sent back
    os.replace(temporary, target)


def _combine(root: Path, pieces: list[Piece], manifest: Manifest, target: Path) -> None:
    """The build in `target`: links to the pieces' files, one tantivy index over all their
    segments (in the pieces' order), and `done` last."""
    if target.exists():
        shutil.rmtree(target)  # an earlier build of the same results that did not finish
    (target / "tantivy").mkdir(parents=True)
    tantivy.Index(_schema(), path=str(target / "tantivy"))  # an empty index: its meta.json
    meta = _read_json(target / "tantivy" / "meta.json")
    segments = []
    for piece in pieces:
        folder = root / PIECES / piece.name
        for path in (folder / "tantivy").iterdir():
            if path.name not in TANTIVY_META:
                _link(path, target / "tantivy" / path.name)
        segments += _read_json(folder / "tantivy" / "meta.json")["segments"]
    held = [piece for piece in pieces if piece.rows]  # not those whose every row was rejected
    for number, piece in enumerate(held):
        folder = root / PIECES / piece.name
        _link(folder / "vectors.npy", target / f"vectors-{number:05d}.npy")
        _link(folder / "passages.arrow", target / f"passages-{number:05d}.arrow")
    dimension = _read_json(root / PIECES / held[0].name / "piece.json")["dimension"] \
        if held else None
    write_json_atomic(target / "tantivy" / "meta.json", {**meta, "segments": segments})
    done = {"passages": manifest.passages,
            "model": model_record(manifest.config.model, dimension),
            "pieces": [{"name": p.name, "rows": p.rows} for p in held]}
    write_json_atomic(target / "done", done)


def _remove(folder: Path) -> None:
    """Renamed away first, then deleted: a reader opening it meanwhile fails at once and opens
    the current build instead, and cannot put tantivy's lock file back into a folder that is
    being deleted (which would leave it behind)."""
    hidden = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _link(source: Path, target: Path) -> None:
    """A hard link (no copy of the data), or a copy where the file system has none."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@contextmanager
def _room(root: Path, target: Path) -> Iterator[None]:
    """A write into `target` that fails for want of room gives the room back and says so."""
    try:
        yield
    except (OSError, ValueError) as exc:  # tantivy says only ValueError("... io::Error")
        if not (DiskFullError.caused(exc) or _out_of_room(root)):
            raise
        shutil.rmtree(target, ignore_errors=True)
        for partial in root.glob(f"{PIECES}/.piece-*.tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)
        raise DiskFullError.writing(f"the index {target}") from None


def _current(root: Path) -> str | None:
    """The name of the build the pointer file names."""
    return _read_json(root / POINTER).get("name")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def _has_field(schema: tantivy.Schema, name: str) -> bool:
    """Whether the schema has the integer field `name` (tantivy's Python schema lists none)."""
    try:
        tantivy.Query.range_query(schema, name, tantivy.FieldType.Integer, 0, 0)
    except ValueError:
        return False
    return True


def _spans(starts: np.ndarray, ways: int) -> list[tuple[int, int]]:
    """Row spans [first, end) that cover every row, each of whole pieces (`starts`: where
    each piece's rows start, then the row count), `ways` at most and of about equal size; one
    span for an index under SPLIT_SEARCH_PASSAGES passages."""
    total = int(starts[-1])
    if ways < 2 or total < SPLIT_SEARCH_PASSAGES:
        return [(0, total)]
    cuts = {int(starts[np.argmin(np.abs(starts - total * share / ways))])
            for share in range(1, ways)}
    bounds = sorted(cuts | {0, total})
    return list(zip(bounds[:-1], bounds[1:]))


class EmbeddedIndex:
    """Read side: BM25 candidates from tantivy (one index over every piece's segments),
    embeddings from the pieces' memory-mapped matrices. Passages are keyed by their row: the
    pieces' rows one after another."""

    def __init__(self, workdir: Workdir) -> None:
        root = workdir.root / "index"
        for _ in range(OPEN_ATTEMPTS):
            name = _current(root)
            if not name:
                break
            try:
                self._open(root / name)
                return
            except (OSError, ValueError, KeyError):
                if _current(root) == name:  # not replaced under us: damaged
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
        count = len(done["pieces"])
        self.matrices = [np.load(path / f"vectors-{n:05d}.npy", mmap_mode="r")
                         for n in range(count)]
        self.starts = np.cumsum([0] + [len(matrix) for matrix in self.matrices])
        tables = [ipc.open_file(pa.memory_map(str(path / f"passages-{n:05d}.arrow"))).read_all()
                  for n in range(count)]
        self.passages = pa.concat_tables(tables) if tables else pa.table(
            {column: pa.array([], pa.string()) for column in SHARD_COLUMNS})
        self.model = done.get("model")
        # an index built before `minus_row` existed is searched in one thread (rebuilding
        # it with `infer-corpus index` gives it the field)
        self.spans = _spans(self.starts, usable_cpus() if _has_field(self.index.schema,
                                                                     "minus_row") else 1)
        self._threads = ThreadPoolExecutor(len(self.spans) - 1, thread_name_prefix="bm25-span"
                                           ) if len(self.spans) > 1 else None

    def model_record(self) -> dict[str, Any] | None:
        """The model that embedded the passages, as the build recorded it."""
        return self.model

    def __len__(self) -> int:
        return int(self.starts[-1])

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The float16 embeddings of the given rows, in their order (read from the pieces'
        memory-mapped matrices)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.matrices) == 1:
            return self.matrices[0][rows]
        piece = np.searchsorted(self.starts, rows, side="right") - 1
        found = np.empty((len(rows), self.matrices[0].shape[1] if self.matrices else 0),
                         dtype=np.float16)
        for number in np.unique(piece):
            mask = piece == number
            found[mask] = self.matrices[number][rows[mask] - self.starts[number]]
        return found

    def bm25(self, words: str, limit: int, topic: str | None = None,
             within: list[int] | None = None) -> list[tuple[int, float]]:
        """(row, score) of the best `limit` passages for already-sanitised query words; only
        passages of `topic` and among the rows `within`, when given. Ties go to the lower row.

        Terms found in over COMMON_TERM_SHARE of all passages are left out when the others
        find `limit` passages (or when scoring given rows): such terms weigh almost nothing
        in BM25 (idf < 0.7, against 5-10 for a rare word) but have the longest posting lists,
        and tantivy's Python binding always collects hits through a multi-collector, which
        turns off the block-max WAND pruning that would skip them; they would set the
        search's speed. When the rest find fewer passages, all terms are searched,
        so no passage that matches a query word goes missing from a short list.
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

        def search(terms: list[tantivy.Query]) -> list[tuple[int, float]]:
            clauses = [(tantivy.Occur.Should, term) for term in terms]
            if filters:  # filters add the same score to every hit: the order is BM25's
                clauses = [(tantivy.Occur.Must, tantivy.Query.boolean_query(clauses))] + [
                    (tantivy.Occur.Must, tantivy.Query.const_score_query(f, 0.0))
                    for f in filters]
            return self._top(clauses, limit, split=within is None)

        if limit < 1:
            return []
        rare, common = self._term_clauses(words)
        hits = search(rare or common)
        if rare and common and within is None and len(hits) < limit:
            hits = search(rare + common)
        return hits

    def _top(self, clauses: list[tuple[tantivy.Occur, tantivy.Query]], limit: int,
             split: bool = True) -> list[tuple[int, float]]:
        """(row, score) of the best `limit` hits of the boolean query of `clauses`, ties to
        the lower row.

        `split`: search the index's row spans (`spans`) at once, in threads. tantivy walks
        an index's segments one after another in one thread, and scoring every posting of
        the query's terms is what a search costs (tantivy's Python binding collects hits
        through a multi-collector, which turns off tantivy's top-k pruning). Each thread
        searches the whole index, with the BM25 statistics of the whole index, for the
        query's clauses and two more that exclude the rows before and after its span, made
        of whole pieces: rows < first as `row` <= first - 1, rows >= end as `minus_row` <=
        -end. tantivy reads from a segment's column bounds that such a range matches none
        of its rows (the clause is dropped: the segment is scored as by the query alone,
        in tantivy's fastest loop) or all of them (the segment is skipped), so each thread
        walks its own segments' postings only, as fast as one search walks them. (A `Must`
        range to the span would wrap the query in an intersection, which cost 36% more.)
        The spans' best hits, merged, are the index's."""
        if not split or len(self.spans) == 1:
            return self._top_of(tantivy.Query.boolean_query(clauses), limit)
        schema, integer, last = self.index.schema, tantivy.FieldType.Integer, len(self) - 1

        def in_span(span: tuple[int, int]) -> list[tuple[int, float]]:
            first, end = span
            excluded = ([tantivy.Query.range_query(schema, "row", integer, 0, first - 1)]
                        if first > 0 else [])
            if end <= last:
                excluded.append(tantivy.Query.range_query(schema, "minus_row", integer,
                                                          -last, -end))
            return self._top_of(tantivy.Query.boolean_query(
                clauses + [(tantivy.Occur.MustNot, q) for q in excluded]), limit)

        others = [self._threads.submit(in_span, span) for span in self.spans[1:]]
        hits = in_span(self.spans[0]) + [hit for other in others for hit in other.result()]
        return sorted(hits, key=lambda hit: (-hit[1], hit[0]))[:limit]

    def _top_of(self, query: tantivy.Query, limit: int) -> list[tuple[int, float]]:
        """`_top` in one search. tantivy breaks ties by segment and document, and which
        passages an indexing thread put in which segment, and the segments' order (by random
        ids), differ from build to build. So when passages tie across the cut, the search is
        widened until it has all of them, and rows decide. Ties at the cut are common (BM25
        over small term counts and fieldnorms in 256 buckets): asking for one hit more than
        `limit`, 46 of 200 top-100 searches at 10M passages searched again; asking for
        2 * limit + 16, none did, and the screening's p95 fell 7-14% (docs/benchmarks.md)."""
        wanted = 2 * limit + 16
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
        return Candidates.of(found, self.vectors(rows))

    def dense(self, vector: np.ndarray, limit: int,
              topic: str | None = None) -> list[tuple[int, float]]:
        """Exact nearest passages by cosine; ties go to the lower row.

        Every passage is first scored in half precision by torch's float16 matrix-vector
        kernel, which reads the memory-mapped matrices as they are: 10M passages in 0.36 s
        (p50) on 2 cores, where numpy's float32 scan, converting each block first, took 9 s
        (docs/benchmarks.md). Those within twice HALF_SCORE_ERROR of the `limit`-th best
        are then scored again in float32, so the ranking and scores are the exact scan's."""
        if limit < 1:
            return []
        import torch  # loaded on the first dense search only

        query = torch.from_numpy(np.asarray(vector, dtype=np.float16))
        rows = self._topic_rows(topic) if topic else None
        if rows is None:
            parts = [torch.mv(torch.from_numpy(matrix), query) for matrix in self.matrices]
        else:  # the topic's rows, gathered a block at a time
            blocks = (rows[start : start + SCAN_BLOCK_ROWS]
                      for start in range(0, len(rows), SCAN_BLOCK_ROWS))
            parts = [torch.mv(torch.from_numpy(self.vectors(block)), query) for block in blocks]
        if not sum(len(part) for part in parts):
            return []
        rough = torch.cat(parts).numpy().astype(np.float32)
        error = HALF_SCORE_ERROR * max(1.0, float(np.linalg.norm(vector)))
        if len(rough) > limit:
            floor = np.partition(rough, len(rough) - limit)[len(rough) - limit]
            kept = np.flatnonzero(rough >= floor - 2 * error)
        else:
            kept = np.arange(len(rough))
        if rows is not None:
            kept = rows[kept]
        # in blocks: near-duplicate passages can put very many near the cut
        query32 = np.asarray(vector, dtype=np.float32)
        best_rows: list[np.ndarray] = []
        best_scores: list[np.ndarray] = []
        for start in range(0, len(kept), SCAN_BLOCK_ROWS):
            block = kept[start : start + SCAN_BLOCK_ROWS]
            # einsum, not `@`: a row's score is the same whichever rows it is scored with
            sims = np.einsum("ij,j->i", self.vectors(block).astype(np.float32), query32)
            if len(sims) > limit:  # the block's best, and every passage tied with the last
                keep = sims >= np.partition(sims, len(sims) - limit)[len(sims) - limit]
                block, sims = block[keep], sims[keep]
            best_rows.append(block)
            best_scores.append(sims)
        found, scores = np.concatenate(best_rows), np.concatenate(best_scores)
        order = np.lexsort((found, -scores))[:limit]
        return [(int(found[i]), float(scores[i])) for i in order]

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
