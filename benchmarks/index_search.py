#!/usr/bin/env python
"""Embedded index speed at scale: build passages/s and search latency (p50/p95).

It partitions a synthetic corpus (the one `partition_throughput.py` generates; about 1.1
passages per article), gives every passage a random unit embedding (speed does not depend on
the vectors' meaning), builds the embedded index and times queries of 3-8 corpus words,
each mode over all the queries in turn.

Printed with their in-run baselines:
  build     passages/s of `build_index`; baseline: reading the same shard and result files
  search    p50/p95 ms of `rerank` (BM25 top-100 screening + dense re-rank, query embedding
            included), `hybrid` (the same candidates, BM25 and cosine fused) and the default
            `feedback` (two hybrid rounds); baseline: BM25 alone
Targets at 1M passages: build >= 10,000 passages/s, screening + re-rank p95 < 50 ms.

    .venv/bin/python benchmarks/index_search.py --articles 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--vocab-size", type=int, default=4000,
                        help="pseudo-words in the synthetic corpus (default 4,000: every query "
                             "word is common, a pessimistic case for BM25; real collections "
                             "have far larger vocabularies)")
    parser.add_argument("--workdir", default=str(ROOT / "bench-work" / "index"))
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()

    from partition_throughput import ensure_corpus

    from inference.config import load_config
    from inference.partition import partition
    from inference.workdir import Workdir
    from inference.worker import ShardWorker
    from retrieval import Searcher, build_index

    base = Path(args.workdir)
    corpus_dir = ROOT / "bench-work" / "partition"
    corpus_path, _, _ = ensure_corpus(corpus_dir, args.articles, 0, args.vocab_size, False, 2)
    suffix = "" if args.vocab_size == 4000 else f"-vocab{args.vocab_size}"
    workdir = Workdir(base / f"work-{args.articles}{suffix}")
    config = load_config(None, ["predictions.kind=none"])
    summary = partition([str(corpus_path)], workdir, config, force=True, progress=False)

    rng = np.random.default_rng(0)
    worker = ShardWorker(workdir, config=config)
    for entry in worker.manifest.shards:
        if workdir.result_is_current(entry, worker.key):
            continue  # random vectors from an earlier run of this benchmark
        ids = pq.read_table(workdir.shard_path(entry.shard), columns=["passage_id"])
        vectors = rng.standard_normal((entry.rows, 384), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        worker._write(entry.shard, ids.column(0), vectors, [None] * entry.rows,
                      np.full(entry.rows, np.nan, dtype=np.float32))

    started = time.perf_counter()
    for entry in worker.manifest.shards:
        pq.read_table(workdir.shard_path(entry.shard))
        pq.read_table(workdir.result_path(entry.shard))
    read_seconds = time.perf_counter() - started
    shutil.rmtree(workdir.root / "index", ignore_errors=True)
    started = time.perf_counter()
    built = build_index(workdir)
    build_seconds = time.perf_counter() - started
    os.sync()  # search the index as a server opening it later would: not under its own writeback

    searcher = Searcher(workdir, low_latency=True)  # as a server's
    sample = pq.read_table(workdir.shard_path(0), columns=["text"]).column(0).to_pylist()
    queries = []
    sample = [text for text in sample if len(text.split()) >= 8]
    for _ in range(args.queries):
        words = sample[rng.integers(len(sample))].split()
        start = int(rng.integers(max(1, len(words) - 8)))
        queries.append(" ".join(words[start : start + int(rng.integers(3, 9))]))
    searcher.search(queries[0], mode="rerank")  # load the model, warm the caches
    # each mode over all queries in turn, as a server that uses one mode sees them (running
    # the four modes on each query in turn evicts the model's weights from the CPU caches)
    timings: dict[str, list[float]] = {"bm25": [], "rerank": [], "hybrid": [], "feedback": []}
    for mode, samples in timings.items():
        for query in queries:
            started = time.perf_counter()
            searcher.search(query, mode=mode, top_k=5, screening_top_k=100)
            samples.append(time.perf_counter() - started)

    result = {
        "passages": summary.passages,
        "vocab_size": args.vocab_size,
        "build_passages_per_s": round(built.passages / build_seconds, 1),
        "build_seconds": round(build_seconds, 1),
        "baseline_read_passages_per_s": round(summary.passages / read_seconds, 1),
        "search": {mode: percentiles(samples) for mode, samples in timings.items()},
        "queries": {mode: len(samples) for mode, samples in timings.items()},
    }
    print(f"{summary.passages:,} passages: index built at {result['build_passages_per_s']:,.0f}"
          f" passages/s (reading the files alone: {result['baseline_read_passages_per_s']:,.0f}/s)",
          file=sys.stderr)
    for mode, figures in result["search"].items():
        print(f"  {mode:<8} p50 {figures['p50_ms']:7.1f} ms   p95 {figures['p95_ms']:7.1f} ms"
              f"   ({len(timings[mode])} queries)", file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
