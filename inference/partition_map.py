"""The partition's map and write steps: what one process (or one CPU job) does for one part.

`map_part` validates a part's rows, quarantines bad ones, splits articles into passages and
writes every candidate passage with the keys the merge decides on (see `dedup`): each
article's id hash and content digest, each passage's content digest. It drops nothing
itself, since whether a copy is the first one depends on the parts before it.

`write_part` applies the merge's decisions to a mapped part: it writes the kept passages as
shards, numbered from the part's first shard, and the part's rejects ledger (the map's rejects
and the articles refused for reusing an id), in line order.

A part's output is a folder that appears whole (written under a temporary name, then renamed):
a map or write killed mid-way leaves nothing that looks finished, and is simply run again.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .config import InferenceConfig
from .errors import DiskFullError, UsageError
from .parts import Part, read_sha256
from .passages import split_passages
from .readers import RawRow, read_rows
from .records import Rejected, content_digest, to_article
from .schema import SHARD_SCHEMA
from .tokenize import ShardTokenizer
from .workdir import atomic_path, write_json_atomic

BATCH_ROWS = 8192
DONE = "done.json"
CANDIDATES_SCHEMA = pa.schema([*list(SHARD_SCHEMA)[:-1], pa.field("article", pa.int32())])
ARTICLES_SCHEMA = pa.schema([("line", pa.int64()), ("article_id", pa.string()),
                             ("raw", pa.string())])


class PartChanged(UsageError):
    """A part's input is not the one the plan was made from."""


def part_name(index: int) -> str:
    return f"part-{index:05d}"


@contextmanager
def _folder(final: Path) -> Iterator[Path]:
    """A folder that appears under its final name only when the block completes. A full
    disk while it is written is one DiskFullError naming it (the folder is removed)."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as exc:
        if DiskFullError.caused(exc):
            raise DiskFullError.writing(str(final)) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _preview(record: dict[str, Any]) -> str:
    return orjson.dumps(record, default=str).decode()[:500]


def _id_hash(article_id: str) -> bytes:
    return hashlib.blake2b(article_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def map_part(part: Part, config: InferenceConfig, out: Path, *, input_path: Path | None = None,
             on_rows: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Map one part into the folder `out` (see the module docstring); returns its counts.
    `input_path`: where the part's bytes are, when not at `part.path` (a job's copy)."""
    path = Path(input_path or part.path)
    if read_sha256(part, input_path) != part.sha256:
        raise PartChanged(f"{part.source} changed since the partition was planned (part "
                          f"{part.index}): run the partition again")
    p = config.passages
    counts: Counter[str] = Counter()
    rows = 0
    article_ids: list[bytes] = []
    article_digests: list[bytes] = []
    passage_digests: list[bytes] = []
    passage_articles: list[int] = []
    with _folder(out) as tmp, open(tmp / "rejects.jsonl", "wb") as rejects, \
            pq.ParquetWriter(tmp / "passages.parquet", CANDIDATES_SCHEMA,
                             compression="zstd") as passages, \
            pq.ParquetWriter(tmp / "articles.parquet", ARTICLES_SCHEMA,
                             compression="zstd") as articles:
        columns: dict[str, list[Any]] = {name: [] for name in CANDIDATES_SCHEMA.names}
        appenders = [columns[name].append for name in CANDIDATES_SCHEMA.names]
        article_rows: dict[str, list[Any]] = {name: [] for name in ARTICLES_SCHEMA.names}

        def flush() -> None:
            if columns["passage_id"]:
                passages.write_table(pa.Table.from_pydict(columns, schema=CANDIDATES_SCHEMA))
                for values in columns.values():
                    values.clear()
            if article_rows["line"]:
                articles.write_table(pa.Table.from_pydict(article_rows, schema=ARTICLES_SCHEMA))
                for values in article_rows.values():
                    values.clear()

        def reject(row: RawRow, reason: str, detail: str) -> None:
            counts[reason] += 1
            rejects.write(orjson.dumps({"source": part.source, "line": row.line,
                                        "reason": reason, "detail": detail, "raw": row.raw}))
            rejects.write(b"\n")

        for row in read_rows(path, part.span, max_line_bytes=p.max_line_bytes):
            rows += 1
            if on_rows is not None and rows % 2048 == 0:
                on_rows(2048)
            if row.record is None:
                reject(row, row.reason or "unreadable", row.detail or "")
                continue
            try:
                article = to_article(row.record, config.fields, p.max_field_chars)
            except Rejected as exc:
                row.raw = _preview(row.record)
                reject(row, exc.reason, exc.detail)
                continue
            number = len(article_ids)
            article_ids.append(_id_hash(article.article_id))
            article_digests.append(article.digest[:8])
            article_rows["line"].append(row.line)
            article_rows["article_id"].append(article.article_id)
            article_rows["raw"].append(_preview(row.record))
            if article.words <= p.max_words:
                texts = [article.text]  # most abstracts: one passage, or title only
            else:
                texts = split_passages(article.text, p.min_words, p.max_words)
            for ordinal, text in enumerate(texts):
                if len(texts) == 1:  # the passage is the article: same digest
                    passage_digests.append(article.digest[:16])
                else:
                    passage_digests.append(content_digest(article.title, text)[:16])
                passage_articles.append(number)
                for column, value in zip(appenders, (
                        f"{article.article_id}#{ordinal}", article.article_id, ordinal,
                        article.title, text, article.authors, article.year, article.url,
                        article.topic, part.source, number)):
                    column(value)
            if len(columns["passage_id"]) >= BATCH_ROWS:
                flush()
        flush()
        if on_rows is not None:
            on_rows(rows % 2048)
        np.savez(tmp / "keys.npz",
                 article_ids=_words(article_ids, 2), article_digests=_words(article_digests, 1),
                 passage_digests=_words(passage_digests, 2),
                 passage_articles=np.array(passage_articles, dtype=np.int32))
        summary = {"part": part.index, "sha256": part.sha256, "rows": rows,
                   "articles": len(article_ids), "passages": len(passage_digests),
                   "rejected": sum(counts.values()), "reject_reasons": dict(counts)}
        write_json_atomic(tmp / DONE, summary)
    return summary


