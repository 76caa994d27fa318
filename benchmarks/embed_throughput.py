#!/usr/bin/env python
"""Embedding throughput: our shard path against sentence-transformers defaults, same passages.

What it measures, on N generated passages of realistic length (English sentences drawn from
the bundled demo corpus, about 130 words / 175 tokens on average, lognormal spread):

  tokenize  passages/s of tokenization alone, as the partition step runs it (one process
            per core)
  worker    passages/s of the shard worker from shard files to result files, the shards
            carrying token ids (partition-time tokenization): what a GPU job spends per passage
  ours      the whole path: the shard worker on shards without token ids, tokenizing on the
            CPU cores while the model runs, shard files to result files
  split     N / (tokenize seconds + worker seconds): tokenizing first, then the GPU job
  baseline  sentence-transformers `encode` with its defaults (fp32, batch 32) on the same
            passages (on the first --baseline-n of them), in the same run
  ratio     ours / baseline
The model is loaded and warmed up before any timing (a job pays that once per process).

Run from the repository root:
    .venv/bin/python benchmarks/embed_throughput.py                    # CPU, 600 passages
    .venv/bin/python benchmarks/embed_throughput.py --device cuda --n 200000 --json
Any config option can be set, e.g. --set model.name=/path/to/model. Files go under
--workdir (default bench-work/embed, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def demo_sentences() -> list[str]:
    from inference.demo import demo_corpus_path
    from inference.passages import split_sentences

    sentences = []
    with open(demo_corpus_path(), encoding="utf-8") as handle:
        for line in handle:
            sentences.extend(split_sentences(json.loads(line)["abstract"]))
    return sentences


def generate(path: Path, n: int, seed: int) -> None:
    """N single-passage articles: a title and a body of ~60-240 words of real sentences."""
    rng = np.random.default_rng(seed)
    sentences = demo_sentences()
    lengths = np.clip(rng.lognormal(np.log(125), 0.3, n), 40, 240).astype(int)
    with open(path, "w", encoding="utf-8") as handle:
        for i, target in enumerate(lengths):
            words: list[str] = []
            while len(words) < target:
                words.extend(sentences[rng.integers(len(sentences))].split())
            title = " ".join(sentences[rng.integers(len(sentences))].split()[:10])
            record = {"id": f"p{i}", "title": title, "abstract": " ".join(words[:target])}
            handle.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--n", type=int, help="passages (default 600 on CPU, 200000 on CUDA)")
    parser.add_argument("--baseline-n", type=int,
                        help="passages for the baseline (default: min(n, 600 CPU / 30000 CUDA))")
    parser.add_argument("--workdir", default=str(ROOT / "bench-work" / "embed"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--gpu-memory-gb", type=float,
                        help="cap this process's GPU memory, e.g. 16 to check a 16 GB card")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    n = args.n or (600 if args.device == "cpu" else 200_000)
    baseline_n = min(n, args.baseline_n or (600 if args.device == "cpu" else 30_000))

    import torch

    from inference.config import load_config
    from inference.partition import partition
    from inference.tokenize import ShardTokenizer
    from inference.workdir import Workdir
    from inference.worker import ShardWorker

    if args.device == "cuda" and args.gpu_memory_gb:
        total_bytes = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, args.gpu_memory_gb * 2**30 / total_bytes))
    config = load_config(None, [f"model.device={args.device}", "predictions.kind=zero-shot",
                                *args.overrides])
    tokenized_config = load_config(None, [f"model.device={args.device}",
                                          "predictions.kind=zero-shot", *args.overrides,
                                          "shards.tokenize=true"])
    base = Path(args.workdir)
    base.mkdir(parents=True, exist_ok=True)
    corpus = base / f"passages-n{n}-seed{args.seed}.jsonl"
    if not corpus.exists():
        generate(corpus, n, args.seed)
    plain, tokenized = Workdir(base / "plain"), Workdir(base / "tokenized")
    for workdir, cfg in ((plain, config), (tokenized, tokenized_config)):
        if workdir.root.exists():
            shutil.rmtree(workdir.root)
        summary = partition([str(corpus)], workdir, cfg, progress=False)

    # Tokenization alone, on the exact passage texts of the shards.
    import pyarrow.parquet as pq

    from inference.text import embedding_text

    texts: list[str] = []
    for entry in plain.manifest().shards:
        table = pq.read_table(plain.shard_path(entry.shard), columns=["title", "text"])
        texts.extend(embedding_text(t, x) for t, x in
                     zip(table.column("title").to_pylist(), table.column("text").to_pylist()))
    tokenizer = ShardTokenizer.load(config)  # as the partition step: a process per core
    tokenizer.encode([None] * 4096, texts[:4096])  # start the processes (once per job)
    started = time.perf_counter()
    tokens = tokenizer.encode([None] * len(texts), texts)
    tokenize_seconds = time.perf_counter() - started
    tokenizer.close()
    mean_tokens = float(tokens.lengths().mean())

    def timed_worker(workdir: Workdir, cfg) -> tuple[float, ShardWorker]:  # type: ignore[no-untyped-def]
        """Shard files to result files, with the model loaded and warmed up first."""
        worker = ShardWorker(workdir, config=cfg)
        encoder, _ = worker._models()
        # warm-up; on a GPU this also starts the tokenizing processes, which a job starts once
        encoder.encode_texts(texts[:4096] if args.device == "cuda" else texts[:256])
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for entry in worker.manifest.shards:
            worker.run(entry.shard)
        worker.wait()
        return time.perf_counter() - started, worker

    worker_seconds, worker = timed_worker(tokenized, tokenized_config)
    encoder = worker._encoder
    del worker
    whole_seconds, worker = timed_worker(plain, config)
    workdir = plain

    # Agreement with fp32 sentence-transformers, and its default speed, on the same passages.
    from sentence_transformers import SentenceTransformer

    from inference.models import resolve_model

    peak_memory = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None

    reference = SentenceTransformer(resolve_model(config.model.name), device=args.device)
    reference.float()  # the defaults: fp32, even where the weights are stored in fp16
    reference.max_seq_length = config.model.max_seq_length
    reference.encode(texts[:64])
    started = time.perf_counter()
    expected = reference.encode(texts[:baseline_n], convert_to_numpy=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
    baseline_seconds = time.perf_counter() - started
    ours_vectors = []
    for entry in worker.manifest.shards:
        column = pq.read_table(workdir.result_path(entry.shard), columns=["embedding"])
        ours_vectors.append(np.stack(column.column(0).to_numpy(zero_copy_only=False)))
        if sum(len(v) for v in ours_vectors) >= baseline_n:
            break
    ours_matrix = np.concatenate(ours_vectors)[:baseline_n].astype(np.float32)
    cosine = (ours_matrix * expected).sum(1) / (
        np.linalg.norm(ours_matrix, axis=1) * np.linalg.norm(expected, axis=1))

    total = summary.passages
    result = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda"
        else platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "n": total,
        "mean_tokens": round(mean_tokens, 1),
        "model": config.model.name,
        "dtype": encoder.precision,
        "batch_tokens": encoder.batch_tokens,
        "tokenize": round(total / tokenize_seconds, 1),
        "worker": round(total / worker_seconds, 1),
        "ours": round(total / whole_seconds, 1),
        "split": round(total / (tokenize_seconds + worker_seconds), 1),
        "baseline": round(baseline_n / baseline_seconds, 1),
        "baseline_n": baseline_n,
        "cosine_min": round(float(cosine.min()), 5),
        "cosine_mean": round(float(cosine.mean()), 6),
        "gpu_peak_memory_gb": None if peak_memory is None else round(peak_memory, 2),
    }
    result["ratio"] = round(result["ours"] / result["baseline"], 2)
    print(f"passages {total:,} (mean {mean_tokens:.0f} tokens) on {result['device_name']}, "
          f"{result['dtype']}, batches of {encoder.batch_tokens:,} tokens", file=sys.stderr)
    for key in ("tokenize", "worker", "ours", "split", "baseline"):
        print(f"  {key:<9} {result[key]:>10,.1f} passages/s", file=sys.stderr)
    print(f"  ratio     {result['ratio']:>10.2f}  (ours / sentence-transformers defaults)",
          file=sys.stderr)
    print(f"  cosine vs fp32 reference: min {result['cosine_min']}, "
          f"mean {result['cosine_mean']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
