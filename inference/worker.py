"""The shard worker: shard file in, result file out. This is what one HTCondor job runs.

A result file appears atomically and records which partition and model settings made it, so a
worker killed at any moment and started again redoes exactly the unfinished shard, and a
finished shard is never recomputed unless the settings that shaped it changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import InferenceConfig
from .schema import check_schema_version, result_schema
from .text import embedding_text
from .tokenize import ShardTokenizer, TokenIds
from .version import __version__
from .workdir import ShardEntry, Workdir, WorkdirError, atomic_path

Event = Callable[[dict[str, Any]], None]
log = logging.getLogger(__name__)


@dataclass
class ShardOutcome:
    shard: int
    rows: int
    skipped: bool
    seconds: float


def _remove_stale_temporaries(workdir: Workdir, shard: int) -> None:
    """Drop half-written results left by a worker that was killed."""
    for tmp in workdir.results_dir.glob(f".shard-{shard:05d}.parquet.tmp-*"):
        pid = int(tmp.name.rsplit("-", 1)[-1]) if tmp.name.rsplit("-", 1)[-1].isdigit() else 0
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ShardWorker:
    """Holds the model between shards so that one process can run many shards."""

    def __init__(self, workdir: Workdir, config: InferenceConfig | None = None,
                 threads: int = 0, on_event: Event | None = None) -> None:
        self.workdir = workdir
        self.manifest = workdir.manifest().require_partitioned()
        self.config = config or self.manifest.config
        self.key = self.manifest.result_key(self.config)
        self.threads = threads
        self.on_event = on_event or (lambda event: None)
        self._encoder = None
        self._predictor = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="result-writer")
        self._pending: Future | None = None

    def _models(self):  # type: ignore[no-untyped-def]
        if self._encoder is None:
            import torch

            from .embed import Encoder
            from .predict import make_predictor

            if self.threads:
                torch.set_num_threads(self.threads)
            self._encoder = Encoder(self.config.model)
            self._predictor = make_predictor(self.config.predictions, self._encoder)
            self.on_event({"event": "ready"})
        return self._encoder, self._predictor

    def shard_entry(self, shard: int) -> ShardEntry:
        return self.manifest.shard(shard)

    def run(self, shard: int, table: pa.Table | None = None) -> ShardOutcome:
        """Compute one shard, read from its file or given as `table` (rows a caller already
        holds, e.g. read through a federation); its result file is written in the background
        (see `wait`)."""
        started = time.perf_counter()
        entry = self.shard_entry(shard)
        if self.workdir.result_is_current(entry, self.key):
            self.on_event({"event": "done", "shard": shard, "rows": entry.rows,
                           "skipped": True})
            return ShardOutcome(shard, entry.rows, True, time.perf_counter() - started)
        _remove_stale_temporaries(self.workdir, shard)
        encoder, predictor = self._models()
        table = self._read(shard, entry, table)
        tokens = self._token_ids(table)
        texts = None
        if tokens is None or predictor.needs_text:
            texts = [embedding_text(t, x) for t, x in
                     zip(table.column("title").to_pylist(), table.column("text").to_pylist())]

        def progress(count: int) -> None:
            self.on_event({"event": "progress", "shard": shard, "passages": count})

        if tokens is None:  # tokenized while the model runs
            embeddings = encoder.encode_texts(texts, progress=progress)
        else:
            embeddings = encoder.encode(tokens, progress=progress)
        labels, scores = predictor.predict(texts or [None] * table.num_rows, embeddings)
        self.wait()  # one result file in flight at a time
        self._pending = self._writer.submit(
            self._write, shard, table.column("passage_id"), embeddings, labels, scores)
        return ShardOutcome(shard, table.num_rows, False, time.perf_counter() - started)

    def wait(self) -> None:
        """Block until the last result file is on disk (re-raising a failed write)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _read(self, shard: int, entry: ShardEntry, given: pa.Table | None) -> pa.Table:
        """Only the columns this run needs: text is skipped when token ids can be used."""
        path = self.workdir.shard_path(shard)
        columns = ["passage_id", "input_ids"]
        try:
            schema = pq.read_schema(path) if given is None else given.schema
            check_schema_version(schema, "shard", str(path))
            if not self._can_use_stored_ids() or self._predictor.needs_text:
                columns += ["title", "text"]
            table = (pq.read_table(path, columns=columns) if given is None
                     else given.select(columns).combine_chunks())
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            raise WorkdirError(f"cannot read shard {path}: {exc}") from None
        if table.num_rows != entry.rows:
            raise WorkdirError(f"{path} has {table.num_rows} rows, manifest says {entry.rows}")
        return table

    def _can_use_stored_ids(self) -> bool:
        stored = self.manifest.tokenizer
        return stored is not None and stored == ShardTokenizer.identity(self.config)

    def _token_ids(self, table: pa.Table) -> TokenIds | None:
        """Token ids stored in the shard, when they came from this model's tokenizer."""
        if not self._can_use_stored_ids() or table.column("input_ids").null_count:
            return None
        return TokenIds.from_arrow(table.column("input_ids"))

    def _write(self, shard: int, passage_ids: pa.ChunkedArray, embeddings: np.ndarray,
               labels: list[str | None], scores: np.ndarray) -> None:
        m = self.config.model
        dim = embeddings.shape[1]
        value_dtype = np.float16 if m.embedding_dtype == "float16" else np.float32
        flat = pa.array(embeddings.astype(value_dtype).reshape(-1))
        schema = result_schema(dim, m.embedding_dtype)
        schema = schema.with_metadata({
            **schema.metadata,
            b"result_key": self.key.encode(),
            b"model": m.name.encode(),
            b"predictions": self.config.predictions.kind.encode(),
            b"code_version": __version__.encode(),
        })
        table = pa.table(
            [
                passage_ids,
                pa.FixedSizeListArray.from_arrays(flat, type=schema.field("embedding").type),
                pa.array(labels, pa.string()),
                pa.array(scores, pa.float32()),
            ],
            schema=schema,
        )
        with atomic_path(self.workdir.result_path(shard)) as tmp:
            # float16 embeddings barely compress: skip zstd for them, keep it for the rest
            pq.write_table(table, tmp, compression={"passage_id": "zstd", "embedding": "none",
                                                    "label": "zstd", "label_score": "zstd"})
        self.on_event({"event": "done", "shard": shard, "rows": table.num_rows,
                       "skipped": False})


def run_shards(workdir: Workdir, shards: list[int], *, threads: int = 0,
               on_event: Event | None = None) -> list[ShardOutcome]:
    """Run the given shards one after the other in this process."""
    worker = ShardWorker(workdir, threads=threads, on_event=on_event)
    for shard in shards:
        worker.shard_entry(shard)  # fail on a bad shard number before any work
    outcomes, errors = [], []
    for shard in shards:
        try:
            outcomes.append(worker.run(shard))
        except WorkdirError as exc:  # a damaged shard: finish the others, then report it
            log.error("shard %d failed: %s", shard, exc)
            errors.append(exc)
    worker.wait()
    if errors:
        raise errors[0]
    return outcomes
