"""The fixed, versioned Arrow schemas of shard and result files (documented in docs/formats.md).

Every stage after the partitioner reads these files, possibly on another machine with another
version of the code, so the schema version travels in the file metadata and is checked on read.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

SHARD_SCHEMA = pa.schema(
    [
        pa.field("passage_id", pa.string(), nullable=False),
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("ordinal", pa.int32(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("authors", pa.list_(pa.field("element", pa.string()))),
        pa.field("year", pa.int32()),
        pa.field("url", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.field("element", pa.int32()))),
    ],
    metadata={"schema": "infer-corpus.shard", "schema_version": str(SCHEMA_VERSION)},
)


def result_schema(dim: int, embedding_dtype: str) -> pa.Schema:
    """Result rows, in the same order as the shard's rows."""
    value_type = pa.float16() if embedding_dtype == "float16" else pa.float32()
    return pa.schema(
        [
            pa.field("passage_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.field("element", value_type), dim), nullable=False),
            pa.field("label", pa.string()),
            pa.field("label_score", pa.float32()),
        ],
        metadata={"schema": "infer-corpus.result", "schema_version": str(SCHEMA_VERSION)},
    )


def check_schema_version(schema: pa.Schema, kind: str, path: str) -> None:
    """Refuse files written by an incompatible version instead of misreading them."""
    meta = schema.metadata or {}
    name = meta.get(b"schema", b"").decode()
    version = meta.get(b"schema_version", b"").decode()
    if name != f"infer-corpus.{kind}" or version != str(SCHEMA_VERSION):
        raise ValueError(
            f"{path}: not an infer-corpus {kind} file of schema version {SCHEMA_VERSION} "
            f"(found {name or 'no schema tag'} version {version or '?'})"
        )
