#!/usr/bin/env python
"""Embedded index speed at scale: build passages/s and search latency (p50/p95), at one or
more corpus sizes, each point printed as it is measured.

It partitions a synthetic corpus (the one `partition_throughput.py` generates; about 1.1
passages per article), gives every passage a random unit embedding (speed does not depend on
the vectors' meaning), builds the embedded index and times queries of 3-8 corpus words,
each mode over all the queries in turn.

Printed with their in-run baselines, per point:
  build     passages/s of `build_index` with each of --build-workers processes (the index
            searched is the last one's), and the cores it kept busy (CPU seconds over wall
            seconds: one worker already keeps more than one core busy, since pyarrow decodes
            and tantivy writes segments in threads of their own); baseline: reading the same
            shard and result files
  search    p50/p95 ms of `rerank` (BM25 top-100 screening + dense re-rank, query embedding
            included), `hybrid` (the same candidates, BM25 and cosine fused) and the default
            `feedback` (two hybrid rounds); baselines: BM25 alone (query not embedded), and
            BM25 alone in one thread (an index in several pieces is searched in row spans,
            a thread each); `dense` (every vector scanned, 50 queries), baseline: the same
            scan as a numpy float32 product (5 queries)
  size      the index's bytes per passage, by what takes the room
  (every query runs once untimed first: the figures are those of an index in the page cache)
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
DENSE_QUERIES = 50  # `dense` reads every vector: 0.3-0.4 s a query at 10M passages
DENSE_BASELINE_QUERIES = 5  # its numpy float32 baseline: about 9 s a query at 10M
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def float32_scan(index, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
    """The baseline of `dense`: the best `limit` rows by a numpy float32 product over each
    piece's float16 matrix, converted block by block (as the embedded index scanned, less
    its gathering of each block's rows, which made that scan 12 s a query at 10M)."""
    best: list[tuple[int, float]] = []
    for matrix, start in zip(index.matrices, index.starts):
        for first in range(0, len(matrix), 65536):
            sims = matrix[first : first + 65536].astype(np.float32) @ vector
            top = np.argpartition(-sims, min(limit, len(sims)) - 1)[:limit]
            best += [(int(start) + first + int(i), float(sims[i])) for i in top]
    return sorted(best, key=lambda hit: (-hit[1], hit[0]))[:limit]


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (the build's worker
    processes): over a build's wall time, how many cores it kept busy."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


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


def prepare(workdir, articles: int, args: argparse.Namespace) -> tuple[int, float]:
    """Partition the synthetic corpus into the workdir and give every passage a random unit
    vector; (passages, seconds to read the shard and result files)."""
    from partition_throughput import ensure_corpus

    from inference.config import load_config
    from inference.partition import partition
    from inference.worker import ShardWorker

    corpus_path, _, _ = ensure_corpus(ROOT / "bench-work" / "partition", articles, 0,
                                      args.vocab_size, False, 2)
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
    return summary.passages, time.perf_counter() - started


def build(workdir, workers: int, passages: int, read_seconds: float) -> dict:
    """Build the index afresh with `workers` processes; its figures, printed as they come."""
    from retrieval import build_index

    shutil.rmtree(workdir.root / "index", ignore_errors=True)
    os.sync()
    started, cpu_before = time.perf_counter(), cpu_seconds()
    built = build_index(workdir, workers=workers)
    seconds = time.perf_counter() - started
    cores = (cpu_seconds() - cpu_before) / seconds
    print(f"{passages:,} passages: built with {workers} worker(s) at "
          f"{built.passages / seconds:,.0f} passages/s ({seconds:,.0f} s, "
          f"{built.pieces_built} pieces, {cores:.2f} cores busy; reading the files alone: "
          f"{passages / read_seconds:,.0f}/s)", file=sys.stderr, flush=True)
    return {"passages_per_s": round(built.passages / seconds, 1), "seconds": round(seconds, 1),
            "pieces": built.pieces_built, "cores_busy": round(cores, 2)}


