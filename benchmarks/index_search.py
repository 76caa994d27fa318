#!/usr/bin/env python
"""Embedded index speed at scale: build passages/s and search latency (p50/p95), at one or
more corpus sizes, each point printed as it is measured.

It partitions a synthetic corpus (the one `partition_throughput.py` generates; about 1.1
passages per article), gives every passage a random unit embedding (speed does not depend on
the vectors' meaning), builds the embedded index and times queries of 3-8 corpus words,
each mode over all the queries in turn.

Printed with their in-run baselines, per point:
  build     passages/s of `build_index` with each of --build-workers processes (the index
            searched is the last one's); baseline: reading the same shard and result files
  search    p50/p95 ms of `rerank` (BM25 top-100 screening + dense re-rank, query embedding
            included), `hybrid` (the same candidates, BM25 and cosine fused) and the default
            `feedback` (two hybrid rounds); baseline: BM25 alone (query not embedded)
  size      the index's bytes per passage, by what takes the room
  memory    anonymous resident memory (RssAnon) of a `qa-api` process serving the index over
            HTTP on 127.0.0.1, after 50 searches
Goals at 10M passages on 2 cores: feedback p95 < 50 ms, hybrid p95 < 40 ms, bm25 p95 < 25 ms,
p95 at most 2x that at 1M; qa-api under 1 GB anonymous; build with 2 workers >= 1.7x 1 worker.

    .venv/bin/python benchmarks/index_search.py --articles 900000 2700000 --vocab-size 50000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
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


def index_room(path: Path, passages: int) -> dict[str, float]:
    """Bytes per passage of one build, by part: tantivy's files by kind (postings, positions,
    term dictionary, ...), the vectors and the passages' fields."""
    kinds = {".idx": "postings", ".pos": "positions", ".term": "terms", ".fieldnorm": "norms",
             ".fast": "fast fields", ".store": "doc store"}
    room: dict[str, int] = {}
    for file in path.rglob("*"):
        if file.is_file():
            part = ("vectors" if file.suffix == ".npy" else "passages" if file.suffix == ".arrow"
                    else kinds.get(file.suffix, "other"))
            room[part] = room.get(part, 0) + file.stat().st_size
    room["total"] = sum(room.values())
    return {part: round(size / max(passages, 1), 1) for part, size in sorted(room.items())}


def qa_api_memory(workdir: Path, queries: list[str]) -> int:
    """RssAnon bytes of a qa-api process serving the workdir, after searches over HTTP."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "qa-api"), "--workdir", str(workdir),
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        for query in queries[:50]:
            httpx.post(f"{url}/search", json={"query": query}, timeout=60).raise_for_status()
        status = Path(f"/proc/{server.pid}/status").read_text()
        return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) * 1024
    finally:
        server.terminate()
        server.wait(timeout=30)


def point(articles: int, args: argparse.Namespace) -> dict:
    """Build and search one corpus size; prints the figures as they come."""
    from partition_throughput import ensure_corpus

    from inference.config import load_config
    from inference.partition import partition
    from inference.workdir import Workdir
    from inference.worker import ShardWorker
    from retrieval import Searcher, build_index

    corpus_dir = ROOT / "bench-work" / "partition"
    corpus_path, _, _ = ensure_corpus(corpus_dir, articles, 0, args.vocab_size, False, 2)
    suffix = "" if args.vocab_size == 4000 else f"-vocab{args.vocab_size}"
    workdir = Workdir(Path(args.workdir) / f"work-{articles}{suffix}")
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
    builds = {}
    for workers in args.build_workers:
        shutil.rmtree(workdir.root / "index", ignore_errors=True)
        os.sync()
        started = time.perf_counter()
        built = build_index(workdir, workers=workers)
        seconds = time.perf_counter() - started
        builds[workers] = {"passages_per_s": round(built.passages / seconds, 1),
                           "seconds": round(seconds, 1), "pieces": built.pieces_built}
        print(f"{summary.passages:,} passages: built with {workers} worker(s) at "
              f"{builds[workers]['passages_per_s']:,.0f} passages/s ({seconds:,.0f} s, "
              f"{built.pieces_built} pieces; reading the files alone: "
              f"{summary.passages / read_seconds:,.0f}/s)", file=sys.stderr, flush=True)
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
    segments = searcher.index.searcher.num_segments
    path = searcher.index.path
    del searcher
    result = {
        "passages": summary.passages,
        "vocab_size": args.vocab_size,
        "build": builds,
        "baseline_read_passages_per_s": round(summary.passages / read_seconds, 1),
        "search": {mode: percentiles(samples) for mode, samples in timings.items()},
        "queries": {mode: len(samples) for mode, samples in timings.items()},
        "segments": segments,
        "bytes_per_passage": index_room(path, summary.passages),
    }
    if len(builds) > 1:
        first, last = builds[min(builds)], builds[max(builds)]
        result["build_speedup"] = round(first["seconds"] / last["seconds"], 2)
    for mode, figures in result["search"].items():
        print(f"  {mode:<8} p50 {figures['p50_ms']:7.1f} ms   p95 {figures['p95_ms']:7.1f} ms"
              f"   ({len(timings[mode])} queries)", file=sys.stderr, flush=True)
    room = result["bytes_per_passage"]
    print(f"  index: {room['total']:,.0f} bytes per passage ("
          + ", ".join(f"{part} {size:,.0f}" for part, size in room.items() if part != "total")
          + f"); {segments} segments", file=sys.stderr, flush=True)
    if args.memory:
        result["qa_api_rss_anon_bytes"] = qa_api_memory(workdir.root, queries)
        print(f"  qa-api anonymous resident memory: "
              f"{result['qa_api_rss_anon_bytes'] / 2**30:.2f} GB", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, nargs="+", default=[1_000_000],
                        help="corpus sizes in articles, one point each (about 1.1 passages "
                             "per article)")
    parser.add_argument("--build-workers", type=int, nargs="+", default=[1, 2],
                        help="build the index with each of these worker counts (default 1 2)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--vocab-size", type=int, default=4000,
                        help="pseudo-words in the synthetic corpus (default 4,000: every query "
                             "word is common, a pessimistic case for BM25; real collections "
                             "have far larger vocabularies)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip starting qa-api to measure its memory")
    parser.add_argument("--workdir", default=str(ROOT / "bench-work" / "index"))
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    points = [point(articles, args) for articles in args.articles]
    if len(points) > 1:
        for mode in points[0]["search"]:
            growth = points[-1]["search"][mode]["p95_ms"] / points[0]["search"][mode]["p95_ms"]
            print(f"{mode} p95 grows {growth:.2f}x from {points[0]['passages']:,} to "
                  f"{points[-1]['passages']:,} passages", file=sys.stderr)
    if args.json:
        print(json.dumps(points))


if __name__ == "__main__":
    main()