def _words(values: list[bytes], width: int) -> np.ndarray:
    """Digests as rows of big-endian uint64 words (so they sort as the bytes do)."""
    return np.frombuffer(b"".join(values), dtype=">u8").astype(np.uint64).reshape(-1, width)


def write_part(part: Part, mapped: Path, decisions: Path, config: InferenceConfig,
               shards_dir: Path, first_shard: int, ledger: Path, *,
               tokenizer: ShardTokenizer | None = None) -> list[dict[str, Any]]:
    """Write a mapped part's kept passages as shards `first_shard`, ... into `shards_dir` and
    its rejects to `ledger`; returns the shards' manifest entries (file: the name in
    `shards_dir`)."""
    decided = np.load(decisions)
    keep, clashes = decided["keep"], decided["clashes"]
    size = config.shards.passages_per_shard
    shards: list[dict[str, Any]] = []
    own = tokenizer is None and config.shards.tokenize
    with closing(ShardTokenizer.load(config, 0)) if own else nullcontext(tokenizer) as tok, \
            ExitStack() as shard:
        writer: pq.ParquetWriter | None = None
        done = 0
        for batch in pq.ParquetFile(mapped / "passages.parquet").iter_batches(BATCH_ROWS):
            mask = keep[done : done + len(batch)]
            done += len(batch)
            table = pa.Table.from_batches([batch]).filter(pa.array(mask))
            while len(table):
                if writer is None:  # the next shard: its file appears when it is full
                    number = first_shard + len(shards)
                    final = shards_dir / f"shard-{number:05d}.parquet"
                    tmp = shard.enter_context(atomic_path(final))
                    writer = shard.enter_context(pq.ParquetWriter(tmp, SHARD_SCHEMA,
                                                                  compression="zstd"))
                    shards.append({"shard": number, "file": final.name, "rows": 0,
                                   "state": "pending"})
                take = table.slice(0, size - shards[-1]["rows"])
                table = table.slice(len(take))
                writer.write_table(_shard_rows(take, tok), row_group_size=BATCH_ROWS)
                shards[-1]["rows"] += len(take)
                if shards[-1]["rows"] == size:
                    shard.close()  # the writer, then the atomic rename
                    writer = None
    if done != len(keep):
        raise ValueError(f"{mapped}: {done} passages, the merge decided on {len(keep)}")
    _write_ledger(part, mapped, clashes, ledger)
    return shards


def _shard_rows(table: pa.Table, tokenizer: ShardTokenizer | None) -> pa.Table:
    table = table.drop_columns(["article"])
    if tokenizer is not None:
        ids = tokenizer.encode(table.column("title").to_pylist(),
                               table.column("text").to_pylist()).to_arrow()
    else:
        ids = pa.nulls(len(table), SHARD_SCHEMA.field("input_ids").type)
    return table.append_column(SHARD_SCHEMA.field("input_ids"), ids).cast(SHARD_SCHEMA)


def _write_ledger(part: Part, mapped: Path, clashes: np.ndarray, target: Path) -> None:
    """The part's rejects in line order: the map's, and each article whose id an earlier,
    different article holds."""
    def mapped_rejects() -> Iterator[tuple[int, bytes]]:
        with open(mapped / "rejects.jsonl", "rb") as lines:
            for line in lines:
                yield orjson.loads(line)["line"], line

    def id_clashes() -> Iterator[tuple[int, bytes]]:
        articles = pq.read_table(mapped / "articles.parquet").take(pa.array(clashes))
        for line, article_id, raw in zip(*(articles.column(n).to_pylist()
                                           for n in ARTICLES_SCHEMA.names)):
            yield line, orjson.dumps({
                "source": part.source, "line": line, "reason": "duplicate_id",
                "detail": f"id {article_id!r} is already used by another article",
                "raw": raw}) + b"\n"

    with atomic_path(target) as tmp, open(tmp, "wb") as ledger:
        if not len(clashes):
            with open(mapped / "rejects.jsonl", "rb") as rejects:
                shutil.copyfileobj(rejects, ledger)
            return
        for _, record in heapq.merge(mapped_rejects(), id_clashes(), key=lambda r: r[0]):
            ledger.write(record)