def point(articles: int, args: argparse.Namespace) -> dict:
    """Build and search one corpus size; prints the figures as they come."""
    from inference.workdir import Workdir
    from retrieval import Searcher

    suffix = "" if args.vocab_size == 4000 else f"-vocab{args.vocab_size}"
    workdir = Workdir(Path(args.workdir) / f"work-{articles}{suffix}")
    builds: dict[int, dict] = {}
    read_seconds = None
    if args.search_only:  # the index an earlier run of this benchmark built
        passages = sum(entry.rows for entry in workdir.manifest().shards)
    else:
        passages, read_seconds = prepare(workdir, articles, args)
        for workers in args.build_workers:
            builds[workers] = build(workdir, workers, passages, read_seconds)
    os.sync()  # search the index as a server opening it later would: not under its own writeback

    searcher = Searcher(workdir, low_latency=True)  # as a server's
    rng = np.random.default_rng(0)
    sample = pq.read_table(workdir.shard_path(0), columns=["text"]).column(0).to_pylist()
    queries = []
    sample = [text for text in sample if len(text.split()) >= 8]
    for _ in range(args.queries):
        words = sample[rng.integers(len(sample))].split()
        start = int(rng.integers(max(1, len(words) - 8)))
        queries.append(" ".join(words[start : start + int(rng.integers(3, 9))]))
    # load the model, and bring what the queries read into the page cache, as in a server
    # that has been serving: every query once in the default mode, which reads the BM25
    # postings, the candidates' vectors and the passages (untimed; without it the first
    # mode measured pays for reading a freshly built index from disk)
    for query in queries:
        searcher.search(query)
    # each mode over all queries in turn, as a server that uses one mode sees them (running
    # the four modes on each query in turn evicts the model's weights from the CPU caches)
    timings: dict[str, list[float]] = {"bm25": [], "rerank": [], "hybrid": [], "feedback": [],
                                       "bm25 in one thread": []}
    spans = searcher.index.spans
    for mode, samples in timings.items():
        if mode == "bm25 in one thread":  # the baseline of searching row spans in threads
            searcher.index.spans = [(0, len(searcher.index))]
        for query in queries:
            started = time.perf_counter()
            searcher.search(query, mode=mode.split()[0], top_k=5, screening_top_k=100)
            samples.append(time.perf_counter() - started)
    searcher.index.spans = spans
    # dense: every vector scanned, so fewer queries, after one untimed query that reads the
    # matrices into the page cache; baseline: the same scan in numpy float32
    searcher.search(queries[0], mode="dense")
    timings["dense"], timings["dense as a float32 scan"] = [], []
    for query in queries[:DENSE_QUERIES]:
        started = time.perf_counter()
        searcher.search(query, mode="dense", top_k=5)
        timings["dense"].append(time.perf_counter() - started)
    for query in queries[:DENSE_BASELINE_QUERIES]:
        started = time.perf_counter()
        float32_scan(searcher.index, searcher.embed([query])[0], 5)
        timings["dense as a float32 scan"].append(time.perf_counter() - started)
    segments = searcher.index.searcher.num_segments
    threads = len(spans)
    path = searcher.index.path
    del searcher
    result = {
        "passages": passages,
        "vocab_size": args.vocab_size,
        "build": builds,
        "baseline_read_passages_per_s": (round(passages / read_seconds, 1) if read_seconds
                                         else None),
        "search": {mode: percentiles(samples) for mode, samples in timings.items()},
        "queries": {mode: len(samples) for mode, samples in timings.items()},
        "segments": segments,
        "search_threads": threads,
        "bytes_per_passage": index_room(path, passages),
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
          + f"); {segments} segments, searched in {threads} thread(s)", file=sys.stderr,
          flush=True)
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
    parser.add_argument("--search-only", action="store_true",
                        help="search the index an earlier run built for each point (no "
                             "partition, vectors or build)")
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
