#!/usr/bin/env python
"""Load on the QA API: 50 concurrent `/search` clients for 30 s against a 100k-passage index.

How the index is made: the synthetic corpus of `partition_throughput.py` (realistic abstract
lengths, about 1.1 passages per article) is partitioned as usual, but every passage gets a
random unit vector written as its result file instead of a real embedding: embedding 100k
passages takes hours on a 2-core CPU, and search speed does not depend on what the vectors
mean. The index is then built by `build_index` from those files, exactly as `infer-corpus
index` does. Queries embed with the real model, as in production.

What it prints (and, with --json, one JSON line at the end):
  served     `qa-api` as a user starts it (a child process, searches serialised by its lock),
             hit by N asyncio HTTP clients in a loop for S seconds: requests/s, p50/p95 latency,
             errors (any non-200 or failed request; the script exits 1 if there is one)
  baseline   the same queries through `Searcher.search` in this process, one at a time, no HTTP
  unlocked   the same queries from 4 threads calling one `Searcher` concurrently without a lock:
             what dropping the server's lock could gain on this machine

The clients run on the same machine as the server and take CPU from it.

    .venv/bin/python benchmarks/qa_load.py                        # 100k passages, 50 clients, 30 s
    .venv/bin/python benchmarks/qa_load.py --passages 20000 --seconds 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
PASSAGES_PER_ARTICLE = 1.1


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def build(workdir_root: Path, passages: int) -> tuple[Path, int]:
    """A workdir with an index of about `passages` passages (random unit vectors)."""
    from partition_throughput import ensure_corpus

    from inference.config import load_config
    from inference.partition import partition
    from inference.workdir import Workdir
    from inference.worker import ShardWorker
    from retrieval import build_index

    articles = int(passages / PASSAGES_PER_ARTICLE)
    corpus, _, _ = ensure_corpus(ROOT / "bench-work" / "partition", articles, 0, 4000, False, 2)
    workdir = Workdir(workdir_root / f"work-{articles}")
    config = load_config(None, ["predictions.kind=none"])
    summary = partition([str(corpus)], workdir, config, progress=False)
    worker = ShardWorker(workdir, config=config)
    rng = np.random.default_rng(0)
    for entry in worker.manifest.shards:
        if workdir.result_is_current(entry, worker.key):
            continue
        ids = pq.read_table(workdir.shard_path(entry.shard), columns=["passage_id"])
        vectors = rng.standard_normal((entry.rows, 384), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        worker._write(entry.shard, ids.column(0), vectors, [None] * entry.rows,
                      np.full(entry.rows, np.nan, dtype=np.float32))
    build_index(workdir)
    return workdir.root, summary.passages


def make_queries(workdir: Path, n: int) -> list[str]:
    """Runs of 3-8 corpus words, as in benchmarks/index_search.py."""
    rng = np.random.default_rng(1)
    texts = [t for t in pq.read_table(workdir / "shards" / "shard-00000.parquet",
                                      columns=["text"]).column(0).to_pylist()
             if len(t.split()) >= 8]
    queries = []
    for _ in range(n):
        words = texts[rng.integers(len(texts))].split()
        start = int(rng.integers(max(1, len(words) - 8)))
        queries.append(" ".join(words[start : start + int(rng.integers(3, 9))]))
    return queries


def in_process(workdir: Path, queries: list[str]) -> dict[str, dict[str, float]]:
    from inference.workdir import Workdir
    from retrieval import Searcher

    searcher = Searcher(Workdir(workdir), low_latency=True)  # as the server's
    searcher.search("warm up", top_k=1)

    def timed(query: str) -> float:
        started = time.perf_counter()
        searcher.search(query, top_k=5, screening_top_k=100)
        return time.perf_counter() - started

    figures = {}
    for name, threads in (("baseline", 1), ("unlocked", 4)):
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            latencies = list(pool.map(timed, queries))
        figures[name] = {"requests_per_s": round(len(queries) / (time.perf_counter() - started),
                                                 1), **percentiles(latencies)}
    return figures


async def load(url: str, queries: list[str], clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_client(index: int) -> None:
            i = index
            while time.perf_counter() < deadline:
                body = {"query": queries[i % len(queries)], "top_k": 5, "screening_top_k": 100}
                i += clients
                started = time.perf_counter()
                try:
                    response = await client.post("/search", json=body)
                    if response.status_code != 200 or not response.json()["hits"]:
                        errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "requests_per_s": round(len(latencies) / elapsed, 1), **percentiles(latencies)}


def serve(workdir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("QA_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "infer_corpus.qa_cli", "--workdir", str(workdir),
                             "--port", str(port)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"qa-api did not start; see {log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--queries", type=int, default=500, help="distinct queries")
    parser.add_argument("--workdir", default=str(ROOT / "bench-work" / "qa"))
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()

    started = time.perf_counter()
    workdir, passages = build(Path(args.workdir), args.passages)
    print(f"index of {passages:,} passages ready in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    queries = make_queries(workdir, args.queries)
    result = {"passages": passages, "clients": args.clients, "seconds": args.seconds,
              **in_process(workdir, queries[:200])}
    proc, url = serve(workdir, Path(args.workdir) / "qa-api.log")
    try:
        result["served"] = asyncio.run(load(url, queries, args.clients, args.seconds))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    served = result["served"]
    print(f"served   {args.clients} clients x {args.seconds:g} s: "
          f"{served['requests_per_s']:,.1f} requests/s, p50 {served['p50_ms']} ms, "
          f"p95 {served['p95_ms']} ms, {served['requests']:,} requests, "
          f"{served['errors']} errors", file=sys.stderr)
    for name in ("baseline", "unlocked"):
        figures = result[name]
        print(f"{name:<8} in-process: {figures['requests_per_s']:,.1f} searches/s, "
              f"p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 1 if served["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
