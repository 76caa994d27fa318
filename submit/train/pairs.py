"""Training pairs (query, positive passage) for fine-tuning the embedding model, from a workdir.

The passages of a partitioned workdir's shards give the pairs, by one source:

- `title`: the article's title is the query for each of its passages (passages of an article
  without a title give none);
- `ict` (inverse cloze): one sentence of the passage is the query and the rest of the passage
  the positive; which sentence is drawn from a seeded hash of the passage id, so the same
  pairs come out on every run. Passages of one sentence give none.

Pairs are held out for validation by a hash of the article id, so no article is on both sides.
A cap (`max_pairs`) keeps the pairs whose seeded hash of the passage id is smallest: a choice
that does not depend on the order of shards or rows. `save_pairs` writes them to one Parquet
file (schema `infer-corpus.pairs`), which an embedder trial reads with `load_pairs`.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from inference.passages import split_sentences
from inference.workdir import Workdir, atomic_path

from . import TrainError
from .data import held_out

PAIRS = "pairs.parquet"  # in the sweep directory
SCHEMA, VERSION = "infer-corpus.pairs", "1"  # in the file's schema metadata
SOURCES = ("title", "ict")
COLUMNS = ("query", "positive", "article_id", "validation")
Pair = tuple[str, str, str, bool]  # query, positive, article id, validation


def _draw(seed: int, purpose: str, key: str) -> int:
    """A stable 64-bit number for `key`: the same seed gives the same choices on every run."""
    digest = hashlib.sha256(f"{seed}\0{purpose}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def ict_pair(passage_id: str, text: str, seed: int) -> tuple[str, str] | None:
    """One sentence of `text` as the query, the others as the positive; None for one sentence."""
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return None
    pick = _draw(seed, "ict", passage_id) % len(sentences)
    return sentences[pick], " ".join(sentences[:pick] + sentences[pick + 1:])


def _passage_pairs(workdir: Workdir, source: str, val_fraction: float,
                   seed: int) -> Iterator[tuple[int, Pair]]:
    """Each pair with its draw (for the cap), shard by shard, one shard in memory at a time."""
    manifest = workdir.manifest().require_partitioned()
    for entry in manifest.shards:
        table = pq.read_table(workdir.shard_path(entry.shard),
                              columns=["passage_id", "article_id", "title", "text"])
        for pid, article, title, text in zip(*(table.column(n).to_pylist()
                                               for n in table.column_names)):
            if source == "title":
                pair = (title.strip(), text) if title and title.strip() else None
            else:
                pair = ict_pair(pid, text, seed)
            if pair is not None:
                yield _draw(seed, "cap", pid), (*pair, article, held_out(article, val_fraction))


def make_pairs(workdir: str | Path, source: str, val_fraction: float = 0.1,
               max_pairs: int = 0, seed: int = 0) -> pa.Table:
    """The pairs of one source from a partitioned workdir, at most `max_pairs` (0: all)."""
    where = Workdir(workdir)
    if source not in SOURCES:
        raise TrainError(f"pair source must be one of {', '.join(SOURCES)}, got {source!r}")
    if not 0.0 < val_fraction < 1.0:
        raise TrainError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    if max_pairs < 0:
        raise TrainError(f"max_pairs must be >= 0 (0: no cap), got {max_pairs!r}")
    drawn = _passage_pairs(where, source, val_fraction, seed)
    if max_pairs:
        chosen = [pair for _, pair in sorted(heapq.nsmallest(max_pairs, drawn))]
    else:
        chosen = [pair for _, pair in drawn]
    if not chosen:
        why = "no passage has a title" if source == "title" else "no passage has two sentences"
        raise TrainError(f"{where.root}: no {source} pairs: {why}")
    validation = sum(pair[3] for pair in chosen)
    if validation in (0, len(chosen)):
        raise TrainError(f"{where.root}: too few {source} pairs ({len(chosen)}) to hold out "
                         f"{val_fraction:.0%} of the articles for validation")
    columns = list(zip(*chosen))
    return pa.Table.from_arrays([pa.array(column, pa.bool_() if name == "validation" else
                                          pa.string()) for name, column in zip(COLUMNS, columns)],
                                schema=pairs_schema(source))


def pairs_schema(source: str) -> pa.Schema:
    return pa.schema([pa.field("query", pa.string(), nullable=False),
                      pa.field("positive", pa.string(), nullable=False),
                      pa.field("article_id", pa.string(), nullable=False),
                      pa.field("validation", pa.bool_(), nullable=False)],
                     metadata={"schema": SCHEMA, "schema_version": VERSION, "source": source})


def save_pairs(pairs: pa.Table, path: Path) -> None:
    """Write the pairs as one Parquet file, atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(pairs, tmp, compression="zstd")


def load_pairs(path: Path) -> pa.Table:
    """A pairs file, whole; anything else (missing, damaged, another schema) is a TrainError."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise TrainError(f"cannot read pairs file {path}: {exc}") from None
    meta = table.schema.metadata or {}
    found = (meta.get(b"schema", b"?").decode(), meta.get(b"schema_version", b"?").decode())
    if found != (SCHEMA, VERSION) or tuple(table.column_names) != COLUMNS:
        raise TrainError(f"{path}: not a pairs file of schema {SCHEMA} version {VERSION} "
                         f"(found {found[0]} version {found[1]})")
    return table
