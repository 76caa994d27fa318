#!/usr/bin/env python
"""Does fine-tuning the embedding model on a corpus's own pairs lift retrieval? And what does a
training step cost?

What it does, on the Cranfield collection (`../shared/corpora/cranfield`, BEIR layout):
  1. Partitions its corpus into a workdir and makes training pairs from its passages
     (`submit.train.pairs`: `--source title` or `ict`; validation pairs held out by article).
  2. Runs one embedder trial (`submit.train.embedder`, the sentence-transformers trainer)
     with the given hyperparameters, timing its steps.
  3. Judges the base model and the fine-tuned one with `infer-corpus eval --split test` (the
     half of the queries a sweep never tunes on), the second `--against` the first: each
     search mode's nDCG@10, its change and a paired randomization test's p-value.
  4. Times one head trial's epoch on the same machine (the kind of trial sweeps ran before),
     so that seconds per step read against something known.

The goal (issue: fine-tuned default mode >= base + 0.02 nDCG@10 at p < 0.05 on the test half)
is printed as met or not. It exits 0 whether or not it is met; 1 when a step fails.

    .venv/bin/python benchmarks/embedder_finetune.py                       # title pairs, LoRA
    .venv/bin/python benchmarks/embedder_finetune.py --adapter none --steps 200 --lr 2e-5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CRANFIELD = ROOT.parent / "shared" / "corpora" / "cranfield"
GOAL_CHANGE, GOAL_P = 0.02, 0.05


def cli(*args: str) -> dict:
    """One `infer-corpus` command's JSON line (it fails the benchmark when it fails)."""
    proc = subprocess.run([sys.executable, "-m", "infer_corpus", *args], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"infer-corpus {' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def head_epoch_seconds(folder: Path) -> float:
    """Seconds of one head trial epoch on random 384-dimensional features (batch 32)."""
    import numpy as np
    import torch

    from submit.train.heads import build_head

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((4096, 384), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 8, 4096))
    model = build_head("mlp", 384, 8, 64, 0.0)
    optimizer = torch.optim.Adam(model.parameters())
    started = time.perf_counter()
    for start in range(0, len(x), 32):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[start:start + 32]), y[start:start + 32])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", type=Path, default=CRANFIELD)
    parser.add_argument("--source", choices=("title", "ict"), default="title")
    parser.add_argument("--adapter", choices=("none", "lora"), default="lora")
    parser.add_argument("--loss", choices=("mnrl", "cached_mnrl"), default="mnrl")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-work" / "finetune")
    parser.add_argument("--json", action="store_true", help="one JSON line at the end")
    args = parser.parse_args()
    if not (args.collection / "corpus.jsonl").is_file():
        sys.exit(f"{args.collection} is not a BEIR-layout collection (../shared missing?)")

    from submit.train.embedder import run_embedder_trial
    from submit.train.pairs import make_pairs, save_pairs

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cli("partition", "--input", str(args.collection / "corpus.jsonl"), "--workdir",
        str(work / "corpus"), "--set", "predictions.kind=none", "--json")
    pairs = make_pairs(work / "corpus", args.source, 0.1)
    save_pairs(pairs, work / "pairs.parquet")
    trial = work / "trial"
    trial.mkdir()
    params = {"adapter": args.adapter, "loss": args.loss, "max_steps": args.steps,
              "save_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "max_seq_length": args.max_seq_length}
    (trial / "params.json").write_text(json.dumps(params))
    started = time.perf_counter()
    run_embedder_trial(trial, work / "pairs.parquet", threads=os.cpu_count() or 1)
    train_seconds = time.perf_counter() - started
    metrics = json.loads((trial / "metrics.json").read_text())

    evals = {}
    for name, model in (("base", "all-MiniLM-L6-v2"), ("tuned", str(trial / "model"))):
        extra = ["--against", str(work / "base.json")] if name == "tuned" else []
        evals[name] = cli("eval", "--collection", str(args.collection), "--workdir",
                          str(work / f"eval-{name}"), "--split", "test", "--set",
                          f"model.name={model}", "--set", "predictions.kind=none", *extra,
                          "--json")
        if name == "base":
            (work / "base.json").write_text(json.dumps(evals[name]))
    against = evals["tuned"]["against"]["modes"]
    default = evals["tuned"]["default"]
    head = head_epoch_seconds(work)
    figures = {
        "pairs": pairs.num_rows, "source": args.source, "params": params,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / args.steps, 3),
        "head_epoch_seconds_4096_rows": round(head, 3),
        "val": metrics["final"], "status": metrics["status"], "test": against,
        "goal_met": against[default]["change"] >= GOAL_CHANGE and against[default]["p"] < GOAL_P,
    }
    print(f"pairs: {pairs.num_rows:,} ({args.source}); {args.adapter} {args.loss}, "
          f"{args.steps} steps of {args.batch_size}, lr {args.lr:g}: {train_seconds:.0f} s "
          f"({figures['seconds_per_step']:.2f} s/step, including loading and evaluation; "
          f"a head trial's epoch of 4,096 rows: {head:.2f} s)")
    print(f"validation: {metrics['final']}")
    print(f"test half ({evals['tuned']['queries']} queries), nDCG@10:")
    for mode, row in against.items():
        mark = " (default)" if mode == default else ""
        print(f"  {mode:<9} base {row['base']:.4f}  tuned {row['ndcg@10']:.4f}  "
              f"{row['change']:+.4f}  p = {row['p']:.4f}{mark}")
    print(f"goal (default mode +{GOAL_CHANGE} at p < {GOAL_P}): "
          f"{'met' if figures['goal_met'] else 'NOT MET'}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
