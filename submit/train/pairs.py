"""Training pairs (query, positive passage) for fine-tuning the embedding model, from a workdir.

The passages of a partitioned workdir's shards give the pairs, by one source:

- `title`: the article's title is the query for each of its passages (passages of an article
  without a title give none);
- `ict` (inverse cloze): one sentence of the passage is the query and the rest of the passage
  the positive; which sentence is drawn from a seeded hash of the passage id, so the same
  pairs come out on every run. Passages of one sentence give none.
- `generated`: the query an LLM wrote for the passage, in a finished `infer-corpus generate`
  run over the workdir's passages (e.g. with `configs/generate-queries.yaml`), paired with
  the whole passage. A reply's first line is the query. Rows that give none are counted by
  why (SKIPS): the row failed (`error`), its label is `refused`, the reply is `empty`, it
  was cut off at `max_new_tokens` within its first line (`unfinished`), or the same query
  was written for passages of more than one article (`repeated`: it tells them apart no
  better than a template's example copied out, or "What is this passage about?").

Pairs are held out for validation by a hash of the article id, so no article is on both sides.
A cap (`max_pairs`) keeps the pairs whose seeded hash of the passage id is smallest: a choice
that does not depend on the order of shards or rows. `save_pairs` writes them to one Parquet
file (schema `infer-corpus.pairs`; generated pairs record the generation model and the
skipped rows' counts in its metadata), which an embedder trial reads with `load_pairs`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from inference.generation.generate import output_path, output_state, read_outputs
from inference.generation.manifest import GenerationManifest
from inference.generation.prompts import passages_key
from inference.manifest import Manifest
from inference.passages import split_sentences
from inference.workdir import Workdir, atomic_path

from . import TrainError
from .data import held_out

PAIRS = "pairs.parquet"  # in the sweep directory
SCHEMA, VERSION = "infer-corpus.pairs", "1"  # in the file's schema metadata
SOURCES = ("title", "ict", "generated")
SKIPS = ("error", "refused", "empty", "unfinished", "repeated")  # generated rows left out
COLUMNS = ("query", "positive", "article_id", "validation")
Pair = tuple[str, str, str, bool]  # query, positive, article id, validation
# a label models put before the query unasked ("Question: ...", "Search query: ...")
_LABEL = re.compile(r"^(?:search\s+)?(?:query|question)\s*:\s*", re.IGNORECASE)


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


def _passage_pairs(manifest: Manifest, workdir: Workdir, source: str, val_fraction: float,
                   seed: int) -> Iterator[tuple[int, Pair]]:
    """Each pair with its draw (for the cap), shard by shard, one shard in memory at a time."""
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


def query_of(output: str | None) -> str:
    """The query in an LLM's reply: its first non-empty line, without a `Question:` or
    `Query:` label or the quotes around it ("" when there is none)."""
    for line in (output or "").splitlines():
        query = _LABEL.sub("", line.strip()).strip().strip("\"'\u201c\u201d").strip()
        if query:
            return query
    return ""


def _finished_generation(workdir: Workdir, manifest: Manifest,
                        model: str | None) -> tuple[GenerationManifest, str]:
    """The workdir's generation study and the model whose outputs are the queries: a study
    over these very passages whose outputs are all written. `model` None: the study's only
    model. Anything else is a TrainError that says what to run."""
    root = workdir.root
    rerun = (f"run `infer-corpus generate --workdir {root} --config "
             "configs/generate-queries.yaml` first")
    study = GenerationManifest.read(root)
    if study is None or not study.prompts_done:
        raise TrainError(f"{root}: no generation run over its passages to take queries from: "
                         f"{rerun}")
    if study.prompts.get("source") != "passages":
        raise TrainError(f"{root}: its generation run prompted a prompt set, not the "
                         f"workdir's passages: {rerun} (with --force)")
    if study.prompts.get("key") != passages_key(manifest.partition_key, study.config):
        raise TrainError(f"{root}: its generation run was made from an earlier partition of "
                         f"the passages: {rerun}")
    models = study.models
    if model is None and len(models) != 1:
        raise TrainError(f"{root}: its generation run has {len(models)} models "
                         f"({', '.join(models) or 'none'}): name one in pairs.generation")
    model = model if model is not None else next(iter(models))
    if model not in models:
        raise TrainError(f"{root}: its generation run has no model {model!r} (models: "
                         f"{', '.join(models)})")
    shards = study.shards
    done = sum(output_state(output_path(root, model, s.shard), s.rows, models[model]) == "done"
               for s in shards)
    if done < len(shards):
        raise TrainError(f"{root}: generation {model!r} has not finished ({done} of "
                         f"{len(shards)} prompt shards done): run `infer-corpus generate "
                         f"--workdir {root}` again")
    return study, model


def _generated_rows(workdir: Workdir, manifest: Manifest, study: GenerationManifest,
                    model: str, skipped: Counter[str], with_text: bool = True
                    ) -> Iterator[tuple[str, str, str | None, str]]:
    """(passage id, query, passage text, article id) of every output row that holds a query;
    the others are counted in `skipped` by why. A passage's prompt shard has its number.
    `with_text` False: the passages' text is not read, and given as None."""
    texts = {entry.shard: workdir.shard_path(entry.shard) for entry in manifest.shards}
    columns = ["passage_id", "article_id"] + (["text"] if with_text else [])
    for shard in study.shards:
        outputs = read_outputs(output_path(workdir.root, model, shard.shard)).to_pydict()
        passages = pq.read_table(texts[shard.shard], columns=columns).to_pydict()
        by_id = dict(zip(passages["passage_id"], zip(
            passages["article_id"], passages.get("text", [None] * len(passages["article_id"])))))
        for pid, output, finish, error, label in zip(
                outputs["row_id"], outputs["output"], outputs["finish_reason"],
                outputs["error"], outputs["label"]):
            query = query_of(output)
            if finish == "error" or error is not None:
                skipped["error"] += 1
            elif label == "refused":
                skipped["refused"] += 1
            elif not query:
                skipped["empty"] += 1
            elif finish == "length" and "\n" not in output.strip():
                skipped["unfinished"] += 1
            else:
                article, text = by_id[pid]
                yield pid, query, text, article


