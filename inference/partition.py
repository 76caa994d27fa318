"""The partitioner: validate, quarantine bad rows, split into passages, dedup, write shards.

It streams its input: memory holds one shard's passages plus the de-duplication tables, which
grow by about 250 bytes per article (about 550 MB for a million articles). Its output is deterministic: the same inputs and
settings give byte-for-byte the same shards and ids, which is what makes restarts safe.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .version import __version__
from .config import InferenceConfig
from .passages import split_passages
from .readers import RawRow, expand_inputs, input_format, read_rows
from .records import Rejected, content_digest, to_article
from .schema import SCHEMA_VERSION, SHARD_SCHEMA
from .tokenize import ShardTokenizer
from .workdir import Workdir, WorkdirError, atomic_path

PARTITION_SECTIONS = ("fields", "passages", "shards")


@dataclass
class PartitionSummary:
    articles: int = 0
    passages: int = 0
    rejected: int = 0
    duplicate_passages: int = 0
    duplicate_articles: int = 0
    shards: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "articles": self.articles,
            "passages": self.passages,
            "rejected": self.rejected,
            "duplicate_passages": self.duplicate_passages,
            "duplicate_articles": self.duplicate_articles,
            "shards": self.shards,
            "reject_reasons": dict(self.reject_reasons),
            "seconds": round(self.seconds, 3),
        }


def fingerprint_inputs(paths: list[Path], previous: list[dict[str, Any]] | None) -> list[dict]:
    """Size, mtime and SHA-256 of each input; an unchanged size+mtime reuses the stored hash."""
    known = {item["path"]: item for item in previous or []}
    prints = []
    for path in paths:
        stat = path.stat()
        key = os.path.abspath(path)
        old = known.get(key)
        if old and old["size"] == stat.st_size and old["mtime_ns"] == stat.st_mtime_ns:
            digest = old["sha256"]
        else:
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        prints.append({"path": key, "format": input_format(path), "size": stat.st_size,
                       "mtime_ns": stat.st_mtime_ns, "sha256": digest})
    return prints


def partition_key(config: InferenceConfig, inputs: list[dict[str, Any]]) -> str:
    """What decides the shards' content: the inputs' bytes (not their paths: the same files
    moved or reinstalled are the same inputs) and the partition settings."""
    tokenizer = ShardTokenizer.identity(config) if config.shards.tokenize else None
    blob = orjson.dumps(
        {"inputs": [(i["format"], i["sha256"]) for i in inputs],
         "config": config.section_hash(*PARTITION_SECTIONS), "tokenizer": tokenizer},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(blob).hexdigest()[:16]


class _ShardWriter:
    """Buffers passages and writes one zstd Parquet shard each time the buffer is full."""

    def __init__(self, workdir: Workdir, size: int, tokenizer: ShardTokenizer | None) -> None:
        self.workdir = workdir
        self.size = size
        self.tokenizer = tokenizer
        self.shards: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in SHARD_SCHEMA.names}
        self.appenders = [self.columns[name].append for name in SHARD_SCHEMA.names[:-1]]

    def add(self, row: tuple) -> None:
        """One passage, its values in SHARD_SCHEMA order (without input_ids)."""
        for column, value in zip(self.appenders, row):
            column(value)
        if len(self.columns["passage_id"]) >= self.size:
            self.flush()

    def flush(self) -> None:
        rows = len(self.columns["passage_id"])
        if not rows:
            return
        if self.tokenizer is not None:
            self.columns["input_ids"] = self.tokenizer.encode(
                self.columns["title"], self.columns["text"]
            ).to_arrow()
        else:
            self.columns["input_ids"] = [None] * rows
        table = pa.Table.from_pydict(self.columns, schema=SHARD_SCHEMA)
        shard = len(self.shards)
        final = self.workdir.shard_path(shard)
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp, compression="zstd", row_group_size=8192)
        self.shards.append({"shard": shard, "file": str(final.relative_to(self.workdir.root)),
                            "rows": rows, "state": "pending"})
        self._reset()


def _clear_outputs(workdir: Workdir) -> None:
    for folder in (workdir.shards_dir, workdir.results_dir, workdir.rejects_dir):
        if folder.exists():
            shutil.rmtree(folder)
    workdir.create()


def partition(
    patterns: list[str],
    workdir: Workdir,
    config: InferenceConfig,
    *,
    force: bool = False,
    progress: bool | None = None,
) -> PartitionSummary:
    """Partition the inputs into `workdir`, or do nothing when it already holds this partition."""
    with workdir.lock():
        return _partition(patterns, workdir, config, force=force, progress=progress)


def _partition(patterns: list[str], workdir: Workdir, config: InferenceConfig, *, force: bool,
               progress: bool | None) -> PartitionSummary:
    started = time.perf_counter()
    paths = expand_inputs(patterns)
    manifest = workdir.manifest() if workdir.has_manifest() else None
    inputs = fingerprint_inputs(paths, manifest.inputs if manifest else None)
    key = partition_key(config, inputs)
    if manifest and manifest.partitioned:
        if manifest.partition_key == key:
            # model settings may change; results check them
            workdir.write_manifest({**manifest.data, "config": config.to_dict()})
            stats = {k: v for k, v in manifest.partition.items() if k != "state"}
            summary = PartitionSummary(**stats)
            summary.skipped = True
            summary.seconds = time.perf_counter() - started
            return summary
        if not force:
            raise WorkdirError(
                f"{workdir.root} already holds a partition of other inputs or settings; "
                "use a new --workdir, or --force to discard it and start over"
            )
    workdir.create()
    # From here until the final manifest, the workdir holds no finished partition.
    workdir.write_manifest({"format": "infer-corpus.manifest", "partition_key": key,
                            "inputs": inputs, "partition": {"state": "running"}, "shards": []})
    _clear_outputs(workdir)
    tokenizer = ShardTokenizer.load(config) if config.shards.tokenize else None
    summary = PartitionSummary()
    reasons: Counter[str] = Counter()
    seen_passages: set[bytes] = set()
    seen_articles: dict[str, bytes] = {}
    writer = _ShardWriter(workdir, config.shards.passages_per_shard, tokenizer)
    p = config.passages
    rejects_path = workdir.rejects_dir / "rejects.jsonl"

    with atomic_path(rejects_path) as rejects_tmp, open(rejects_tmp, "wb") as rejects, tqdm(
        desc="partition", unit=" rows", disable=None if progress is None else not progress,
        mininterval=0.5,
    ) as bar, closing(tokenizer) if tokenizer is not None else nullcontext():

        def reject(row: RawRow, reason: str, detail: str) -> None:
            summary.rejected += 1
            reasons[reason] += 1
            rejects.write(orjson.dumps({"source": row.source, "line": row.line,
                                        "reason": reason, "detail": detail, "raw": row.raw}))
            rejects.write(b"\n")

        for path in paths:
            count = 0
            for count, row in enumerate(read_rows(path), start=1):
                if count % 2048 == 0:
                    bar.update(2048)
                if row.record is None:
                    reject(row, row.reason or "unreadable", row.detail or "")
                    continue
                try:
                    article = to_article(row.record, config.fields, p.max_field_chars)
                except Rejected as exc:
                    row.raw = orjson.dumps(row.record, default=str).decode()[:500]
                    reject(row, exc.reason, exc.detail)
                    continue
                earlier = seen_articles.get(article.article_id)
                if earlier is not None:
                    if earlier == article.digest[:8]:
                        summary.articles += 1
                        summary.duplicate_articles += 1
                        continue
                    row.raw = orjson.dumps(row.record, default=str).decode()[:500]
                    reject(row, "duplicate_id",
                           f"id {article.article_id!r} is already used by another article")
                    continue
                seen_articles[article.article_id] = article.digest[:8]
                summary.articles += 1
                if article.words <= p.max_words:
                    texts = [article.text]  # most abstracts: one passage, or title only
                else:
                    texts = split_passages(article.text, p.min_words, p.max_words)
                for ordinal, text in enumerate(texts):
                    if len(texts) == 1:  # the passage is the article: same digest
                        digest = article.digest[:16]
                    else:
                        digest = content_digest(article.title, text)[:16]
                    if digest in seen_passages:
                        summary.duplicate_passages += 1
                        continue
                    seen_passages.add(digest)
                    summary.passages += 1
                    writer.add((f"{article.article_id}#{ordinal}", article.article_id, ordinal,
                                article.title, text, article.authors, article.year,
                                article.url, article.topic, row.source))
            bar.update(count % 2048)
        writer.flush()
        rejects.flush()

    summary.shards = len(writer.shards)
    summary.reject_reasons = dict(sorted(reasons.items()))
    summary.seconds = time.perf_counter() - started
    workdir.write_manifest({
        "format": "infer-corpus.manifest",
        "schema_version": SCHEMA_VERSION,
        "code_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "partition_key": key,
        "config": config.to_dict(),
        "tokenizer": ShardTokenizer.identity(config) if tokenizer else None,
        "inputs": inputs,
        "partition": {"state": "done", **summary.to_dict()},
        "shards": writer.shards,
    })
    return summary
