"""The result contract: which settings shaped a shard's result file, and whether it is current.

A result file records its `result_key` in the Arrow schema metadata; a result counts as done
only when that key matches the workdir's current settings and its row count matches the
manifest's shard. Everything that reads results (the executor, `status`, the index loaders,
the HTCondor POST check, the training data reader) asks here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .config import InferenceConfig


def result_key(partition_key: str, config: InferenceConfig) -> str:
    """What decides a result's content: the partition, the model and the predictions.
    (`Manifest.result_key()` gives the key of a workdir's current settings.)"""
    m = config.model
    parts = (partition_key, m.name, m.max_seq_length, m.embedding_dtype,
             config.section_hash("predictions"))
    head = _head_digest(config)
    blob = repr(parts + (head,) if head else parts)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _head_digest(config: InferenceConfig) -> str:
    """A trained head's content: retraining it to the same path must redo the predictions."""
    if config.predictions.kind != "head" or not config.predictions.model:
        return ""
    try:
        return hashlib.sha256(Path(config.predictions.model).read_bytes()).hexdigest()
    except OSError:
        return "missing"  # the worker reports the missing file when it loads the head


def stored_key(schema: pa.Schema) -> str | None:
    """The result key a result file's schema was written with (None: it records none)."""
    key = (schema.metadata or {}).get(b"result_key")
    return key.decode() if key is not None else None


def result_is_current(path: Path, rows: int, key: str) -> bool:
    """The result file exists, was made with `key` and holds all `rows` of its shard.
    (`Workdir.result_is_current(entry, key)` asks this of a shard's result.)"""
    if not path.is_file():
        return False
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return False
    return stored_key(meta.schema.to_arrow_schema()) == key and meta.num_rows == rows