def _generated_pairs(workdir: Workdir, manifest: Manifest, study: GenerationManifest,
                     model: str, val_fraction: float, seed: int,
                     skipped: Counter[str]) -> Iterator[tuple[int, Pair]]:
    """Each generated pair with its draw (for the cap); a query written for passages of
    more than one article is left out (`repeated`). Two passes over the outputs: the first
    finds each query's articles."""
    owners: dict[str, str | None] = {}  # query -> its one article, None: several
    for _, query, _, article in _generated_rows(workdir, manifest, study, model, Counter(),
                                                with_text=False):
        key = query.casefold()
        owners[key] = article if owners.get(key, article) == article else None
    for pid, query, text, article in _generated_rows(workdir, manifest, study, model, skipped):
        if owners[query.casefold()] is None:
            skipped["repeated"] += 1
        else:
            yield _draw(seed, "cap", pid), (query, text, article, held_out(article, val_fraction))


def make_pairs(workdir: str | Path, source: str, val_fraction: float = 0.1,
               max_pairs: int = 0, seed: int = 0, generation: str | None = None) -> pa.Table:
    """The pairs of one source from a partitioned workdir, at most `max_pairs` (0: all);
    `generation` names the generation model whose queries source `generated` takes (None:
    the workdir's generation run's only model)."""
    where = Workdir(workdir)
    if source not in SOURCES:
        raise TrainError(f"pair source must be one of {', '.join(SOURCES)}, got {source!r}")
    if generation is not None and source != "generated":
        raise TrainError(f"a generation model ({generation!r}) is for pair source generated, "
                         f"not {source}")
    if not 0.0 < val_fraction < 1.0:
        raise TrainError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    if max_pairs < 0:
        raise TrainError(f"max_pairs must be >= 0 (0: no cap), got {max_pairs!r}")
    manifest = where.manifest().require_partitioned()
    skipped: Counter[str] = Counter()
    metadata: dict[str, str] = {}
    if source == "generated":
        study, generation = _finished_generation(where, manifest, generation)
        drawn = _generated_pairs(where, manifest, study, generation, val_fraction, seed, skipped)
    else:
        drawn = _passage_pairs(manifest, where, source, val_fraction, seed)
    if max_pairs:
        chosen = [pair for _, pair in sorted(heapq.nsmallest(max_pairs, drawn))]
    else:
        chosen = [pair for _, pair in drawn]
    if source == "generated":
        counts = {reason: skipped[reason] for reason in SKIPS}
        metadata = {"generation": str(generation), "skipped": json.dumps(counts)}
        why = (f"no row of generation {generation!r} holds a usable query (skipped: "
               + ", ".join(f"{n} {reason}" for reason, n in counts.items()) + ")")
    else:
        why = "no passage has a title" if source == "title" else "no passage has two sentences"
    if not chosen:
        raise TrainError(f"{where.root}: no {source} pairs: {why}")
    validation = sum(pair[3] for pair in chosen)
    if validation in (0, len(chosen)):
        raise TrainError(f"{where.root}: too few {source} pairs ({len(chosen)}) to hold out "
                         f"{val_fraction:.0%} of the articles for validation")
    columns = list(zip(*chosen))
    return pa.Table.from_arrays([pa.array(column, pa.bool_() if name == "validation" else
                                          pa.string()) for name, column in zip(COLUMNS, columns)],
                                schema=pairs_schema(source, metadata))


def pairs_schema(source: str, metadata: dict[str, str] | None = None) -> pa.Schema:
    """The pairs file's schema; `metadata` adds to its record of where the pairs came from."""
    return pa.schema([pa.field("query", pa.string(), nullable=False),
                      pa.field("positive", pa.string(), nullable=False),
                      pa.field("article_id", pa.string(), nullable=False),
                      pa.field("validation", pa.bool_(), nullable=False)],
                     metadata={"schema": SCHEMA, "schema_version": VERSION, "source": source,
                               **(metadata or {})})


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
